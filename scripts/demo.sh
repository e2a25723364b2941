#!/usr/bin/env bash
# The demo of the README: installs what is missing, builds, and runs refine on the model, tokenizer
# and data that ship in the repo. (Later issues grow this into the full quickstart recipe.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build >/dev/null
model=models/refinery-teacher-moe
refine=build/refine
run() { echo; echo "\$ refine $*"; "$refine" "$@"; }

run inspect "$model"
run tokenize --tokenizer "$model" --text "Refinery makes large language models smaller."
run tokenize --tokenizer data/tokenizers/deepseek-v3 --add-special --json \
    --text $'def greet(name):\n    return f"Hello, {name}!"  # 你好 👋'
mkdir -p build/demo
# The bundled teacher (models/refinery-teacher-moe/README.md) is a 10.6M-parameter DeepSeek-V3-
# architecture MoE trained by refine on Python docs, Python code and Perl docs; it was trained with
# one <|bos|> per document, hence --add-special.
run data tokenize --tokenizer "$model" --add-special --in data/sample/valid-sample.jsonl --out build/demo/sample-tokens.h5 --force
run run "$model" --prompt "def main():" --max-new 24 --seed 1
rm -f build/demo/teacher-top16.h5
run logits "$model" --data build/demo/sample-tokens.h5 --out build/demo/teacher-top16.h5 --top-k 16 --seq-len 256
run eval "$model" --data build/demo/sample-tokens.h5 --ref-logits build/demo/teacher-top16.h5
# Distill a small dense student (llama, a quarter of the teacher's active size) from the cached
# top-16 distributions for a few steps, then compare it with the teacher.
rm -rf build/demo/student
run distill --student-config models/configs/student-dense-quarter.json --tokenizer "$model" \
    --teacher-logits build/demo/teacher-top16.h5 --steps 30 --batch 4 --lr 3e-3 --warmup 3 \
    --eval-windows 2 --log-every 10 --out build/demo/student
run eval build/demo/student --data build/demo/sample-tokens.h5 --seq-len 256 --ref "$model"
echo
echo "demo finished: outputs are in build/demo/ (token dataset, top-16 teacher logit cache, student)"
