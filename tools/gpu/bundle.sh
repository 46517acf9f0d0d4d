#!/bin/bash
# Builds the GPU tests (and, as they land, the GPU benchmarks) on this machine
# - no GPU needed: nvcc targets sm_90 - and gathers the binaries with the
# shared libraries they need into one folder that runs on a GPU machine that
# has the CUDA driver but no Bazel:
#
#   tools/gpu/bundle.sh [OUT]        # default OUT: gpu_bundle (git-ignored)
#   OUT/run.sh                       # on the GPU machine: runs every binary,
#                                    # ends with "N passed, N failed"
#
# Libraries: everything ldd resolves except glibc's own and the driver
# (libcuda), copied into OUT/lib. The very large CUDA libraries (NCCL, cuBLAS)
# are not copied (the bundle must stay small enough to carry): run.sh looks
# for them on the target (the CUDA toolkit, pip's nvidia-* wheels) and says
# which are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-gpu_bundle}"
TARGETS=(
  //kernels/cuda:ops_test
  //kernels/cuda:flash_attention_test
  //worker/engine/cuda:cuda_engine_test
  //worker/comm:nccl_communicator_test
)
BENCHES=(
  //kernels/cuda:attention_bench
  //kernels/cuda:gemm_bench
  //worker/engine/cuda:cuda_step_bench
)
bazel build -c opt --jobs=2 "${TARGETS[@]}" "${BENCHES[@]}"
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/bench" "$OUT/lib" "$OUT/scripts"
# cuBLAS is loaded with dlopen (kernels/cuda/cublas_loader.cc): ldd does not list it.
echo libcublas.so.13 > "$OUT/lib/EXPECTED_ON_TARGET.txt"
cp tools/bench/torch_attention.py tools/bench/torch_gemm.py tools/bench/torch_step.py "$OUT/scripts/"
for t in "${TARGETS[@]}" "${BENCHES[@]}"; do
  pkg="${t#//}"; pkg="${pkg%%:*}"; name="${t##*:}"
  bin="bazel-out/k8-opt/bin/$pkg/$name"
  dir=bin
  [[ $name == *_bench ]] && dir=bench
  cp "$bin" "$OUT/$dir/${pkg//\//_}_$name"
  ldd "$bin" | awk '/=>/ {print $1, $3}' | while read -r soname path; do
    case "$soname" in
      linux-vdso*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libcuda.so*)
        continue ;;
      libnccl.so*|libcublas.so*|libcublasLt.so*)
        grep -qx "$soname" "$OUT/lib/EXPECTED_ON_TARGET.txt" || echo "$soname" >> "$OUT/lib/EXPECTED_ON_TARGET.txt"
        continue ;;
    esac
    [[ -f "$OUT/lib/$soname" ]] || cp -L "$path" "$OUT/lib/$soname"
  done
done
cp bazel-out/k8-opt/bin/kernels/cuda/ops_resource_usage.txt "$OUT/"  # ptxas -v: registers, shared memory, spills
cat > "$OUT/run.sh" <<'RUN'
#!/bin/bash
# Runs every GPU test binary of this bundle; ends with "N passed, N failed".
# Extra arguments go to each binary (e.g. --gtest_filter=...). SANITIZE=1 adds
# a compute-sanitizer memcheck and racecheck run of each.
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
extra=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && extra="$extra:$dir"
done
# pip's nvidia-nccl-cu13 / nvidia-cublas wheels (PyTorch images carry them).
if command -v python3 >/dev/null; then
  for d in $(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
for r in roots:
    for lib in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(lib)
PY
  ); do extra="$extra:$d"; done
fi
export LD_LIBRARY_PATH="$HERE/lib$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
pass=0; fail=0
for b in "$HERE"/bin/*; do
  echo "=== $(basename "$b")"
  missing=$(ldd "$b" | awk '/not found/ {print $1}')
  if [[ -n $missing ]]; then echo "missing libraries: $missing"; fail=$((fail + 1)); continue; fi
  if "$b" "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  # SANITIZE=1: also under compute-sanitizer's memcheck and racecheck.
  if [[ ${SANITIZE:-0} == 1 ]] && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      echo "--- compute-sanitizer --tool $tool"
      if compute-sanitizer --tool "$tool" --error-exitcode 9 "$b" "$@" >/dev/null; then
        echo "$tool: clean"; pass=$((pass + 1))
      else
        echo "$tool: ERRORS"; fail=$((fail + 1))
      fi
    done
  fi
done
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
RUN
chmod +x "$OUT/run.sh"
cat > "$OUT/bench.sh" <<'BENCH'
#!/bin/bash
# Runs the GPU benchmarks (each prints its table beside PyTorch on the same
# GPU; JSON under ${JSON_DIR:-/tmp}). Extra arguments go to the step bench
# (e.g. --sections=throughput --steps=2).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
extra=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && extra="$extra:$dir"
done
if command -v python3 >/dev/null; then
  for d in $(python3 -c 'import glob,os,site,sys
for r in set(site.getsitepackages()+sys.path):
    [print(l) for l in glob.glob(os.path.join(r,"nvidia","*","lib"))]' 2>/dev/null); do
    extra="$extra:$d"
  done
fi
export LD_LIBRARY_PATH="$HERE/lib$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
J="${JSON_DIR:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
"$HERE/bench/kernels_cuda_gemm_bench" --torch_script="$HERE/scripts/torch_gemm.py" --json="$J/gemm.json"
"$HERE/bench/kernels_cuda_attention_bench" --torch_script="$HERE/scripts/torch_attention.py" --json="$J/attention.json"
"$HERE/bench/worker_engine_cuda_cuda_step_bench" --torch_script="$HERE/scripts/torch_step.py" --json="$J/step.json" "$@"
BENCH
chmod +x "$OUT/bench.sh"
du -sh "$OUT"
echo "bundle: $OUT (tests: $(ls "$OUT/bin" | tr '\n' ' '); benches: $(ls "$OUT/bench" | tr '\n' ' '))"
echo "expected on the target: $(tr '\n' ' ' < "$OUT/lib/EXPECTED_ON_TARGET.txt")"
