#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs one of them for N seconds.
#   scripts/fuzz.sh [SECONDS=60] [TARGET=safetensors_reader_fuzz] [extra libFuzzer flags...]
# New inputs go to build-fuzz/corpus/<target> (the committed seeds in fuzz/corpus/<target> are read,
# never written); a crashing input is saved as build-fuzz/crash-* and the script exits non-zero.
# Needs clang and its fuzzer runtime (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail
seconds="${1:-60}"
target="${2:-safetensors_reader_fuzz}"
shift $(( $# >= 2 ? 2 : $# ))
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-fuzz"

CC="${CC:-clang}" CXX="${CXX:-clang++}" cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DREFINERY_FUZZ=ON -DREFINERY_CUDA=OFF -DREFINERY_TESTS=OFF -DREFINERY_BENCH=OFF \
  `# coverage instrumentation for the library too, not only the target file (no link of libFuzzer)` \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer" >/dev/null
ninja -C "$build" -j"${JOBS:-2}" "$target"

work_corpus="$build/corpus/$target"
mkdir -p "$work_corpus"
cd "$build"
echo "fuzzing $target for ${seconds}s (seeds: fuzz/corpus/$target, new inputs: $work_corpus)"
"$build/fuzz/$target" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
  -print_final_stats=1 "$@" "$work_corpus" "$root/fuzz/corpus/$target"
