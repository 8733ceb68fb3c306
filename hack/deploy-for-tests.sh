#!/usr/bin/env bash
# Installs deploy/ as users do into the cluster KUBECONFIG names, with the test suite's policy
# (tests/policy.yaml: the defaults plus cluster-wide rules for one namespace) the documented
# way: one policy file, turned into a kustomize Component by `appidentity-operator
# policy-manifests`, over deploy/. Used by `make e2e-kind` and by the suite's
# APPID_TEST_OPERATOR=image mode.
#
#   KUBECTL=bin/kubectl hack/deploy-for-tests.sh KUBECONFIG
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
[ "$#" = 1 ] || { echo "usage: $0 KUBECONFIG" >&2; exit 2; }
kubeconfig=$1
k() { "${KUBECTL:-kubectl}" --kubeconfig "$kubeconfig" "$@"; }

# The CRD first, so that everything referring to its kind can be applied.
k apply -k crds/ >/dev/null
k wait --for=condition=Established --timeout=60s crd/appidentities.appidentity.dev >/dev/null
mkdir -p .state
overlay=$(mktemp -d "$repo/.state/deploy-overlay.XXXXXX")
trap 'rm -rf "$overlay"' EXIT
mkdir "$overlay/policy"
.venv/bin/appidentity-operator policy-manifests --policy tests/policy.yaml \
  >"$overlay/policy/kustomization.yaml"
printf 'resources: [../../deploy]\ncomponents: [policy]\n' >"$overlay/kustomization.yaml"
k apply -k "$overlay" >/dev/null
