#!/bin/bash
# Builds the ChunkFlow container image (deploy/container/Dockerfile):
#
#   deploy/container/build.sh [--image=NAME:TAG] [--push] [--no-docker]
#
# 1. bazel build -c opt //cli:chunkflowctl, on this machine (scripts/setup.sh
#    and the CUDA toolkit at /usr/local/cuda, as for any build here);
# 2. rootfs/opt/chunkflow/{bin,lib}: the binary and every shared library it
#    needs except glibc's and the driver's (tools/copy_libs.sh), plus cuBLAS
#    and cuBLASLt, which the CUDA engine loads with dlopen;
# 3. docker build (and push), unless --no-docker or there is no Docker engine:
#    then it says how to build the image from the folder elsewhere.
#
# deploy/container/check_rootfs.sh runs the filled rootfs/ on a bare Debian 12
# (debootstrap) without Docker, to prove it needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=chunkflow:latest
PUSH=0
DOCKER=1
for a in "$@"; do
  case "$a" in
    --image=*) IMAGE="${a#--image=}" ;;
    --push) PUSH=1 ;;
    --no-docker) DOCKER=0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n $IMAGE ]] || { echo "build.sh: --image is empty" >&2; exit 2; }

echo "build.sh: building chunkflowctl (-c opt)" >&2
bazel build -c opt --jobs="$(nproc)" //cli:chunkflowctl
BIN=bazel-out/k8-opt/bin/cli/chunkflowctl
ROOT=deploy/container/rootfs
rm -rf "$ROOT"
mkdir -p "$ROOT/opt/chunkflow/bin" "$ROOT/opt/chunkflow/lib"
cp "$BIN" "$ROOT/opt/chunkflow/bin/chunkflowctl"
tools/copy_libs.sh "$BIN" "$ROOT/opt/chunkflow/lib"
# cuBLAS and cuBLASLt: dlopen'ed under the soname of the toolkit chunkflowctl
# was built against (kernels/cuda/cublas_loader.cc), so ldd does not list them.
CUBLAS_MAJOR=$(sed -n 's/^#define CUBLAS_VER_MAJOR \([0-9]*\).*/\1/p' /usr/local/cuda/include/cublas_api.h)
for lib in "libcublas.so.$CUBLAS_MAJOR" "libcublasLt.so.$CUBLAS_MAJOR"; do
  src=$(ls /usr/local/cuda/lib64/"$lib" 2>/dev/null || true)
  [[ -n $src ]] || { echo "build.sh: /usr/local/cuda/lib64/$lib not found (the CUDA toolkit's cuBLAS)" >&2; exit 1; }
  cp -L "$src" "$ROOT/opt/chunkflow/lib/$lib"
done
echo "build.sh: $ROOT: $(ls "$ROOT/opt/chunkflow/lib" | wc -l) libraries, $(du -sh "$ROOT" | cut -f1)" >&2

if [[ $DOCKER == 0 ]] || ! docker info >/dev/null 2>&1; then
  if [[ $PUSH == 1 ]]; then
    echo "build.sh: --push, but no Docker engine answers here (docker info failed) or --no-docker:" \
         "nothing was built or pushed; the build context is in deploy/container" >&2
    exit 1
  fi
  echo "build.sh: no Docker engine here (or --no-docker); the build context is ready:" >&2
  echo "  docker build -t $IMAGE deploy/container   # where an engine runs" >&2
  exit 0
fi
docker build -t "$IMAGE" deploy/container
if [[ $PUSH == 1 ]]; then docker push "$IMAGE"; fi
echo "build.sh: built $IMAGE" >&2
