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
# The demo model has random weights (models/README.md): its text is gibberish and its perplexity is
# about its vocabulary size; the point is the machinery, on a real DeepSeek-V3-architecture checkpoint.
run run "$model" --prompt "def main():" --max-new 16 --seed 1
rm -f build/demo/teacher-top16.h5
run logits "$model" --data build/demo/sample-tokens.h5 --out build/demo/teacher-top16.h5 --top-k 16 --seq-len 256
run eval "$model" --data build/demo/sample-tokens.h5 --ref-logits build/demo/teacher-top16.h5
echo
echo "demo finished: outputs are in build/demo/ (token dataset, top-16 teacher logit cache)"
