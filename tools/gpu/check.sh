#!/bin/bash
# Everything a lent GPU checks, in one call of the device tool (its device
# time is short and every start costs minutes):
#   1. the tests (run.sh: every GPU test binary, then the cluster check);
#   2. the benchmarks beside PyTorch (bench.sh), JSON next to the logs;
#   3. compute-sanitizer memcheck, racecheck and synccheck on the kernel and
#      engine tests, as far as SANITIZE_S allows (SANITIZE_FILTER narrows
#      them; SANITIZE_RUNS replaces the list: "binary tool filter" entries
#      separated by ';', e.g. "kernels_cuda_ops_test racecheck *").
#   4. with NCU_S > 0: Nsight Compute on the flash kernels at 8K tokens
#      (speed of light, occupancy, warp stalls) into ncu.txt, for tuning.
#   5. with NSYS_S > 0: Nsight Systems on one training step of the step
#      bench (no PyTorch, no memory section): the kernels' total GPU time,
#      largest first, into nsys.txt - where the step's time goes.
# BENCH_SKIP leaves benchmarks out (see bench.sh).
# Each phase is bounded (TESTS_S, BENCH_S, SANITIZE_S seconds) so a hang in
# one leaves time for the others. Logs and JSON go to $OUT (the device tool
# brings that folder back; at most 8 files) or /tmp/chunkflow-gpu; the
# output keeps only summaries, so the reply's tail holds them.
#   device run: carry=["gpu_bundle"], command: gpu_bundle/check.sh
set -u
H="$(cd "$(dirname "$0")" && pwd)"
O="${OUT:-/tmp/chunkflow-gpu}"
mkdir -p "$O"
source "$H/env.sh"  # the bundle's libraries, for the sanitizer and ncu phases
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
  runs="${SANITIZE_RUNS:-}"
  if [[ -z $runs ]]; then
    # Sized from the H100 runs of 2026-11-27: ops_test's three tools take
    # about 45 s, flash_attention_test's racecheck 22 s without the
    # 20000-row-prefix test (over 40 s with it), and under memcheck each
    # chunked-vs-unchunked engine test takes about 40 s while a step test
    # takes under 1 s: the slow parts come last. SANITIZE_FILTER, when set,
    # is every run's filter, and the slow parts are not run a second time.
    filter_or() { echo "${SANITIZE_FILTER:-$1}"; }
    for tool in memcheck racecheck synccheck; do
      runs="${runs}kernels_cuda_ops_test $tool $(filter_or '*');"
    done
    runs="${runs}kernels_cuda_flash_attention_test memcheck $(filter_or '*');"
    runs="${runs}kernels_cuda_flash_attention_test synccheck $(filter_or '*');"
    runs="${runs}kernels_cuda_flash_attention_test racecheck $(filter_or '*-*LongPrefix*');"
    for tool in memcheck racecheck synccheck; do
      runs="${runs}worker_engine_cuda_cuda_engine_test $tool $(filter_or '*-*ChunkedMatches*');"
    done
    if [[ -z ${SANITIZE_FILTER:-} ]]; then
      runs="${runs}kernels_cuda_flash_attention_test racecheck *LongPrefix*;"
      for tool in memcheck racecheck synccheck; do
        runs="${runs}worker_engine_cuda_cuda_engine_test $tool *ChunkedMatches*;"
      done
    fi
  fi
  IFS=';' read -ra entries <<<"$runs"
  for entry in "${entries[@]}"; do
    read -r b tool filter <<<"$entry"
    [[ -n ${b:-} ]] || continue
    left=$((deadline - SECONDS))
    if [[ $left -le 5 ]]; then echo "$b $tool ($filter): no time left"; continue; fi
    echo "=== $b $tool $filter" >>"$O/sanitize.log"
    start=$SECONDS
    timeout "$left" compute-sanitizer --tool "$tool" --error-exitcode 9 "$H/bin/$b" \
      --gtest_filter="${filter:-*}" >>"$O/sanitize.log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    case $rc in
      0) echo "$b $tool ($filter): clean, ${took} s" ;;
      124) echo "$b $tool ($filter): timed out after ${took} s" ;;
      *) echo "$b $tool ($filter): ERRORS (exit $rc)" ;;
    esac
  done
  grep -E '^========= (ERROR SUMMARY|Invalid|Race)' "$O/sanitize.log" | sort | uniq -c | head -20
else
  echo "no compute-sanitizer on this machine"
fi
if [[ ${NCU_S:-0} -gt 0 ]]; then
  echo "== 4. ncu on the flash kernels (${NCU_S} s at most)"
  if command -v ncu >/dev/null; then
    timeout "$NCU_S" ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section LaunchStats -k 'regex:Flash(Forward|Dq|DkDv|SumSplits)Kernel' --launch-count 6 \
      "$H/bench/kernels_cuda_attention_bench" --lengths=8192 --warmup=0 --iters=1 \
      --torch_python= --reference_max=0 --variants= >"$O/ncu.txt" 2>&1
    echo "exit $?"
    grep -E '^  [A-Za-z].*Flash|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per' \
      "$O/ncu.txt" | head -40
  else
    echo "no ncu on this machine"
  fi
fi
if [[ ${NSYS_S:-0} -gt 0 ]]; then
  echo "== 5. nsys on one training step (${NSYS_S} s at most)"
  if command -v nsys >/dev/null; then
    rm -f /tmp/chunkflow-step.nsys-rep /tmp/chunkflow-step.sqlite
    timeout "$NSYS_S" nsys profile --trace=cuda --sample=none --cpuctxsw=none \
      -o /tmp/chunkflow-step --force-overwrite true \
      "$H/bench/worker_engine_cuda_cuda_step_bench" --sections=throughput --warmup=1 --steps=1 \
      --torch_python= >"$O/nsys.txt" 2>&1
    echo "exit $?"
    # The report's name changed in 2023 (gpukernsum before).
    { nsys stats --report cuda_gpu_kern_sum --format table /tmp/chunkflow-step.nsys-rep 2>/dev/null ||
        nsys stats --report gpukernsum --format table /tmp/chunkflow-step.nsys-rep; } >>"$O/nsys.txt" 2>&1
    grep -E 'Time \(%\)|^ +[0-9]' "$O/nsys.txt" | head -30 | cut -c1-200
  else
    echo "no nsys on this machine"
  fi
fi
