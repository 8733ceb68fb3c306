#!/usr/bin/env bash
# Runs a command from an image's root filesystem the way a restricted Pod's container runs, with no
# container runtime (`podman run` does not work on this project's machines: crun refuses their
# cgroup layout). Used by the test suite's APPID_TEST_OPERATOR=image mode; needs root.
#
#   hack/run-image.sh ROOTFS SCRATCH SA_DIR CONFIG_DIR HOSTNAME WORKDIR ENV_FILE -- COMMAND...
#
# ROOTFS      the image's root filesystem (`podman image mount`), never written to
# SCRATCH     an empty directory; a tmpfs private to this run is mounted on it
# SA_DIR      mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount (token, ca.crt,
#             namespace), as the kubelet's projected volume; changes to it are seen inside
# CONFIG_DIR  mounted read-only at /etc/appidentity (the policy ConfigMap's volume)
# ENV_FILE    the container's whole environment, one NAME=value a line
#
# What the process gets, as in deploy/deployment.yaml's Pod: new mount, PID, IPC and UTS
# namespaces (it is PID 1, so SIGTERM reaches it as the kubelet sends it); the image's root
# filesystem read-only (readOnlyRootFilesystem); a fresh /proc; a minimal /dev; a 64 MiB tmpfs at
# /tmp as the only writable place; uid/gid 65532 with no supplementary groups; no capabilities
# in any set and no_new_privs (capabilities drop ALL, allowPrivilegeEscalation false). The
# network namespace is the host's: the API server listens on the host's loopback.
set -euo pipefail

die() { echo "run-image.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (namespaces, mounts, chroot)"
if [ "${1:-}" != --in-namespaces ]; then
  exec unshare --mount --propagation private --pid --ipc --uts --fork --kill-child=SIGKILL \
    -- "$0" --in-namespaces "$@"
fi
shift
[ "$#" -ge 9 ] && [ "$8" = -- ] || die "usage: $0 ROOTFS SCRATCH SA_DIR CONFIG_DIR HOSTNAME WORKDIR ENV_FILE -- COMMAND..."
rootfs=$1 scratch=$2 sa_dir=$3 config_dir=$4 name=$5 workdir=$6 env_file=$7
shift 8

# The container's layer: an overlay on the image, where the mount points are made before the
# whole root turns read-only (what a runtime does for readOnlyRootFilesystem).
mount -t tmpfs -o mode=0700 appidentity-run "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
root=$scratch/root
mount -t overlay -o "lowerdir=$rootfs,upperdir=$scratch/upper,workdir=$scratch/work" overlay "$root"

# Paths resolved inside the image: its /var/run is a symlink to /run, which on the host would
# lead out of the root filesystem.
inside() { echo "$root$(chroot "$root" /usr/bin/realpath -m "$1")"; }
bind_ro() {
  local target
  target=$(inside "$2")
  mkdir -p "$target"
  mount --bind "$1" "$target"
  mount -o remount,bind,ro,nosuid,nodev,noexec "$target"
}
bind_ro "$sa_dir" /var/run/secrets/kubernetes.io/serviceaccount
bind_ro "$config_dir" /etc/appidentity

mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmp "$root/tmp"
mount -t tmpfs -o nosuid,noexec,mode=0755,size=64k dev "$root/dev"
for device in null zero full random urandom tty; do
  touch "$root/dev/$device"
  mount --bind "/dev/$device" "$root/dev/$device"
done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -o remount,bind,ro "$root"
hostname "$name"

mapfile -t environment <"$env_file"
# chroot needs CAP_SYS_CHROOT, so it comes first; the image's own setpriv then drops everything.
exec chroot "$root" /usr/bin/setpriv --reuid=65532 --regid=65532 --clear-groups \
  --inh-caps=-all --bounding-set=-all --no-new-privs \
  -- /usr/bin/env --ignore-environment --chdir="$workdir" "${environment[@]}" "$@"
