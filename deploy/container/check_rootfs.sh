#!/bin/bash
# Proves the image's contents need nothing beyond a bare Debian 12, without
# Docker: builds (once) a minimal Debian 12 root with debootstrap -- what
# debian:12-slim is -- copies deploy/container/rootfs/ (build.sh --no-docker
# fills it) into a copy of it, and runs there, as the image's user 10001:
#   ldd on chunkflowctl (no library missing);
#   chunkflowctl local --steps=2 (a coordinator and 4 workers train 2 steps).
# Needs root (chroot, mounts) and Debian's package mirror. Not part of CI:
# a minute or two on first use, the base is cached in $CACHE.
#
#   deploy/container/build.sh --no-docker && sudo deploy/container/check_rootfs.sh
set -euo pipefail
cd "$(dirname "$0")"
CACHE="${CACHE:-/var/tmp/chunkflow-debian12-minbase}"
[[ $(id -u) == 0 ]] || { echo "check_rootfs.sh: needs root (chroot)" >&2; exit 2; }
[[ -x rootfs/opt/chunkflow/bin/chunkflowctl ]] ||
  { echo "check_rootfs.sh: rootfs/ is empty; run deploy/container/build.sh --no-docker first" >&2; exit 2; }
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
if [[ ! -f $CACHE/.complete ]]; then
  echo "check_rootfs.sh: debootstrap --variant=minbase bookworm $CACHE" >&2
  rm -rf "$CACHE"
  debootstrap --variant=minbase bookworm "$CACHE" http://deb.debian.org/debian >/dev/null
  touch "$CACHE/.complete"
fi
ROOT=$(mktemp -d /var/tmp/chunkflow-rootfs-check.XXXXXX)
# The root holds bind mounts of the host's /dev and a /proc: remove it only
# once neither is mounted, and never across a file-system boundary.
cleanup() {
  local m
  for m in "$ROOT/dev" "$ROOT/proc"; do
    umount "$m" 2>/dev/null || umount --lazy "$m" 2>/dev/null || true
    if mountpoint -q "$m"; then
      echo "check_rootfs.sh: $m is still mounted; leaving $ROOT in place" >&2
      return
    fi
  done
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT
cp -a "$CACHE/." "$ROOT/"
cp -a rootfs/. "$ROOT/"
mkdir -p "$ROOT/run/chunkflow" && chown 10001:10001 "$ROOT/run/chunkflow"
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
# The image's environment (deploy/container/Dockerfile) and user.
run() { env -i PATH=/opt/chunkflow/bin:/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/opt/chunkflow/lib HOME=/run/chunkflow \
          "$(command -v chroot)" --userspec=10001:10001 "$ROOT" "$@"; }
echo "--- ldd /opt/chunkflow/bin/chunkflowctl (in the bare Debian 12)"
libs=$(run ldd /opt/chunkflow/bin/chunkflowctl) || { echo "FAIL: ldd in the root failed: $libs"; exit 1; }
missing=$(grep "not found" <<<"$libs" || true)
[[ -z $missing ]] || { echo "FAIL: missing libraries:"; echo "$missing"; exit 1; }
echo "every library found: $(grep -c '/opt/chunkflow/lib/' <<<"$libs") from /opt/chunkflow/lib, $(grep -v -c '/opt/chunkflow/lib/' <<<"$libs") from Debian's base"
echo "--- chunkflowctl local --steps=2 (in the bare Debian 12, as user 10001)"
run chunkflowctl local --steps=2 --workdir=/run/chunkflow/local  # found on the image's PATH
echo "PASS: the image's files run on a bare Debian 12"
