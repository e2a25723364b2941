#!/usr/bin/env bash
# The demo of the README: installs what is missing, builds, shows the bundled teacher, then runs the
# quickstart recipe (recipes/quickstart.json: prune experts -> distill a dense student -> AWQ W4 ->
# eval) and prints its report. Uses the GPU when there is one. A fresh run each time: the previous
# demo run in build/demo/quickstart is replaced (it is this script's own output).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build >/dev/null
model=models/refinery-teacher-moe
refine=build/refine
run() { echo; echo "\$ refine $*"; "$refine" "$@"; }

# The bundled teacher (models/refinery-teacher-moe/README.md) is a 10.6M-parameter DeepSeek-V3-
# architecture MoE trained by refine on Python docs, Python code and Perl docs.
run inspect "$model"
run run "$model" --prompt "def main():" --max-new 24 --seed 1
rm -rf build/demo/quickstart
mkdir -p build/demo
run recipe recipes/quickstart.json --run-dir build/demo/quickstart
