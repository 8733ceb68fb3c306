#!/usr/bin/env bash
# Compiles hack/kstatus (the kstatus library of sigs.k8s.io/cli-utils, pinned in its go.mod and
# go.sum) into the cache, keyed by a hash of its sources, so a second run returns at once.
# Prints the binary's path on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/kstatus"
cache_root=${APPID_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appidentity-operator}
key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
dest="$cache_root/tools/kstatus-$key"
if [ -x "$dest/kstatus" ]; then echo "$dest/kstatus"; exit 0; fi

command -v go >/dev/null || { echo "go is needed to compile hack/kstatus" >&2; exit 1; }
mkdir -p "$dest"
# -mod=readonly: the committed go.sum is the whole truth; a missing entry fails the build.
(cd "$src" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
  go build -trimpath -ldflags "-s -w" -o "$dest/kstatus.tmp" .)
mv "$dest/kstatus.tmp" "$dest/kstatus"
echo "$dest/kstatus"
