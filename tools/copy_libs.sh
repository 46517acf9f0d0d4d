#!/bin/bash
# Copies the shared libraries a binary needs next to it, for a machine or a
# container image that has none of this machine's -dev packages:
#
#   tools/copy_libs.sh BINARY LIBDIR [EXTERNAL_REGEX]
#
# Every library ldd resolves for BINARY is copied (symlinks followed) to
# LIBDIR/<soname>, except glibc's own and the CUDA driver (libcuda), which
# come with the target. Sonames matching EXTERNAL_REGEX (an extended regex)
# are expected on the target too: they are not copied but printed, one per
# line, so the caller can record them. A library ldd cannot find is an error
# naming it. Used by tools/gpu/bundle.sh and deploy/container/Dockerfile.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: tools/copy_libs.sh BINARY LIBDIR [EXTERNAL_REGEX]" >&2
  exit 2
fi
bin="$1" libdir="$2" external="${3:-}"
[[ -x $bin ]] || { echo "copy_libs: '$bin' is not an executable file" >&2; exit 2; }
mkdir -p "$libdir"
missing=$(ldd "$bin" | awk '/not found/ {print $1}')
if [[ -n $missing ]]; then
  echo "copy_libs: $bin needs libraries this machine lacks: $missing" >&2
  exit 1
fi
ldd "$bin" | awk '/=>/ {print $1, $3}' | while read -r soname path; do
  case "$soname" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libcuda.so*)
      continue ;;
  esac
  if [[ -n $external && $soname =~ $external ]]; then
    echo "$soname"
    continue
  fi
  [[ -f "$libdir/$soname" ]] || cp -L "$path" "$libdir/$soname"
done
