#!/usr/bin/env python3
"""Checks that a token dataset written by `refine data tokenize` holds exactly the ids that Hugging
Face `tokenizers` gives, document by document.

Verification script (the project never runs Python). Needs `pip install tokenizers h5py numpy`.

    build/refine data tokenize --tokenizer data/tokenizers/refinery-8k \\
        --in ../shared/data/corpus/valid.jsonl --out /tmp/valid.h5
    python3 scripts/check_token_dataset_parity.py --tokenizer data/tokenizers/refinery-8k \\
        --jsonl ../shared/data/corpus/valid.jsonl --h5 /tmp/valid.h5 [--add-special]

Exit status 0 when every document matches, 1 otherwise (the first mismatches are printed).
"""
import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json or its folder")
    ap.add_argument("--jsonl", required=True, help='the .jsonl that was tokenized ({"text": ...} per line)')
    ap.add_argument("--h5", required=True, help="the token dataset refine wrote")
    ap.add_argument("--add-special", action="store_true", help="the dataset was made with --add-special")
    args = ap.parse_args()
    path = Path(args.tokenizer)
    tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    with open(args.jsonl, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    with h5py.File(args.h5, "r") as h5:
        tokens = h5["tokens"][:]
        offsets = h5["doc_offsets"][:]
    if len(offsets) != len(texts) + 1:
        print(f"document count differs: {len(offsets) - 1} in {args.h5}, {len(texts)} in {args.jsonl}")
        return 1
    encodings = tok.encode_batch(texts, add_special_tokens=args.add_special)
    bad = 0
    for i, (text, enc) in enumerate(zip(texts, encodings)):
        ours = tokens[offsets[i]:offsets[i + 1]].astype(np.int64)
        ref = np.asarray(enc.ids, dtype=np.int64)
        if ours.shape != ref.shape or not np.array_equal(ours, ref):
            bad += 1
            if bad <= 5:
                n = min(len(ours), len(ref))
                first = next((j for j in range(n) if ours[j] != ref[j]), n)
                print(f"document {i}: {len(ours)} ids vs {len(ref)} reference ids, first difference at {first}: "
                      f"ours {ours[first:first + 8].tolist()} reference {ref[first:first + 8].tolist()}")
    total = int(offsets[-1])
    print(f"{len(texts) - bad}/{len(texts)} documents identical; {total} tokens in {args.h5}, "
          f"{sum(len(e.ids) for e in encodings)} from tokenizers")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
