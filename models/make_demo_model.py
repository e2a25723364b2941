#!/usr/bin/env python3
"""Makes models/demo-tiny-deepseek-v3: a tiny, randomly initialized DeepSeek-V3-architecture model
(MLA, a dense first layer, then MoE layers with shared + routed experts, sigmoid routing with a
score-correction bias and group-limited top-k), saved by transformers' save_pretrained in bf16, with
the Llama-2 tokenizer (vocab 32000) so that the whole directory stays small.

It is the model of the README's demo until a trained teacher ships (see docs/NOTES.md). Its weights are
random: it exercises `refine inspect`, not language. Regenerate with:
    pip install torch transformers && python3 models/make_demo_model.py
"""
import os
import shutil

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "demo-tiny-deepseek-v3")
TOKENIZER = os.path.join(HERE, "..", "data", "tokenizers", "llama-2")

torch.manual_seed(0)
config = DeepseekV3Config(
    vocab_size=32000,
    hidden_size=64,
    intermediate_size=160,          # the dense first layer
    moe_intermediate_size=48,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
model = DeepseekV3ForCausalLM(config)
# A non-zero score-correction bias, so that it is visible in the checkpoint and matters for routing.
with torch.no_grad():
    for layer in model.model.layers[config.first_k_dense_replace:]:
        layer.mlp.gate.e_score_correction_bias.uniform_(-0.1, 0.1)
model = model.to(torch.bfloat16)
if os.path.exists(OUT):
    shutil.rmtree(OUT)
model.save_pretrained(OUT)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(TOKENIZER, name), os.path.join(OUT, name))
print("wrote", OUT, sum(p.numel() for p in model.parameters()), "parameters")
