#!/usr/bin/env bash
# Configures and builds Refinery into a build folder (default: build/).
#   scripts/build.sh [BUILD_DIR] [extra cmake arguments...]
# CUDA is built when nvcc is found (REFINERY_CUDA=AUTO); pass -DREFINERY_CUDA=OFF to skip it.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
shift || true
jobs=$(nproc)
# ccache keys on paths relative to the repo, so clones in other folders share the cache.
export CCACHE_BASEDIR="$PWD"
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@" >/dev/null
ninja -C "$build_dir" -j"$jobs"
