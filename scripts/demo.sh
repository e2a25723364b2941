#!/usr/bin/env bash
# The demo of the README: installs what is missing, builds, and runs refine on the model, tokenizer
# and data that ship in the repo. (Later issues grow this into the full quickstart recipe.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build >/dev/null
model=models/demo-tiny-deepseek-v3
refine=build/refine
run() { echo; echo "\$ refine $*"; "$refine" "$@"; }

run inspect "$model"
run tokenize --tokenizer "$model" --text "Refinery makes large language models smaller."
run tokenize --tokenizer data/tokenizers/deepseek-v3 --add-special --json \
    --text $'def greet(name):\n    return f"Hello, {name}!"  # 你好 👋'
mkdir -p build/demo
run data tokenize --tokenizer "$model" --in data/sample/valid-sample.jsonl --out build/demo/sample-tokens.h5 --force
echo
echo "demo finished: the token dataset is build/demo/sample-tokens.h5"
