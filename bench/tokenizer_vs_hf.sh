#!/usr/bin/env bash
# Tokenizer encode throughput, one thread: refine's tokenizer (bench/tokenizer_bench.cpp) side by side
# with Hugging Face `tokenizers` (Python, RAYON_NUM_THREADS=1), same file, same machine, one run.
#   bench/tokenizer_vs_hf.sh [TEXT_FILE] [BUILD_DIR]
# Needs `pip install tokenizers` for the peer; the results go to docs/BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
text=${1:-../shared/data/corpus/valid.txt}
build=${2:-build}
repeat=5
for tok in deepseek-v3 llama-2; do
  for mode in whole lines; do
    flag=""; [ "$mode" = lines ] && flag="--lines"
    ours=$("$build/bench/tokenizer_bench" "data/tokenizers/$tok" "$text" --repeat $repeat $flag | tail -1)
    peer=$(RAYON_NUM_THREADS=1 python3 - "$tok" "$text" "$mode" $repeat <<'PY'
import json, statistics, sys, time
from tokenizers import Tokenizer
tok, path, mode, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = Tokenizer.from_file(f"data/tokenizers/{tok}/tokenizer.json")
text = open(path, encoding="utf-8", errors="replace").read()
lines = text.splitlines(keepends=True)
times, n = [], 0
for _ in range(repeat):
    start = time.perf_counter()
    if mode == "whole":
        n = len(t.encode(text, add_special_tokens=False).ids)
    else:
        n = sum(len(e.ids) for e in (t.encode(l, add_special_tokens=False) for l in lines))
    times.append(time.perf_counter() - start)
s = statistics.median(times)
print(json.dumps({"mb_per_s": len(text.encode()) / s / 1e6, "tokens": n}))
PY
)
    echo "$tok $mode ours=$ours peer=$peer"
  done
done
