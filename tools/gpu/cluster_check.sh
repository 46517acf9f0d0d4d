#!/bin/bash
# The cluster on a GPU machine, run from the GPU bundle (scripts/ of
# tools/gpu/bundle.sh's output): `chunkflowctl local` with dp 2 x pp 2 trains
# the same job on the CPU engine and on the CUDA engine (workers sharing the
# GPU over Gloo links), and their final losses must agree:
#   CUDA fp32 vs CPU: relative 1e-4 (same ops, different summation orders);
#   CUDA bf16 vs CPU: relative 2e-2 (bf16 GEMM inputs).
# With 4 or more GPUs, the NCCL links run too (one GPU per worker), fp32,
# against the same CPU loss. Then `chunkflowctl train` (one process) on the
# CPU and on the GPU, the same tolerances. Prints ok/FAIL lines; exit status
# 0 when all pass.
set -u
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# In the bundle: its libraries and chunkflowctl; from a checkout, set
# CHUNKFLOWCTL=bazel-bin/cli/chunkflowctl.
[[ -f "$HERE/env.sh" ]] && source "$HERE/env.sh"
BIN="${CHUNKFLOWCTL:-$HERE/tools/chunkflowctl}"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
if [[ $gpus -eq 0 ]]; then echo "SKIPPED: no CUDA device (the cluster check needs a GPU)"; exit 0; fi
W="$(mktemp -d /tmp/chunkflow-cluster-check.XXXXXX)"
JOB=(--dp=2 --pp=2 --steps=4 --global_batch=8 --chunk_size=128 --k=2 --optimizer=adamw --lr=1e-3
     --dataset=synthetic:lmsys:n=64,seed=3,max=512)
fail=0
loss_of() {  # name, extra flags...
  local name=$1; shift
  local out="$W/$name.out"
  if ! timeout 600 "$BIN" local --workdir="$W/$name" "${JOB[@]}" "$@" >"$out" 2>"$W/$name.err"; then
    echo "FAIL $name: chunkflowctl local failed" >&2; tail -5 "$W/$name.err" >&2; return 1
  fi
  local loss
  loss=$(sed -n 's/.*completed: .*final loss \([0-9.eE+-]*\).*/\1/p' "$out" | tail -1)
  [[ -n $loss ]] || { echo "FAIL $name: no final loss in $out" >&2; return 1; }
  echo "$loss"
}
compare() {  # name, got, want, tolerance
  if python3 -c "import sys; g, w, t = map(float, sys.argv[1:]); sys.exit(0 if abs(g - w) <= t * abs(w) else 1)" "$2" "$3" "$4"; then
    echo "ok   $1: final loss $2 vs CPU $3 (tolerance $4)"
  else
    echo "FAIL $1: final loss $2 vs CPU $3 (tolerance $4)"; fail=1
  fi
}
cpu=$(loss_of cpu --device=cpu) || exit 1
echo "ok   cpu: final loss $cpu"
fp32=$(loss_of cuda-fp32-gloo --device=cuda --links=gloo --precision=fp32) && compare cuda-fp32-gloo "$fp32" "$cpu" 1e-4 || fail=1
bf16=$(loss_of cuda-bf16-gloo --device=cuda --links=gloo --precision=bf16) && compare cuda-bf16-gloo "$bf16" "$cpu" 2e-2 || fail=1
if [[ $gpus -ge 4 ]]; then
  nccl=$(loss_of cuda-fp32-nccl --device=cuda --links=nccl --precision=fp32) && compare cuda-fp32-nccl "$nccl" "$cpu" 1e-4 || fail=1
else
  echo "SKIPPED: NCCL links (need 4 GPUs for dp 2 x pp 2, this machine has $gpus)"
fi
# One process on one GPU: chunkflowctl train, CPU vs CUDA engine.
TRAIN=(--steps=3 --global_batch=8 --chunk_size=128 --k=2 --dataset=synthetic:lmsys:n=64,seed=3,max=512)
train_loss() {  # name, extra flags...
  local name=$1; shift
  if ! timeout 600 "$BIN" train "${TRAIN[@]}" "$@" >"$W/$name.out" 2>"$W/$name.err"; then
    echo "FAIL $name: chunkflowctl train failed" >&2; tail -5 "$W/$name.err" >&2; return 1
  fi
  local loss
  loss=$(sed -n 's/.*loss [0-9.]* -> \([0-9.eE+-]*\).*/\1/p' "$W/$name.out" | tail -1)
  [[ -n $loss ]] || { echo "FAIL $name: no final loss in $W/$name.out" >&2; return 1; }
  echo "$loss"
}
if tcpu=$(train_loss train-cpu --device=cpu); then
  echo "ok   train-cpu: final loss $tcpu"
  tfp32=$(train_loss train-cuda-fp32 --device=cuda --precision=fp32) && compare train-cuda-fp32 "$tfp32" "$tcpu" 1e-4 || fail=1
  tbf16=$(train_loss train-cuda-bf16 --device=cuda --precision=bf16) && compare train-cuda-bf16 "$tbf16" "$tcpu" 2e-2 || fail=1
else
  fail=1
fi
echo "logs: $W"
exit $fail
