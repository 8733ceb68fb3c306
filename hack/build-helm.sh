#!/usr/bin/env bash
# Compiles the Helm CLI from the build module in hack/helm (version pinned in its go.mod, every
# dependency in its go.sum) into a cache outside the checkout, keyed by version. A second run
# finds the binary and returns at once. Prints the binary's path on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module="$here/helm"
version=$(awk '$1 == "helm.sh/helm/v4" {print $2}' "$module/go.mod")
[ -n "$version" ] || { echo "no helm.sh/helm/v4 version in $module/go.mod" >&2; exit 1; }

cache_root=${APPID_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appidentity-operator}
dest="$cache_root/tools/helm-$version"
if [ -x "$dest/helm" ]; then echo "$dest/helm"; exit 0; fi

command -v go >/dev/null || { echo "go is needed to compile helm" >&2; exit 1; }
mkdir -p "$dest"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly"
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
# Written under a temporary name and moved into place, so an interrupted build leaves nothing
# that the check above would take for a finished one.
(cd "$module" && go build -trimpath -ldflags "$ldflags" -o "$dest/helm.partial" helm.sh/helm/v4/cmd/helm)
mv "$dest/helm.partial" "$dest/helm"
"$dest/helm" version --short >/dev/null
echo "$dest/helm"
