#!/bin/bash
# Everything a lent GPU checks, in one call of the device tool (its device
# time is short and every start costs minutes):
#   1. the tests (run.sh: every GPU test binary, then the cluster check);
#   2. the benchmarks beside PyTorch (bench.sh), JSON next to the logs;
#   3. compute-sanitizer memcheck, racecheck and synccheck on the kernel and
#      engine tests, as far as SANITIZE_S allows (SANITIZE_FILTER narrows
#      them).
# Each phase is bounded (TESTS_S, BENCH_S, SANITIZE_S seconds) so a hang in
# one leaves time for the others. Logs and JSON go to $OUT (the device tool
# brings that folder back; at most 8 files) or /tmp/chunkflow-gpu; the
# output keeps only summaries, so the reply's tail holds them.
#   device run: carry=["gpu_bundle"], command: gpu_bundle/check.sh
set -u
H="$(cd "$(dirname "$0")" && pwd)"
O="${OUT:-/tmp/chunkflow-gpu}"
mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3
echo "== 1. tests (${TESTS_S:=150} s at most, each binary ${TEST_TIMEOUT_S:=60} s)"
export TEST_TIMEOUT_S
timeout "$TESTS_S" "$H/run.sh" >"$O/tests.log" 2>&1
echo "exit $? ; $(grep -cE '^\[  FAILED  \]' "$O/tests.log") failed test lines"
grep -E '^=== |^\[  (PASSED|FAILED) +\]|^\[  SKIPPED \] [0-9]+ tests?,|^(ok|FAIL) |passed, [0-9]+ failed' \
  "$O/tests.log" | head -80
echo "== 2. benchmarks (${BENCH_S:=240} s at most)"
JSON_DIR="$O" timeout "$BENCH_S" "$H/bench.sh" >"$O/bench.log" 2>&1
echo "exit $?"
grep -vE '^(cuda_step_bench|attention_bench|gemm_bench): .*\.\.\.$' "$O/bench.log" | tail -60
echo "== 3. compute-sanitizer (${SANITIZE_S:=120} s at most)"
if command -v compute-sanitizer >/dev/null; then
  : >"$O/sanitize.log"
  deadline=$((SECONDS + SANITIZE_S))
  source "$H/env.sh"
  for b in "$H"/bin/kernels_cuda_ops_test "$H"/bin/kernels_cuda_flash_attention_test \
           "$H"/bin/worker_engine_cuda_cuda_engine_test; do
    for tool in memcheck racecheck synccheck; do
      left=$((deadline - SECONDS))
      if [[ $left -le 5 ]]; then echo "$(basename "$b") $tool: no time left"; continue; fi
      timeout "$left" compute-sanitizer --tool "$tool" --error-exitcode 9 "$b" \
        --gtest_filter="${SANITIZE_FILTER:-*}" >>"$O/sanitize.log" 2>&1
      rc=$?
      case $rc in
        0) echo "$(basename "$b") $tool: clean" ;;
        124) echo "$(basename "$b") $tool: timed out" ;;
        *) echo "$(basename "$b") $tool: ERRORS (exit $rc)" ;;
      esac
    done
  done
  grep -E '^========= (ERROR SUMMARY|Invalid|Race)' "$O/sanitize.log" | sort | uniq -c | head -20
else
  echo "no compute-sanitizer on this machine"
fi
