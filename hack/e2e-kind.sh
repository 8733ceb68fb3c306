#!/usr/bin/env bash
# `make e2e-kind`, for machines with Docker and kind: builds the image (`make image`), loads its
# archive into a kind cluster, deploys deploy/ and runs the integration suite against the
# in-cluster operator.
# (It cannot run where there is no Docker engine, such as this project's CI machine.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
name=${KIND_CLUSTER:-appidentity-e2e}
kubeconfig="$repo/.state/kind-$name.kubeconfig"
for tool in kind kubectl; do
  command -v "$tool" >/dev/null || { echo "make e2e-kind needs $tool on PATH" >&2; exit 1; }
done
mkdir -p "$repo/.state"

# deploy/ includes a MutatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes 1.36+):
# KIND_NODE_IMAGE picks a node image that new when kind's default is older.
kind get clusters | grep -qx "$name" ||
  kind create cluster --name "$name" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kind get kubeconfig --name "$name" >"$kubeconfig"
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# The image `make image` builds (daemonless, the same Dockerfile), loaded from its archive: the
# image tested on machines without Docker is the image kind users run.
make venv image
version=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
archive=dist/appidentity-operator-$version.oci.tar
kind load image-archive "$archive" --name "$name"

KUBECTL=kubectl hack/deploy-for-tests.sh "$kubeconfig"
k -n appidentity-system rollout restart deployment/appidentity-operator
k -n appidentity-system rollout status deployment/appidentity-operator --timeout=180s

APPID_TEST_KUBECONFIG="$kubeconfig" APPID_TEST_OPERATOR=in-cluster \
  .venv/bin/python -m pytest tests/integration "$@"
echo "kind cluster '$name' left running; remove it with: kind delete cluster --name $name"
