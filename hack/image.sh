#!/usr/bin/env bash
# `make image`: builds the operator's image from Dockerfile without a Docker engine or a
# registry, tags it appidentity-operator:<version> and writes dist/appidentity-operator-<version>.oci.tar.
#
# No registry is reachable here, so the Dockerfile's pinned python base cannot be pulled. Its
# PYTHON_IMAGE build argument takes a local stand-in instead: Debian 12 (the same "bookworm" the
# official base is built on, with its Python 3.11) made by mmdebstrap and imported with
# `podman import`. The Dockerfile itself is the one users build with the real base.
# `podman build --isolation=chroot` needs no daemon, no OCI runtime and no cgroups.
#
# Cached: the base root filesystem under ~/.cache/appidentity-operator/image-base, keyed by
# everything it is made from; podman's layer cache for the build; the archive is rewritten only
# when the image changed. APPID_IMAGE_BASE=<image> uses that base instead (e.g. the real one).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { echo "image.sh: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  log "installing ${missing[*]} from Debian"
  "${sudo_cmd[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2
fi

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
# Fully qualified: podman would otherwise call it localhost/appidentity-operator, and a cluster
# reading deploy/'s `image: appidentity-operator:<version>` looks for docker.io/library/...
image=docker.io/library/appidentity-operator:$version
archive=dist/appidentity-operator-$version.oci.tar

# --- the base ----------------------------------------------------------------------------------

# What the base is made from; its hash names the cached root filesystem and the local image.
# python-is-python3: the Dockerfile calls `python`, as the official image provides it.
# Documentation, manual pages and translations are left out (nothing reads them in the image).
base_recipe() {
  cat <<'EOF'
suite=bookworm variant=minbase
include=python3,python3-venv,python-is-python3,ca-certificates
mirror=deb http://deb.debian.org/debian bookworm main
mirror=deb http://deb.debian.org/debian bookworm-updates main
mirror=deb http://deb.debian.org/debian-security bookworm-security main
dpkgopt=path-exclude=/usr/share/doc/*
dpkgopt=path-include=/usr/share/doc/*/copyright
dpkgopt=path-exclude=/usr/share/man/*
dpkgopt=path-exclude=/usr/share/info/*
dpkgopt=path-exclude=/usr/share/locale/*
EOF
}

build_base() {
  local tarball=$1 args=() line
  while IFS= read -r line; do
    case $line in
      suite=*) ;;
      include=*) args+=(--include="${line#include=}") ;;
      dpkgopt=*) args+=(--dpkgopt="${line#dpkgopt=}") ;;
    esac
  done < <(base_recipe)
  local mirrors=()
  while IFS= read -r line; do mirrors+=("${line#mirror=}"); done < <(base_recipe | grep '^mirror=')
  mkdir -p "$(dirname "$tarball")"
  log "making the Debian 12 base with mmdebstrap (about a minute or two)"
  mmdebstrap --quiet --mode=root --format=tar --variant=minbase "${args[@]}" bookworm "$tarball.part" "${mirrors[@]}" >&2
  mv "$tarball.part" "$tarball"
}

if [ -n "${APPID_IMAGE_BASE:-}" ]; then
  base=$APPID_IMAGE_BASE
else
  key=$(base_recipe | sha256sum | cut -c1-16)
  base=localhost/appidentity-base:$key
  cache=${APPID_CACHE_DIR:-$HOME/.cache/appidentity-operator}/image-base
  if ! podman image exists "$base"; then
    [ -f "$cache/base-$key.tar" ] || build_base "$cache/base-$key.tar"
    log "importing the base as $base"
    podman import --quiet --change 'CMD ["python3"]' "$cache/base-$key.tar" "$base" >/dev/null
  fi
fi

# --- the image ---------------------------------------------------------------------------------

# pip in the build reaches PyPI through this machine's certificate chain: the host's CA bundle is
# mounted read-only over the base's own for the RUN steps only (a mount, in no layer). Debian's
# pip and pip >= 24.2 (truststore) both read the system bundle. Mounted over a file the base
# already has, so no empty mount point is left behind in the image either.
ca=/etc/ssl/certs/ca-certificates.crt
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
log "building $image from Dockerfile on $base"
podman build --quiet --isolation=chroot --network host --layers --volume "$ca:$ca:ro" \
  --build-arg "PYTHON_IMAGE=$base" --tag "$image" . >/dev/null

mkdir -p dist
id=$(podman image inspect --format '{{.Id}}' "$image")
# The image this one replaces, now untagged, unless something still uses it (a mount).
[ -z "$previous" ] || [ "$previous" = "$id" ] || podman rmi "$previous" >/dev/null 2>&1 || true
if [ ! -f "$archive" ] || [ "$(cat "$archive.id" 2>/dev/null)" != "$id" ]; then
  rm -f "$archive"
  podman save --quiet --format oci-archive --output "$archive.part" "$image"
  mv "$archive.part" "$archive"
  echo "$id" >"$archive.id"
fi
size=$(stat -c %s "$archive")
echo "$image $archive $((size / 1024 / 1024)) MiB (image $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%d MiB", $1/1048576}') unpacked)"
