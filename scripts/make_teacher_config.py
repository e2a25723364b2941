#!/usr/bin/env python3
"""Writes the configs of the teacher we train and of its quarter-size dense student, and counts their
parameters exactly with transformers.

Generator script: the project never runs Python; the committed outputs are what the C++ side reads.
Needs `pip install torch transformers` (made with transformers 5.24.0, torch 2.15).

    python3 scripts/make_teacher_config.py [--save-random DIR]

Writes
  models/refinery-teacher-moe/config.json   DeepSeek-V3 architecture (transformers' deepseek_v3),
                                            vocab of data/tokenizers/refinery-8k
  models/configs/student-dense-quarter.json llama, ~1/4 of the teacher's active parameters
  models/refinery-teacher-moe/param_counts.json  the counts below (both models)

Counting: the models are instantiated on the meta device (no memory) and every parameter's numel
summed. "active" = parameters one token passes through: everything except the routed experts, plus
top-k / n_routed_experts of them (the router, shared expert, attention, norms, embedding and lm_head
all count). The score-correction biases are buffers in transformers, not parameters; they are in the
checkpoint (float32, n_routed_experts per MoE layer) and are counted separately.

--save-random DIR also saves both models with random weights (bf16, save_pretrained) under DIR, so
that `refine inspect` can be checked against these counts.
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
TEACHER_DIR = ROOT / "models" / "refinery-teacher-moe"
STUDENT_JSON = ROOT / "models" / "configs" / "student-dense-quarter.json"
TOKENIZER = ROOT / "data" / "tokenizers" / "refinery-8k" / "tokenizer.json"


def vocab_size():
    j = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    ids = set(j["model"]["vocab"].values()) | {t["id"] for t in j["added_tokens"]}
    assert ids == set(range(len(ids))), "token ids are not contiguous"
    return len(ids)


def teacher_config(vocab):
    return DeepseekV3Config(
        vocab_size=vocab,
        hidden_size=256,
        num_hidden_layers=8,
        first_k_dense_replace=1,        # layer 0 dense SwiGLU, layers 1..7 MoE
        intermediate_size=768,          # the dense layer's width (3 x hidden)
        # MLA: 4 heads, q LoRA 128, compressed KV latent 64 + one shared RoPE key of 16
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_nope_head_dim=48,
        qk_rope_head_dim=16,
        v_head_dim=64,
        # MoE: 16 routed experts of width 48, top-4 within the best 2 of 4 groups, 1 shared expert
        n_routed_experts=16,
        moe_intermediate_size=48,
        num_experts_per_tok=4,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rope_interleave=True,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        num_nextn_predict_layers=0,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        dtype="bfloat16",
    )


def student_config(vocab):
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        intermediate_size=384,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,       # the embedding would otherwise be more than the quarter budget
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        dtype="bfloat16",
    )


def count(model_class, config):
    with torch.device("meta"):
        model = model_class(config)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    routed = sum(p.numel() for n, p in params.items() if ".mlp.experts." in n)
    experts = getattr(config, "n_routed_experts", None)
    active = total - routed + (routed * config.num_experts_per_tok // experts if experts else 0)
    if experts:
        assert routed % experts == 0
    embedding = model.get_input_embeddings().weight.numel()
    head = 0 if config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    return {
        "params_total": total,
        "params_active": active,
        "params_routed_experts": routed,
        "params_embedding_and_head": embedding + head,
        "params_total_non_embedding": total - embedding - head,
        "params_active_non_embedding": active - embedding - head,
        "score_correction_bias_values": buffers,
        "bf16_bytes_of_params": 2 * total,
        "checkpoint_bytes_estimate": 2 * total + 4 * buffers,
    }


def save_config(config, architecture, path):
    """config.json as save_pretrained writes it (only the fields that differ from PretrainedConfig's)."""
    config.architectures = [architecture]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "config.json", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-random", help="also save random-weight bf16 models under this folder")
    args = ap.parse_args()
    vocab = vocab_size()
    teacher, student = teacher_config(vocab), student_config(vocab)
    save_config(teacher, "DeepseekV3ForCausalLM", TEACHER_DIR / "config.json")
    save_config(student, "LlamaForCausalLM", STUDENT_JSON)
    tc, sc = count(DeepseekV3ForCausalLM, teacher), count(LlamaForCausalLM, student)
    counts = {
        "transformers_version": transformers.__version__,
        "teacher": tc,
        "student_dense_quarter": sc,
        "student_over_teacher_active": round(sc["params_total"] / tc["params_active"], 4),
        "student_over_teacher_active_non_embedding":
            round(sc["params_total_non_embedding"] / tc["params_active_non_embedding"], 4),
    }
    (TEACHER_DIR / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(counts, indent=2))
    if args.save_random:
        torch.manual_seed(0)
        out = Path(args.save_random)
        for name, cls, cfg in (("teacher", DeepseekV3ForCausalLM, teacher), ("student", LlamaForCausalLM, student)):
            model = cls(cfg).to(torch.bfloat16)
            model.save_pretrained(out / name)
            print(f"saved random {name} to {out / name}")


if __name__ == "__main__":
    main()
