#!/usr/bin/env bash
# Compiles etcd, kube-apiserver, kube-controller-manager and kubectl from the published Go
# modules into a cache outside the checkout, keyed by version. A second run finds them and
# returns at once. Prints the bin directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache_root=${APPID_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appidentity-operator}
dest="$cache_root/control-plane/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() { for b in "${bins[@]}"; do [ -x "$dest/bin/$b" ] || return 1; done; }
if have_all; then echo "$dest/bin"; exit 0; fi

command -v go >/dev/null || { echo "go is needed to compile the control plane" >&2; exit 1; }
work="$dest/build"
mkdir -p "$work/k8s" "$work/etcd" "$dest/bin"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# --- Kubernetes: a build module that requires k8s.io/kubernetes and maps each staging module
# (upstream replaces them with local paths, which `go install` refuses) to its published version.
rm -f "$work/k8s/go.mod" "$work/k8s/go.sum"  # an interrupted build's, rewritten below
upstream_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
  | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
staging=$(sed -n '/^replace (/,/^)/p' "$upstream_mod" | awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}')
minor=${K8S_VERSION#*.}

# The staging module's published version for this release, v0.<minor>.<patch>. Where the module
# proxy does not serve that one (seen: k8s.io/endpointslice v0.32.13), the newest earlier patch
# of the same minor, recorded in $dest/substitutions (the README's support table names them).
staging_version() {
  local module=$1 want=v0.$minor
  # The sample modules are never built; whatever the proxy has of them does not matter.
  case $module in k8s.io/sample-*) echo "$want"; return ;; esac
  # Asked outside the build module, whose go.mod is being written while this runs.
  if (cd "$work" && go mod download "$module@$want" >/dev/null 2>&1); then echo "$want"; return; fi
  local line=v0.${minor%%.*} found
  found=$( (cd "$work" && go list -m -versions "$module" 2>/dev/null || true) | tr ' ' '\n' \
    | grep "^$line\." | { cat; echo "$want"; } | sort -V | sed -n "/^${want//./\\.}\$/q;p" | tail -n 1)
  # Not published at all (sample modules): the build never needs those, keep the name.
  if [ -z "$found" ]; then echo "$want"; return; fi
  echo "$module $found (v0.$minor is not served)" >>"$dest/substitutions"
  echo "build-control-plane.sh: $module $want is not served; using $found" >&2
  echo "$found"
}
rm -f "$dest/substitutions"
{
  echo "module appidentity.dev/control-plane-build"
  echo
  # `tool` lines need go >= 1.24; older releases (1.32: go 1.23) keep their godebug defaults.
  grep -E '^go ' "$upstream_mod" | awk '{ split($2, v, "."); print (v[1] == 1 && v[2] < 24) ? "go 1.24.0" : $0 }'
  grep -E '^godebug ' "$upstream_mod" || true
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $(staging_version "$m")"; done
  echo ")"
  echo
  echo "tool ("
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
  echo "	k8s.io/kubernetes/cmd/kubectl"
  echo ")"
} > "$work/k8s/go.mod"
(cd "$work/k8s" && go mod tidy)

major=${K8S_VERSION%%.*}
minor_only=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor_only"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$work/k8s" && go build -trimpath -ldflags "$ldflags" -o "$dest/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)

# --- etcd: a one-file wrapper around etcdmain, so the server module's own replaces do not matter.
cat > "$work/etcd/go.mod" <<MOD
module appidentity.dev/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
cat > "$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
(cd "$work/etcd" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$dest/bin/etcd" .)

have_all
rm -rf "$work"
echo "$dest/bin"
