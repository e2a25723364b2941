#!/usr/bin/env bash
# Run on the GPU machine (the `device` tool): builds with CUDA, runs every test (CPU and GPU labels),
# and writes logs plus a JSON summary under $OUT (default: ./gpu-check-out).
#   scripts/gpu-check.sh
# The GPU machine has every dependency but the PCRE2 header; carry it in .carry/include/pcre2.h
# (cp /usr/include/pcre2.h .carry/include/) and this script points the compiler at it.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
if [ ! -f /usr/include/pcre2.h ] && [ -f .carry/include/pcre2.h ]; then
  mkdir -p /tmp/pcre2-shim/lib/pkgconfig
  ln -sf /lib/x86_64-linux-gnu/libpcre2-8.so.0 /tmp/pcre2-shim/lib/libpcre2-8.so
  cat > /tmp/pcre2-shim/lib/pkgconfig/libpcre2-8.pc <<PC
Name: libpcre2-8
Description: PCRE2 (shim: system library, carried header)
Version: 10.42
Libs: -L/tmp/pcre2-shim/lib -lpcre2-8
Cflags: -I$(pwd)/.carry/include
PC
  export PKG_CONFIG_PATH=/tmp/pcre2-shim/lib/pkgconfig
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DREFINERY_CUDA=ON \
  -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc > "$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; exit 1; }
ninja -C build-gpu > "$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -40; exit 1; }
build_s=$(( $(date +%s) - start ))
(cd build-gpu && ctest --output-on-failure -j8 --timeout 600) > "$out/ctest.log" 2>&1
ctest_rc=$?
(cd build-gpu && ctest -L gpu -V) > "$out/ctest-gpu.log" 2>&1
passed=$(grep -oE "[0-9]+% tests passed.*" "$out/ctest.log" | tail -1)
skipped=$(grep -c "Skipped" "$out/ctest-gpu.log" || true)
printf '{"build_s": %s, "ctest_rc": %s, "summary": "%s", "gpu_tests_skipped": %s}\n' \
  "$build_s" "$ctest_rc" "$passed" "$skipped" | tee "$out/summary.json"
grep -E "Passed|Failed|Skipped" "$out/ctest-gpu.log" | tail -20
exit $ctest_rc
