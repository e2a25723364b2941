#!/usr/bin/env python3
"""Fixture generator: the parameter counts transformers itself reports for each config here.

Instantiates every model on the `meta` device (no memory, no weights), then writes
expected_param_counts.json: {file: {"num_parameters": model.num_parameters(), "by_name": {...}}}
where by_name sums parameters over a few name patterns, so the C++ per-component counts can be
checked against transformers exactly. `quantization_config` is dropped (the logical parameter
count does not depend on storage). Needs torch and transformers (5.x here).
"""
import json
import pathlib
import re
import tempfile

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

HERE = pathlib.Path(__file__).resolve().parent
TENSOR_LISTS = ["mixtral_8x7b_v0_1", "qwen1_5_moe_a2_7b", "deepseek_v3", "qwen3_8b"]
FILES = ["deepseek_v3", "deepseek_v2_lite", "llama_3_1_8b", "mistral_7b_instruct_v0_3", "qwen2_5_7b",
         "qwen3_8b", "qwen3_30b_a3b", "mixtral_8x7b_v0_1", "qwen1_5_moe_a2_7b"]


def bucket(name):
    if name == "model.embed_tokens.weight":
        return "embedding"
    if name == "lm_head.weight":
        return "lm_head"
    if "norm" in name and "proj" not in name:
        return "norms"
    if ".self_attn." in name:
        return "attention"
    if "shared_expert_gate" in name:
        return "shared_experts"  # the qwen2_moe shared-expert gate belongs to the shared expert
    if ".shared_expert" in name:
        return "shared_experts"
    if ".experts." in name:
        return "routed_experts"
    if re.search(r"\.mlp\.gate\.", name) or name.endswith(".mlp.gate.weight") or ".gate.e_score" in name:
        return "routers"
    if ".mlp." in name:
        return "dense_mlp"
    return "other:" + name


def main():
    out = {"transformers_version": transformers.__version__}
    for name in FILES:
        d = json.loads((HERE / f"{name}.json").read_text())
        d.pop("auto_map", None)
        d.pop("quantization_config", None)
        with tempfile.TemporaryDirectory() as tmp:
            (pathlib.Path(tmp) / "config.json").write_text(json.dumps(d))
            cfg = AutoConfig.from_pretrained(tmp)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        by = {}
        for pname, p in model.named_parameters(remove_duplicate=False):
            by[bucket(pname)] = by.get(bucket(pname), 0) + p.numel()
        # e_score_correction_bias is a buffer in transformers, a tensor in the checkpoint
        buffers = sum(b.numel() for n, b in model.named_buffers() if "e_score_correction_bias" in n)
        out[name] = {"num_parameters": model.num_parameters(), "by_name": by,
                     "e_score_correction_bias_buffer": buffers}
        if name in TENSOR_LISTS:
            # transformers 5.x's own parameter names and shapes (fused experts), plus buffers that
            # checkpoints store: exercises the checkpoint tally on fused names.
            tensors = [[n, list(p.shape)] for n, p in model.named_parameters()]
            tensors += [[n, list(b.shape)] for n, b in model.named_buffers() if "e_score_correction_bias" in n]
            (HERE / f"tensors_v5_{name}.json").write_text(json.dumps(tensors) + "\n")
        print(name, out[name])
    (HERE / "expected_param_counts.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
