// The GPU memory estimate: one formula per part, following what the engine allocates.
//
// Notation: T = run.tokens_per_forward, S = max(run.cache_positions, T) (the one cache must hold
// the forward's own rows), b = run.activation_bytes (every float activation and the KV cache are
// stored in it), H = hidden, V = vocab, L = layers. Integer tensors (token ids, expert ids, the
// MoE permutation) are 4 bytes. A dense bf16 linear stages its input x [rows, in] as bf16 before
// the GEMM (linear.cu), 2 bytes per element: "stage(rows x in)" below.
//
// Tensors are plain cudaMalloc allocations freed when their last reference goes (no caching
// allocator), so the memory in use at any moment is the sum of the live tensors. The forward
// (transformer.cpp) keeps x and h [T, H] across the layers; inside layer l the attention block's
// result `a` [T, H] stays live through the MLP block. Everything else is local to one block and
// freed before the next, so the peak is  residual + max over blocks of the block's peak.
#include "engine/model/memory_estimate.hpp"

#include <algorithm>
#include <limits>

#include "engine/core/error.hpp"
#include "engine/core/progress.hpp"

namespace refinery::model {

namespace {

// Shapes beyond this are not a run anyone can make; the bound keeps every product below 2^63.
constexpr int64_t kMaxRunDimension = int64_t{1} << 32;
// Where the RoPE tables start (Transformer's constructor) before they grow by doubling.
constexpr int64_t kInitialRopePositions = 4096;

int64_t with_margin(int64_t bytes) { return bytes + (bytes + 9) / 10; }  // +10%, rounded up

void check_run(const RunShape& run) {
  auto in_range = [](int64_t v, int64_t lo) { return v >= lo && v <= kMaxRunDimension; };
  if (!in_range(run.tokens_per_forward, 1) || !in_range(run.cache_positions, 1) ||
      !in_range(run.logits_chunk_rows, 1) || !in_range(run.top_k, 0) ||
      (run.activation_bytes != 2 && run.activation_bytes != 4))
    throw_internal_error("estimate_memory: invalid run shape: tokens_per_forward ",
                         run.tokens_per_forward, ", cache_positions ", run.cache_positions,
                         ", top_k ", run.top_k, ", logits_chunk_rows ", run.logits_chunk_rows,
                         ", activation_bytes ", run.activation_bytes,
                         " (expected positive counts up to 2^32, top_k >= 0, bytes 2 or 4)");
}

// Byte counts of one forward's tensors for T rows.
struct Sizer {
  int64_t t, b;
  int64_t act(int64_t width) const { return t * width * b; }  // float activation [T, width]
  int64_t stage(int64_t width) const { return t * width * 2; }  // bf16 staging [T, width]
  int64_t ints(int64_t width) const { return t * width * 4; }   // i32 [T, width]
};

// GQA / MHA (transformer_attention.cpp). At o_proj all of these are live:
//   q [T, heads*d], k [T, kv*d], v [T, kv*d], out [T, heads*d], o_proj result [T, H],
//   stage(out) [T, heads*d].  Earlier moments hold a subset (the q/k/v staging is <= `out`).
int64_t gqa_attention_peak(const ModelConfig& c, const Sizer& z) {
  const AttentionConfig& a = c.attention;
  const int64_t q = int64_t{a.num_heads} * a.head_dim, kv = int64_t{a.num_kv_heads} * a.head_dim;
  return z.act(q + 2 * kv + q + c.hidden_size) + z.stage(q);
}

// MLA (transformer_attention.cpp), the larger of three moments:
//   query:  q_a [T, q_lora] + q [T, heads*(nope+rope)] + stage(q_a)   (no LoRA: q + stage(h))
//   kv_b:   q + ckv [T, r+rope] + c [T, r] + k_pe [T, rope] + kv [T, heads*(nope+v)] + stage(c)
//   o_proj: q + ckv + c + k_pe + kv + out [T, heads*v] + o_proj result [T, H] + stage(out)
// (q_a dies with its block before ckv is made; the expanded keys/values go into the KV cache.)
int64_t mla_attention_peak(const ModelConfig& c, const Sizer& z) {
  const AttentionConfig& a = c.attention;
  const int64_t heads = a.num_heads, dn = a.qk_nope_head_dim, dr = a.qk_rope_head_dim,
                dv = a.v_head_dim, r = a.kv_lora_rank;
  const int64_t q = heads * (dn + dr);
  const int64_t query = a.q_lora_rank ? z.act(*a.q_lora_rank + q) + z.stage(*a.q_lora_rank)
                                      : z.act(q) + z.stage(c.hidden_size);
  const int64_t kv_live = z.act(q + (r + dr) + r + dr + heads * (dn + dv));
  const int64_t kv_b = kv_live + z.stage(r);
  const int64_t o_proj = kv_live + z.act(heads * dv + c.hidden_size) + z.stage(heads * dv);
  return std::max({query, kv_b, o_proj});
}

// Dense SwiGLU of width `inter` (transformer_mlp.cpp), at down_proj:
//   a [T, H] + gate [T, I] + up [T, I] + down result [T, H] + stage(gate) [T, I].
int64_t dense_mlp_peak(const ModelConfig& c, int64_t inter, const Sizer& z) {
  return z.act(2 * int64_t{c.hidden_size} + 2 * inter) + z.stage(inter);
}

// MoE block (transformer_mlp.cpp; experts on the CUDA backend in moe.cu). Always live:
//   a [T, H], router logits [T, E], weights [T, k], y [T, H], expert ids i32 [T, k].
// Routed experts, N = T*k pairs: xs (gathered rows) [N, H], gate and up [N, I_e], outs [N, H],
// the permutation (perm_token, pos, perm_scale: 3 x N, offsets T+1, targets T; 4 bytes each), and
// one expert's staging: an expert gets each token at most once, so <= stage([T, max(H, I_e)]).
// Shared experts, after the routed ones are freed: gate, up [T, I_s], down result [T, H],
// stage [T, I_s] (the qwen2_moe gate [T, 1] comes after these are freed).
int64_t moe_peak(const ModelConfig& c, const Sizer& z) {
  const MoeConfig& m = *c.moe;
  const int64_t h = c.hidden_size, e = m.num_experts, k = m.experts_per_token,
                ie = m.expert_intermediate_size, is = m.shared_intermediate_size;
  const int64_t base = z.act(2 * h + e + k) + z.ints(k);
  const int64_t routed = base + z.act(k * (2 * h + 2 * ie)) + z.ints(3 * k + 2) + 4 +
                         z.stage(std::max(h, ie));
  const int64_t shared = is > 0 ? base + z.act(2 * is + h) + z.stage(is) : 0;
  return std::max(routed, shared);
}

// Residual stream and token ids: x, h [T, H] + ids i32 [T], live for the whole forward.
int64_t residual_bytes(const ModelConfig& c, const Sizer& z) {
  return z.act(2 * int64_t{c.hidden_size}) + z.ints(1);
}

int64_t activation_peak(const ModelConfig& c, const Sizer& z) {
  const int64_t attention = c.attention.kind == AttentionKind::kMla ? mla_attention_peak(c, z)
                                                                    : gqa_attention_peak(c, z);
  int64_t mlp = 0;
  const int moe_layers = c.num_moe_layers();
  if (moe_layers < c.num_layers) mlp = dense_mlp_peak(c, c.intermediate_size, z);
  if (moe_layers > 0) mlp = std::max(mlp, moe_peak(c, z));
  return residual_bytes(c, z) + std::max(attention, mlp);
}

// KvCache (kv_cache.cpp): per layer keys [S, kv_heads, dk] and values [S, kv_heads, dv]; MLA
// expands the latent, so kv_heads = heads, dk = nope + rope, dv = v_head_dim. This is a cache
// made at its final capacity (LanguageModel::score does so); a cache that grows by doubling while
// generating briefly holds the old and the new buffers of a layer.
int64_t kv_cache_bytes(const ModelConfig& c, int64_t positions, int64_t b) {
  const AttentionConfig& a = c.attention;
  const int64_t per_position = int64_t{a.num_kv_heads} * (a.head_dim + a.value_head_dim());
  return int64_t{c.num_layers} * positions * per_position * b;
}

// RoPE tables (Transformer::ensure_rope): cos and sin f32 [P, rotary_dim / 2] each, P starting
// at min(max_position_embeddings, 4096) and growing to max(needed, 2 x P) when a run needs more.
int64_t rope_table_bytes(const ModelConfig& c, int64_t positions) {
  const int64_t initial = std::min<int64_t>(std::max(c.max_position_embeddings, 1),
                                            kInitialRopePositions);
  const int64_t p = positions <= initial ? initial : std::max(positions, 2 * initial);
  return 2 * p * (c.rope.rotary_dim / 2) * 4;
}

// LM head: top_k == 0: logits f32 [min(chunk rows, T), V] per chunk (language_model.cpp).
// top_k > 0 (the planned fused top-k): scores f32 [T, min(16384, V)] for one vocabulary chunk,
// plus the outputs, indices i32 and values f32 [T, k].
int64_t logits_bytes(const ModelConfig& c, const RunShape& run) {
  const int64_t t = run.tokens_per_forward, v = c.vocab_size;
  if (run.top_k == 0) return std::min(run.logits_chunk_rows, t) * v * 4;
  const int64_t k = std::min(run.top_k, v);
  return t * std::min(kTopkVocabChunk, v) * 4 + t * k * (4 + 4);
}

std::string padded(std::string s, std::size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

}  // namespace

int64_t MemoryEstimate::total() const {
  return weight_bytes + kv_cache_bytes + activation_bytes + logits_bytes + workspace_bytes;
}

std::string MemoryEstimate::describe() const {
  auto line = [](const char* name, int64_t bytes, const char* what) {
    const std::string amount = human_bytes(static_cast<double>(bytes));
    return str("  ", padded(name, 13), *what != '\0' ? padded(amount, 11) : amount, what, "\n");
  };
  std::string out;
  out += line("weights", weight_bytes, "as stored in the checkpoint");
  out += line("KV cache", kv_cache_bytes, "keys and values of every layer and cache position");
  out += line("activations", activation_bytes, "peak of one forward's transient tensors, +10%");
  out += line("logits", logits_bytes, "LM-head chunk buffers and top-k outputs, +10%");
  out += line("workspace", workspace_bytes, "cuBLAS, kernels, CUDA context slack, RoPE tables");
  out += line("total", total(), "");
  out.pop_back();  // the caller decides what follows the last line
  return out;
}

MemoryEstimate estimate_memory(const ModelConfig& config, int64_t checkpoint_weight_bytes,
                               const RunShape& run) {
  check_run(run);
  if (checkpoint_weight_bytes < 0)
    throw_internal_error("estimate_memory: negative weight bytes ", checkpoint_weight_bytes);
  const int64_t positions = std::max(run.cache_positions, run.tokens_per_forward);
  const Sizer z{run.tokens_per_forward, run.activation_bytes};

  MemoryEstimate e;
  e.weight_bytes = checkpoint_weight_bytes;
  e.kv_cache_bytes = kv_cache_bytes(config, positions, run.activation_bytes);
  e.activation_bytes = with_margin(activation_peak(config, z));
  e.logits_bytes = with_margin(logits_bytes(config, run));
  e.workspace_bytes = kWorkspaceAllowanceBytes + rope_table_bytes(config, positions);
  return e;
}

int64_t checkpoint_weight_bytes(const io::Checkpoint& checkpoint) {
  const uint64_t bytes = checkpoint.total_bytes();
  if (bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw_internal_error(checkpoint.source().string(), ": tensor bytes overflow: ", bytes);
  return static_cast<int64_t>(bytes);
}

void require_memory_fits(const MemoryEstimate& estimate, int64_t free_bytes, int64_t total_bytes,
                         const std::string& device_name) {
  const int64_t need = estimate.total();
  if (need <= free_bytes) return;
  auto hb = [](int64_t bytes) { return human_bytes(static_cast<double>(bytes)); };

  std::string fix;
  if (estimate.weight_bytes + estimate.workspace_bytes > free_bytes) {
    // No run shape helps: the weights themselves do not fit.
    fix = str("the weights alone (", hb(estimate.weight_bytes),
              ") do not fit in the free memory, so a smaller run cannot help: use a GPU with more "
              "memory, or a smaller checkpoint of the model (FP8 instead of bf16, or AWQ INT4 "
              "made with `refine quantize --method awq --bits 4`)");
  } else {
    fix = str("the run needs ", hb(need - free_bytes),
              " less: use a smaller --seq-len or batch (the KV cache, ",
              hb(estimate.kv_cache_bytes), ", and the activations, ", hb(estimate.activation_bytes),
              ", grow with them)");
    if (estimate.logits_bytes * 10 >= need - free_bytes)
      fix += str(", a smaller --top-k (the logits buffers take ", hb(estimate.logits_bytes), ")");
    fix += ", a GPU with more memory, or the FP8/AWQ checkpoint of the model (smaller weights)";
  }
  if (need <= total_bytes)
    fix += str("; ", hb(total_bytes - free_bytes),
               " of this GPU is already in use (by other processes, which nvidia-smi lists, and "
               "this one's CUDA context): freeing it may be enough");
  throw_user_error("not enough GPU memory on ", device_name, ": the model and this run need an "
                   "estimated ", hb(need), " (", need, " bytes), but the device has ", hb(free_bytes),
                   " (", free_bytes, " bytes) free of ", hb(total_bytes), " (", total_bytes,
                   " bytes)\n", estimate.describe(), "\nTo fit: ", fix, ".");
}

}  // namespace refinery::model
