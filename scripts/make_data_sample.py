#!/usr/bin/env python3
"""Cuts the small corpus samples that ship in data/sample/ from the development corpus.

Generator script (the project never runs Python). Standard library only:

    python3 scripts/make_data_sample.py [--corpus ../shared/data/corpus]

Writes
  data/sample/valid-200k.jsonl  whole documents of valid.jsonl, about 200 KB
  data/sample/train-1m.jsonl    whole documents of train.jsonl, about 1 MB
Lines are copied byte for byte ({"text", "source"} per line). Selection is deterministic: the three
sources (python-docs, cpython-lib, perl-docs) are visited in turn, each in file order, and a
document is taken when it is at most a quarter of the target and still fits under the target, so
the sample mixes prose, code and Perl docs like the corpus does. data/sample/valid-sample.jsonl
(six documents, used by tests and the demo) is older and not made here.
"""
import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [("valid.jsonl", "valid-200k.jsonl", 200_000), ("train.jsonl", "train-1m.jsonl", 1_000_000)]
SOURCES = ["python-docs", "cpython-lib", "perl-docs"]


def pick(lines, target):
    queues = {s: [] for s in SOURCES}
    for line in lines:
        queues[json.loads(line)["source"].split("/")[0]].append(line)
    chosen, total, progress = [], 0, True
    while progress:
        progress = False
        for source in SOURCES:
            while queues[source]:
                line = queues[source].pop(0)
                size = len(line)
                if size <= target // 4 and total + size <= target:
                    chosen.append(line)
                    total += size
                    progress = True
                    break
    return chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/data/corpus")
    args = ap.parse_args()
    out_dir = ROOT / "data" / "sample"
    for src, dst, target in SAMPLES:
        lines = (Path(args.corpus) / src).read_bytes().splitlines(keepends=True)
        chosen = pick(lines, target)
        (out_dir / dst).write_bytes(b"".join(chosen))
        by_source = {}
        for line in chosen:
            s = json.loads(line)["source"].split("/")[0]
            by_source[s] = by_source.get(s, 0) + 1
        print(f"{dst}: {len(chosen)} documents, {sum(map(len, chosen))} bytes, {by_source}")


if __name__ == "__main__":
    main()
