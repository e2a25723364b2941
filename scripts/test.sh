#!/usr/bin/env bash
# The test command of the README (and of CI): installs what is missing, builds, runs every test.
#   1. the release build (CUDA when nvcc is present): CPU tests; GPU tests (label `gpu`) run and
#      skip with the reason where no CUDA device is present;
#   2. a CPU-only build under AddressSanitizer + UndefinedBehaviorSanitizer: the CPU tests again.
# Set REFINERY_SKIP_SANITIZERS=1 to run only the first part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== release build"
scripts/build.sh build
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 600)

if [ "${REFINERY_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== AddressSanitizer + UBSan build (CPU)"
  BUILD_TYPE=Debug scripts/build.sh build-asan -DREFINERY_CUDA=OFF -DREFINERY_SANITIZE=ON -DREFINERY_BENCH=OFF
  # The two AWQ quality measurements (a whole-model AWQ and RTN plus held-out KL at -O0 would take
  # most of the budget) are left out here; the AWQ code they run is run under the sanitizers by
  # the other AWQ tests (Awq.NonFiniteWeightsNeverAbortTheRun runs the whole pass).
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure -j"$(nproc)" --timeout 900 -L cpu \
       -E 'Awq\.(BeatsRtnOnHeldOutKlAtThreeBits|RoutingSurvivesAtEightBits)')
fi
echo "== all tests passed"
