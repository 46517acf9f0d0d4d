#!/bin/bash
# The three GPU benchmarks, built over the SIMT-emulated kernels, on tiny
# shapes without PyTorch: each must finish, print its table and write its
# JSON. Their times are the emulation's and mean nothing.
set -u
T="${TEST_TMPDIR:-$(mktemp -d)}"
B=kernels/cuda
fail=0

run() {  # name json binary args...
  local name="$1" json="$2"
  shift 2
  echo "=== $name"
  if ! "$@" --json="$json" >"$T/$name.out" 2>"$T/$name.err"; then
    echo "FAIL: $name exited $?"; cat "$T/$name.out" "$T/$name.err"; fail=1; return
  fi
  cat "$T/$name.out"
  if grep -q SKIPPED "$T/$name.out"; then echo "FAIL: $name skipped"; fail=1; fi
  if [[ ! -s $json ]]; then echo "FAIL: $name wrote no JSON at $json"; fail=1; return; fi
  if ! python3 -c 'import json, sys; rows = json.load(open(sys.argv[1])); sys.exit(0 if rows else 1)' \
      "$json"; then
    echo "FAIL: $name's JSON is not a non-empty JSON document"; fail=1
  fi
}

run attention "$T/attention.json" "$B/attention_bench_simt" --lengths=128,256 --heads=2 \
  --kv_heads=1 --head_dim=64 --chunk=128 --reference_max=256 --iters=1 --warmup=0 --torch_python=
run gemm "$T/gemm.json" "$B/gemm_bench_simt" --tokens=64 --shapes='64,32;32,96' --iters=1 \
  --warmup=0 --torch_python=
run step "$T/step.json" worker/engine/cuda/cuda_step_bench_simt --model=tiny --lengths=96,40,24 \
  --chunk_size=32 --warmup=0 --steps=1 --torch_python= --memory_tokens=256 --memory_chunk_size=64

# The step's same-run variant row, and a bad variant named in the error.
if ! grep -q "unfused elementwise" "$T/step.out"; then
  echo "FAIL: step printed no unfused-elementwise row"; fail=1
fi
if worker/engine/cuda/cuda_step_bench_simt --model=tiny --variants=bogus --sections=throughput \
    --torch_python= >"$T/bad.out" 2>"$T/bad.err" || ! grep -q "unknown 'bogus'" "$T/bad.err"; then
  echo "FAIL: --variants=bogus was not refused by name"; cat "$T/bad.err"; fail=1
fi
[[ $fail -eq 0 ]] && echo "bench smoke: all three ran" || echo "bench smoke: FAILED"
exit $fail
