#!/bin/bash
# Builds the GPU tests, benchmarks and chunkflowctl on this machine (no GPU
# needed: nvcc targets sm_90). It gathers them, with the shared libraries they
# need, into one folder that runs on a GPU machine with the CUDA driver but no
# Bazel:
#
#   tools/gpu/bundle.sh [OUT]     # default OUT: gpu_bundle (git-ignored)
#   OUT/run.sh                    # there: every GPU test and the cluster check,
#                                 # ending with "N passed, N failed"
#                                 # (SANITIZE=1: also compute-sanitizer)
#   OUT/bench.sh                  # there: the benchmarks beside PyTorch
#
# Libraries: everything ldd resolves, except glibc's own libraries and the
# driver (libcuda), is packed into OUT/lib.tar.gz; env.sh unpacks it on first
# use. The bundle must stay small enough to carry. NCCL and cuBLAS (cuBLAS is
# loaded with dlopen) are not packed: env.sh looks for them on the target (the
# CUDA toolkit, or pip's nvidia-* wheels) and lib/EXPECTED_ON_TARGET.txt names
# them.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-gpu_bundle}"
TESTS=(
  //kernels/cuda:ops_test
  //kernels/cuda:flash_attention_test
  //kernels/cuda:simt_kernels_gpu_test
  //worker/engine/cuda:cuda_engine_test
  //worker/agent:step_runner_cuda_test
  //worker/agent:step_runner_nccl_test
  //worker/comm:nccl_communicator_test
)
BENCHES=(
  //kernels/cuda:attention_bench
  //kernels/cuda:gemm_bench
  //worker/engine/cuda:cuda_step_bench
)
TOOLS=(//cli:chunkflowctl)
bazel build -c opt --jobs=2 "${TESTS[@]}" "${BENCHES[@]}" "${TOOLS[@]}"
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/bench" "$OUT/tools" "$OUT/lib" "$OUT/scripts"
# cuBLAS and cuBLASLt are loaded with dlopen under the sonames of the
# toolkit they were built against (kernels/cuda/cublas_loader.cc), so ldd
# does not list them.
CUBLAS_MAJOR=$(sed -n 's/^#define CUBLAS_VER_MAJOR \([0-9]*\).*/\1/p' /usr/local/cuda/include/cublas_api.h)
printf 'libcublas.so.%s\nlibcublasLt.so.%s\n' "${CUBLAS_MAJOR:-13}" "${CUBLAS_MAJOR:-13}" \
  > "$OUT/EXPECTED_ON_TARGET.txt"
cp tools/bench/torch_attention.py tools/bench/torch_gemm.py tools/bench/torch_step.py \
  tools/gpu/cluster_check.sh "$OUT/scripts/"
copy() {  # target, destination folder
  local pkg="${1#//}"; pkg="${pkg%%:*}"; local name="${1##*:}"
  local bin="bazel-out/k8-opt/bin/$pkg/$name"
  local dest="$OUT/$2/${pkg//\//_}_$name"
  [[ $2 == tools ]] && dest="$OUT/tools/$name"
  cp "$bin" "$dest"
  tools/copy_libs.sh "$bin" "$OUT/lib" '^(libnccl|libcublas|libcublasLt)\.so' |
    while read -r soname; do
      grep -qx "$soname" "$OUT/EXPECTED_ON_TARGET.txt" || echo "$soname" >> "$OUT/EXPECTED_ON_TARGET.txt"
    done
}
for t in "${TESTS[@]}"; do copy "$t" bin; done
for t in "${BENCHES[@]}"; do copy "$t" bench; done
for t in "${TOOLS[@]}"; do copy "$t" tools; done
tar czf "$OUT/lib.tar.gz" -C "$OUT" lib && rm -rf "$OUT/lib"
cp bazel-out/k8-opt/bin/kernels/cuda/ops_resource_usage.txt "$OUT/"  # ptxas -v report

cat > "$OUT/env.sh" <<'ENV'
# Sourced by run.sh, bench.sh and cluster_check.sh: unpacks the libraries once
# and puts them, the CUDA toolkit's and pip's nvidia-* ones on LD_LIBRARY_PATH.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Unpack once per lib.tar.gz: a stamp newer than the archive marks a complete
# unpack (an interrupted one, or an older bundle's, is replaced).
if [[ ! -f "$HERE/lib/.unpacked" || "$HERE/lib.tar.gz" -nt "$HERE/lib/.unpacked" ]]; then
  rm -rf "$HERE/lib" "$HERE/lib.tmp" && mkdir "$HERE/lib.tmp" &&
    tar xzf "$HERE/lib.tar.gz" -C "$HERE/lib.tmp" && mv "$HERE/lib.tmp/lib" "$HERE/lib" &&
    rmdir "$HERE/lib.tmp" && touch "$HERE/lib/.unpacked" || echo "env.sh: cannot unpack lib.tar.gz" >&2
fi
extra=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && extra="$extra:$dir"
done
if command -v python3 >/dev/null; then
  for d in $(python3 -c 'import glob, os, site, sys
for r in set(site.getsitepackages() + [site.getusersitepackages()] + sys.path):
    for lib in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(lib)' 2>/dev/null); do
    extra="$extra:$d"
  done
fi
export LD_LIBRARY_PATH="$HERE/lib$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ENV

cat > "$OUT/run.sh" <<'RUN'
#!/bin/bash
# Runs every GPU test binary of this bundle and the cluster check; ends with
# "N passed, N failed". Extra arguments go to each test binary (e.g.
# --gtest_filter=...). SANITIZE=1 adds compute-sanitizer memcheck and
# racecheck runs of each test binary (SANITIZE_FILTER: their gtest filter).
# Each run is bounded by TEST_TIMEOUT_S (default 300) seconds.
set -u
T="${TEST_TIMEOUT_S:-300}"
source "$(dirname "$0")/env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
pass=0; fail=0
for b in "$HERE"/bin/*; do
  echo "=== $(basename "$b")"
  missing=$(ldd "$b" | awk '/not found/ {print $1}')
  if [[ -n $missing ]]; then echo "missing libraries: $missing"; fail=$((fail + 1)); continue; fi
  # A scratch folder per binary, as Bazel gives each test.
  export TEST_TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/$(basename "$b").XXXXXX")"
  if timeout "$T" "$b" "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  if [[ ${SANITIZE:-0} == 1 ]] && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      echo "--- compute-sanitizer --tool $tool"
      if timeout "$T" compute-sanitizer --tool "$tool" --error-exitcode 9 "$b" \
          --gtest_filter="${SANITIZE_FILTER:-*}" >/dev/null; then
        echo "$tool: clean"; pass=$((pass + 1))
      else
        echo "$tool: ERRORS"; fail=$((fail + 1))
      fi
    done
  fi
done
echo "=== cluster_check.sh"
if "$HERE/scripts/cluster_check.sh"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
RUN

cat > "$OUT/bench.sh" <<'BENCH'
#!/bin/bash
# Runs the GPU benchmarks; each prints its table beside PyTorch on the same
# GPU, JSON goes under ${JSON_DIR:-/tmp}. Extra arguments go to both runs of
# the step bench (e.g. --steps=2). The step bench's two sections run as two
# processes, throughput first, so a memory run cut short by a time limit
# keeps the throughput table and its JSON. BENCH_SKIP names runs to leave
# out (space-separated: gemm attention step step_memory).
set -u
source "$(dirname "$0")/env.sh"
J="${JSON_DIR:-/tmp}"
skip() { [[ " ${BENCH_SKIP:-} " == *" $1 "* ]] && echo "bench.sh: $1 skipped (BENCH_SKIP)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
skip gemm || "$HERE/bench/kernels_cuda_gemm_bench" --torch_script="$HERE/scripts/torch_gemm.py" \
  --json="$J/gemm.json"
skip attention || "$HERE/bench/kernels_cuda_attention_bench" \
  --torch_script="$HERE/scripts/torch_attention.py" --json="$J/attention.json"
skip step || "$HERE/bench/worker_engine_cuda_cuda_step_bench" \
  --torch_script="$HERE/scripts/torch_step.py" --sections=throughput --json="$J/step.json" "$@"
skip step_memory || "$HERE/bench/worker_engine_cuda_cuda_step_bench" --sections=memory \
  --json="$J/step_memory.json" "$@"
BENCH
cp tools/gpu/check.sh "$OUT/check.sh"
chmod +x "$OUT/run.sh" "$OUT/bench.sh" "$OUT/check.sh" "$OUT/scripts/cluster_check.sh"
du -sh "$OUT"
echo "bundle: $OUT (tests: $(ls "$OUT/bin" | tr '\n' ' '); benches: $(ls "$OUT/bench" | tr '\n' ' '))"
echo "expected on the target: $(tr '\n' ' ' < "$OUT/EXPECTED_ON_TARGET.txt")"
