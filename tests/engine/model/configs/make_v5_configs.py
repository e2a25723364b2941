#!/usr/bin/env python3
"""Fixture generator (run by hand; the C++ tests only read its outputs, which are committed).

1. mixtral_8x7b_instruct_awq.json: mixtral_8x7b_v0_1.json plus the AutoAWQ GEMM
   `quantization_config` that TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ publishes.
2. v5/*.json: the real 4.x configs of this folder, loaded and re-saved by transformers 5.x, so that
   they carry what 5.x writes (`rope_parameters` holding rope_theta, `dtype` instead of
   `torch_dtype`, ...). Needs transformers >= 5.

Usage: python3 make_v5_configs.py   (from this folder)
"""
import json
import pathlib
import tempfile

import transformers
from transformers import AutoConfig

HERE = pathlib.Path(__file__).resolve().parent


def make_awq():
    d = json.loads((HERE / "mixtral_8x7b_v0_1.json").read_text())
    d["quantization_config"] = {"bits": 4, "group_size": 128, "modules_to_not_convert": ["gate"],
                                "quant_method": "awq", "version": "gemm", "zero_point": True}
    d["torch_dtype"] = "float16"
    (HERE / "mixtral_8x7b_instruct_awq.json").write_text(json.dumps(d, indent=2, sort_keys=True))


def make_v5():
    assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__
    out = HERE / "v5"
    out.mkdir(exist_ok=True)
    for name in ["deepseek_v3", "deepseek_v2_lite", "llama_3_1_8b", "qwen3_30b_a3b", "mixtral_8x7b_v0_1",
                 "qwen1_5_moe_a2_7b"]:
        with tempfile.TemporaryDirectory() as tmp:
            src = pathlib.Path(tmp) / "config.json"
            d = json.loads((HERE / f"{name}.json").read_text())
            d.pop("auto_map", None)  # use the built-in class, not remote code
            src.write_text(json.dumps(d))
            cfg = AutoConfig.from_pretrained(tmp)
            cfg.save_pretrained(tmp)
            (out / f"{name}.json").write_text(src.read_text())
        print("wrote", out / f"{name}.json")


if __name__ == "__main__":
    make_awq()
    make_v5()
