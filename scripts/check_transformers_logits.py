#!/usr/bin/env python3
"""Checks that a model directory written by refine (a distilled student, a pruned or trained MoE)
loads in Hugging Face transformers and gives the logits refine gives.

    refine logits MODEL --data F --out ref.h5 --top-k 0 --seq-len L --device cpu   # full logits
    python3 scripts/check_transformers_logits.py MODEL ref.h5 [--sequences N] [--device cuda]

Reads the first N sequences of the cache (token ids and refine's f32 logits), runs
AutoModelForCausalLM in float32 on the same ids and prints one JSON line: the largest absolute
log-probability difference, the mean KL(refine || transformers) per position and the top-1
agreement. Exits 1 when mean KL > --max-kl or agreement < --min-top1. A verification tool for the
GPU machine (transformers lives there); the project itself does not need Python.
"""
import argparse
import json
import sys

import h5py
import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("cache", help="a full-logits cache from `refine logits --top-k 0`")
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-kl", type=float, default=1e-4)
    ap.add_argument("--min-top1", type=float, default=0.99)
    a = ap.parse_args()

    with h5py.File(a.cache, "r") as f:
        if "logits" not in f:
            print("the cache holds top-k rows; make it with --top-k 0", file=sys.stderr)
            return 2
        offsets = f["seq_offsets"][:]
        n = min(a.sequences, len(offsets) - 1)
        end = int(offsets[n])
        ids = f["token_ids"][:end].astype(np.int64)
        ref = torch.from_numpy(f["logits"][:end].astype(np.float32))

    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    model.to(a.device).eval()
    ours = []
    with torch.no_grad():
        for s in range(n):
            seq = torch.from_numpy(ids[offsets[s]:offsets[s + 1]]).to(a.device)[None, :]
            ours.append(model(seq).logits[0].float().cpu())
    ours = torch.cat(ours)

    lp_ref = torch.log_softmax(ref.double(), dim=-1)
    lp_hf = torch.log_softmax(ours.double(), dim=-1)
    kl = (lp_ref.exp() * (lp_ref - lp_hf)).sum(-1)
    result = {
        "model": a.model,
        "architecture": model.config.architectures[0] if model.config.architectures else "",
        "positions": int(end),
        "max_abs_logprob_diff": float((lp_ref - lp_hf).abs().max()),
        "mean_kl": float(kl.mean()),
        "top1_agreement": float((lp_ref.argmax(-1) == lp_hf.argmax(-1)).double().mean()),
        "device": a.device,
        "transformers_dtype": "float32",
    }
    print(json.dumps(result))
    ok = result["mean_kl"] <= a.max_kl and result["top1_agreement"] >= a.min_top1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
