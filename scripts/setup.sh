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
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
