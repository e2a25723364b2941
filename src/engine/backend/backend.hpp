#pragma once
// The op set the transformer forward runs on (DESIGN §1: one model definition, two backends).
//
// Every op is an explicit function of tensors: inputs are const, outputs are passed in (already
// allocated with the shape the op documents, through empty()), nothing is cached between calls.
// That keeps each op a pure map a training backend can pair with an `*_backward` sibling taking
// the same inputs plus the output gradient, and lets a CUDA backend implement the same interface
// (bf16 storage, f32 accumulation). Activations have the backend's activation_dtype() (f32 on the
// CPU, bf16 on CUDA; the CUDA kernels also accept f32, which the op tests use to compare with the
// CPU exactly); weights may be f32/bf16/f16/fp8 (LinearWeight) and small vectors (norm weights,
// biases) any float dtype. Router logits and weights, scales and log-probs are always f32.
// Index tensors (token ids, chosen experts) are I32. Element-wise ops (rms_norm, add, swiglu,
// sigmoid_gate, rope) accept an output that aliases an input (in-place); the others do not.
//
// Shapes use T = tokens of this call, S = keys in the cache (S >= T), H = query heads,
// KV = key/value heads (H % KV == 0), dk = q/k head width, dv = value head width.

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "engine/backend/linear_weight.hpp"
#include "engine/backend/rope_table.hpp"
#include "engine/backend/router.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::backend {

// One routed expert's SwiGLU: down(silu(gate(x)) * up(x)).
struct ExpertWeights {
  LinearWeight gate;  // [inter, hidden]
  LinearWeight up;    // [inter, hidden]
  LinearWeight down;  // [hidden, inter]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string_view name() const = 0;
  // The dtype the model code allocates activations in (hidden states, q/k/v, the KV cache, MLP
  // intermediates). Element-wise ops take inputs and outputs of one dtype; linear may write f32
  // from bf16 inputs (router logits, the LM head).
  virtual DType activation_dtype() const = 0;

  // ---- memory ----
  // A new uninitialized tensor on this backend's device.
  virtual Tensor empty(DType dtype, std::vector<int64_t> shape) = 0;
  // A copy of a host tensor on this backend's device (a view when already there).
  virtual Tensor upload(const Tensor& host) = 0;
  // A host copy (a view when already on the host).
  virtual Tensor download(const Tensor& t) = 0;

  // ---- dense ops ----
  // y[T, out] = x[T, in] · Wᵀ (+ bias). Dispatches on the LinearWeight alternative.
  virtual void linear(const Tensor& x, const LinearWeight& w, Tensor& y) = 0;
  // Row-wise over the last dim D: y = x / sqrt(mean(x²) + eps) * weight; x, y [R, D], weight [D].
  // x and y may have different activation dtypes (the f32 residual stream in, bf16 out).
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) = 0;
  // y[T, hidden] = table[ids[t]]; ids I32 [T], table [vocab, hidden] (any float dtype). Throws a
  // user error for an id outside [0, vocab).
  virtual void embedding(const Tensor& ids, const Tensor& table, Tensor& y) = 0;
  // y = a + b (same shape; y may alias a or b): the residual add. a and y have one dtype; b may
  // differ (a bf16 block output added to the f32 residual stream).
  virtual void add(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // y = silu(gate) * up, all [T, I].
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& y) = 0;
  // y[t, :] = sigmoid(g[t]) * x[t, :]; x, y [T, D], g [T, 1] (qwen2_moe shared-expert gate).
  virtual void sigmoid_gate(const Tensor& x, const Tensor& g, Tensor& y) = 0;
  // Column block copy: dst[r, dst_col + j] = src[r / n, src_col + j] for j < width; src [R, Cs],
  // dst [R·n, Cd] (n >= 1: each source row broadcast to n consecutive destination rows). Splits
  // and concatenations along the last dim (MLA q/k/v assembly; n = heads spreads the shared rope
  // key over every head).
  virtual void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                            int64_t width) = 0;

  // ---- attention ----
  // x, y [T, heads, D]: y = x with dims [offset, offset + table.rotary_dim) of every head rotated
  // at positions first_position + t (pairing from the table); the other dims are copied. offset > 0
  // selects MLA's rope part behind the nope dims; rotary_dim < D - offset is partial rotary.
  virtual void rope(const Tensor& x, const RopeTable& table, int64_t first_position, int64_t offset,
                    Tensor& y) = 0;
  // Causal attention of T new queries against S cached keys (the last T of which are the new
  // tokens): query t sees keys [0, S - T + t]. q [T, H, dk], k [S, KV, dk], v [S, KV, dv],
  // out [T, H, dv]; query head h uses kv head h / (H / KV). P = softmax(q·kᵀ·scale) in f32.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor& out) = 0;

  // ---- mixture of experts ----
  // logits [T, E] (f32) -> experts I32 [T, k], weights f32 [T, k]. correction_bias [E] (any float
  // dtype, or undefined) is added to the scores for selection only.
  virtual void route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
                     Tensor& experts, Tensor& weights) = 0;
  // y[t] = Σ_j weights[t, j] · SwiGLU_{experts[t, j]}(x[t]); x, y [T, hidden]. Each expert runs
  // once over the tokens routed to it (gather, two GEMMs, scatter-add).
  virtual void moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                           std::span<const ExpertWeights> expert_weights, Tensor& y) = 0;
  // Gathers rows: y[i] = x[rows[i]]; rows I32 [N], x [T, D], y [N, D].
  virtual void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) = 0;
  // Weighted scatter-add: y[rows[i]] += scale[i] * x[i]; x [N, D], rows I32 [N], scale f32 [N].
  virtual void scatter_add_rows(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                Tensor& y) = 0;
  // y = 0.
  virtual void fill_zero(Tensor& y) = 0;

  // Drops the per-op times collected so far (the CUDA backend's REFINERY_PROFILE=1 table), so
  // that a benchmark's table covers its timed runs only, not the warm-up. No-op elsewhere.
  virtual void profile_reset() {}

  // ---- LM head ----
  // The k most likely next tokens of every row and their log-softmax over the whole vocabulary:
  // hidden [T, hidden] (activation dtype) · lm_headᵀ [vocab, hidden] -> indices I32 [T, k] (most
  // likely first, ties: lower id first, as eval::top_k_log_probs) and log_probs f32 [T, k].
  // Never holds f32 [T, vocab]: the logits are made and consumed a chunk at a time.
  virtual void log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                                 Tensor& indices, Tensor& log_probs) = 0;
};

// The CPU reference backend (Eigen, OpenMP). `threads` > 0 sets the OpenMP thread count.
std::shared_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace refinery::backend
