#!/bin/bash
# Installs what a fresh Debian 12 machine lacks to build and test ChunkFlow.
# Idempotent: installs only missing packages, runs apt-get update only then.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-rules-java      # Bazel 4.2.3, offline
  g++ pkg-config python3
  protobuf-compiler libprotobuf-dev     # Protobuf 3.21
  libgrpc++-dev protobuf-compiler-grpc  # gRPC 1.51
  libabsl-dev                           # Abseil 20220623
  nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libboost-context-dev                  # fibers of the kernels' SIMT emulation (tests)
  libopenblas-openmp-dev libopenblas0-openmp  # GEMMs of kernels/cpu
  libgloo-dev librocksdb-dev prometheus-cpp-dev prometheus  # the cluster
  python3-yaml python3-venv             # deploy/deploy_test.py
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "setup: not root and no sudo: install these Debian packages as root: ${missing[*]}" >&2
      exit 1
    }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The CUDA toolkit is not a Debian package: the build compiles kernels/cuda
# with nvcc and links cudart and NCCL from /usr/local/cuda (WORKSPACE), even
# where no GPU is (the GPU tests then skip). Say so by name instead of
# letting the build fail on a missing header.
CUDA=/usr/local/cuda
for f in bin/nvcc include/cuda_runtime_api.h include/nccl.h; do
  if [[ ! -e $CUDA/$f ]]; then
    echo "setup: $CUDA/$f is missing: install the CUDA 13 toolkit with NCCL at $CUDA" \
         "(NVIDIA's packages or runfile; Debian has none)" >&2
    exit 1
  fi
done

# deploy/deploy_test.py checks the Kubernetes manifests against Kubernetes'
# own schemas with kubernetes-validate, which Debian does not package: it
# goes into a virtual environment from PyPI, once. Without it (PyPI out of
# reach) that one check is reported as skipped; nothing else needs it.
VENV="${CHUNKFLOW_TOOLS_VENV:-${HOME:-/root}/.cache/chunkflow/venv}"
KUBERNETES_VALIDATE=1.37.0
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE"; then
  echo "setup: installing kubernetes-validate $KUBERNETES_VALIDATE into $VENV (PyPI)" >&2
  if ! { /usr/bin/python3 -m venv "$VENV" &&
         "$VENV/bin/pip" install -q --disable-pip-version-check \
           "kubernetes-validate==$KUBERNETES_VALIDATE"; } >&2; then
    echo "setup: could not install kubernetes-validate; deploy_test will skip its schema check" >&2
  fi
fi
