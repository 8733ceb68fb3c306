#!/usr/bin/env bash
# `make install`: what an operator run outside the cluster (`make run`, `make demo`, the tests)
# needs in the cluster KUBECONFIG names: the CRD, its namespace, and the requester recording
# that this cluster's version supports. Last line printed: `requester: policy|webhook`.
#
#   hack/install.sh [auto|policy|webhook] [WEBHOOK_PORT] [--deploy]
#
# policy   the MutatingAdmissionPolicy of deploy/requester-policy.yaml (Kubernetes 1.36+)
# webhook  the webhook configuration of deploy/webhook/, pointed at https://127.0.0.1:PORT where
#          `make run` serves it (the API server must reach this machine: a local control plane,
#          or kind on this host); the webhook's ServiceAccount, RBAC and TLS Secret as in-cluster
# auto     policy where admissionregistration.k8s.io/v1 serves mutatingadmissionpolicies
# Both keep the ValidatingAdmissionPolicy that refuses a forged stamp.
#
# --deploy  (`make demo`) also the rest of what deploy/ (deploy/webhook/ before 1.36) installs,
#           but for what runs in the cluster (Deployments, Services, PodDisruptionBudget): the
#           operator's ServiceAccount and RBAC, the grantable ceiling, the policy ConfigMap, the
#           operator policy's ValidatingAdmissionPolicy and, from 1.36, the finalizer's
#           MutatingAdmissionPolicy. A local operator then runs with the ConfigMap's policy file.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mode=${1:-auto}
port=${2:-${WEBHOOK_PORT:-9443}}
with_deploy=${3:-}
case $with_deploy in
  ""|--deploy) ;;
  *) echo "install.sh: the third argument can only be --deploy (got $with_deploy)" >&2; exit 2 ;;
esac
kubectl=${KUBECTL:-$repo/bin/kubectl}
command -v "$kubectl" >/dev/null || kubectl=kubectl

"$kubectl" apply -k crds/ >/dev/null
"$kubectl" wait --for=condition=Established --timeout=60s crd/appidentities.appidentity.dev >/dev/null
"$kubectl" create namespace appidentity-system --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null

if [ "$mode" = auto ]; then
  mode=$(bash hack/requester-mode.sh)
fi
case $mode in
  policy)
    "$kubectl" apply -f deploy/requester-policy.yaml >/dev/null ;;
  webhook)
    "$kubectl" kustomize deploy/webhook \
      | .venv/bin/python hack/local_admission.py "https://127.0.0.1:$port/mutate-requester" \
      | "$kubectl" apply -f - >/dev/null ;;
  *) echo "install.sh: mode must be auto, policy or webhook (got $mode)" >&2; exit 2 ;;
esac
if [ -n "$with_deploy" ]; then
  source=deploy
  [ "$mode" = webhook ] && source=deploy/webhook
  # The requester webhook's own pieces were applied above, pointed at this machine.
  "$kubectl" kustomize "$source" | .venv/bin/python -c '
import sys, yaml
in_cluster = {"Deployment", "Service", "PodDisruptionBudget", "MutatingWebhookConfiguration"}
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] not in in_cluster
        and not d["metadata"]["name"].startswith("appidentity-webhook")]
yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)' | "$kubectl" apply -f - >/dev/null
fi
echo "requester: $mode"
