#!/usr/bin/env bash
# `make e2e-kind`, for machines with Docker and kind: builds the image, deploys it with deploy/
# into a kind cluster, and runs the integration suite against the in-cluster operator.
# (It cannot run where there is no Docker engine, such as this project's CI machine.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
name=${KIND_CLUSTER:-appidentity-e2e}
image=appidentity-operator:0.1.0
kubeconfig="$repo/.state/kind-$name.kubeconfig"
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "make e2e-kind needs $tool on PATH" >&2; exit 1; }
done
mkdir -p "$repo/.state"

# deploy/ includes a MutatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes 1.36+):
# KIND_NODE_IMAGE picks a node image that new when kind's default is older.
kind get clusters | grep -qx "$name" ||
  kind create cluster --name "$name" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kind get kubeconfig --name "$name" >"$kubeconfig"
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

make venv
docker build -t "$image" .
kind load docker-image "$image" --name "$name"

# The CRD first, so that everything referring to its kind can be applied.
k apply -k crds/
k wait --for=condition=Established --timeout=60s crd/appidentities.appidentity.dev
# deploy/ with the suite's policy (tests/policy.yaml: the defaults plus cluster-wide rules for
# one namespace), the documented way: one policy file, a kustomize Component generated from it.
overlay="$repo/.state/kind-overlay"
mkdir -p "$overlay/policy"
.venv/bin/appidentity-operator policy-manifests --policy tests/policy.yaml \
  >"$overlay/policy/kustomization.yaml"
printf 'resources: [../../deploy]\ncomponents: [policy]\n' >"$overlay/kustomization.yaml"
k apply -k "$overlay"
k -n appidentity-system rollout restart deployment/appidentity-operator
k -n appidentity-system rollout status deployment/appidentity-operator --timeout=180s

APPID_TEST_KUBECONFIG="$kubeconfig" APPID_TEST_OPERATOR=in-cluster \
  .venv/bin/python -m pytest tests/integration "$@"
echo "kind cluster '$name' left running; remove it with: kind delete cluster --name $name"
