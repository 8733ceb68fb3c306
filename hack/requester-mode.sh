#!/usr/bin/env bash
# Prints how the cluster KUBECONFIG names records an AppIdentity's requester: `policy` where
# the API server serves MutatingAdmissionPolicy as admissionregistration.k8s.io/v1 (GA since
# Kubernetes 1.36), `webhook` elsewhere. The same test as the Helm chart's `requester.mode: auto`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kubectl=${KUBECTL:-$repo/bin/kubectl}
command -v "$kubectl" >/dev/null || kubectl=kubectl
served=$("$kubectl" get --raw /apis/admissionregistration.k8s.io/v1)
if [[ $served == *'"mutatingadmissionpolicies"'* ]]; then
  echo policy
else
  echo webhook
fi
