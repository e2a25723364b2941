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

#include "engine/backend/kd_loss_options.hpp"
#include "engine/backend/linear_weight.hpp"
#include "engine/backend/rope_table.hpp"
#include "engine/backend/router.hpp"
#include "engine/backend/top_k_sampling.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::backend {

// One routed expert's SwiGLU: down(silu(gate(x)) * up(x)).
// The scalars of one AdamW update (torch.optim.AdamW, see engine/train/adamw.hpp), formed in double
// by the optimizer and held as float by the element kernel, exactly as train::AdamW::step does.
// How a backward op writes one gradient output: kAdd (the convention below: g += ...) or
// kOverwrite (g = ...: the output's previous content is neither read nor kept). Overwriting a
// fresh buffer saves zeroing it and reading the zeros back (training: ~10 GB per step of the 1.4B
// student). The values equal those of kAdd into a zeroed buffer.
enum class GradWrite { kAdd, kOverwrite };

struct AdamWScalars {
  bool decay = false;          // weight_decay != 0
  float decay_factor = 1.0f;   // 1 - lr * weight_decay
  float lerp_weight = 0.1f;    // 1 - beta1
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float bc2_sqrt = 1.0f;       // sqrt(1 - beta2^t)
  float eps = 1e-8f;
  float neg_step_size = 0.0f;  // -(lr / (1 - beta1^t))
  float grad_scale = 1.0f;     // every gradient is multiplied by this first (clip coefficient)
};

// One tensor of Backend::adamw_update_many: the five tensors of adamw_update (flat f32 [n] each;
// compute f32/bf16 [n] or undefined) and the only scalar that differs per tensor, whether weight
// decay applies (off for norms and biases); it replaces AdamWScalars::decay.
struct AdamWTensors {
  Tensor master, grad, exp_avg, exp_avg_sq, compute;
  bool decay = false;
};

// How Backend::group_fake_quantize quantizes (src/quantize/group_quant.hpp).
struct FakeQuantSpec {
  int bits = 4;            // 3, 4 or 8
  int group_size = 128;    // 32, 64 or 128
  bool zero_point = true;  // asymmetric; false: symmetric
  float clip_ratio = 1.0f; // each group clamped to ±clip_ratio·max|v| first (1: no clamp)
};

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
  // The residual add fused with the next RMSNorm (one pass over the residual stream instead of
  // two): x += delta, then out = rms_norm(x, weight, eps) as rms_norm computes it.
  // x f32 [R, D] (the residual stream, updated in place), delta [R, D] in an activation dtype (a
  // block output; bf16 allowed on CUDA like add's b), weight with D values (any float dtype), out
  // [R, D] in an activation dtype (like rms_norm's y). out must not alias x (both results are
  // kept); it may alias delta. Results equal add(x, delta, x) followed by rms_norm(x, weight,
  // eps, out): bit for bit on the CPU; on CUDA the sum of squares runs in the same order as
  // rms_norm's kernel.
  virtual void add_rms_norm(Tensor& x, const Tensor& delta, const Tensor& weight, float eps,
                            Tensor& out) = 0;
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
  // MLA's keys and values from kv_b_proj's output and the shared rope key, H = keys' heads:
  //   keys[t, h, :dn]   = kv[t, h·(dn + dv) + j]          for j < dn,
  //   keys[t, h, dn:]   = rope(k_pe[t]) at position first_position + t % segment_length,
  //   values[t, h, :]   = kv[t, h·(dn + dv) + dn + j]     for j < dv,
  // where k_pe [T, dr] = the last dr columns of ckv (kv_a_proj_with_mqa's output [T, r + dr];
  // dr = table.rotary_dim, rope over all of it). kv [T, H·(dn + dv)], keys [T, H, dn + dr], values
  // [T, H, dv], one dtype. segment_length as rope's (0: L = T). The results equal, bit for bit,
  // copying k_pe out of ckv, rope on it, and three copy_columns (the default does exactly that;
  // CUDA does it in one kernel).
  virtual void mla_assemble_kv(const Tensor& kv, const Tensor& ckv, const RopeTable& table,
                               int64_t first_position, int64_t segment_length, Tensor& keys,
                               Tensor& values);

  // ---- attention ----
  // x, y [T, heads, D]: y = x with dims [offset, offset + table.rotary_dim) of every head rotated
  // at positions first_position + t (pairing from the table); the other dims are copied (not
  // touched when y is x). offset > 0 selects MLA's rope part behind the nope dims; rotary_dim <
  // D - offset is partial rotary.
  // segment_length L > 0: the T rows are T / L sequences side by side (a batched prefill), row t
  // at position first_position + t % L, in one call; L must divide T. 0: one segment (L = T).
  virtual void rope(const Tensor& x, const RopeTable& table, int64_t first_position, int64_t offset,
                    Tensor& y, int64_t segment_length = 0) = 0;
  // Causal attention of T new queries against S cached keys (the last T of which are the new
  // tokens): query t sees keys [0, S - T + t]. q [T, H, dk], k [S, KV, dk], v [S, KV, dv],
  // out [T, H, dv]; query head h uses kv head h / (H / KV). P = softmax(q·kᵀ·scale) in f32.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                         Tensor& out) = 0;
  // attention of whole sequences (S == T, as in training) that also hands back lse, f32 [H, T]:
  // the natural-log log-sum-exp of each query row's scaled scores, log Σ_j exp(q_t·k_j·scale) over
  // the visible keys, for attention_backward to reuse instead of recomputing it. A backend whose
  // kernel does not produce it leaves lse undefined (the default: attention() alone).
  virtual void attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                                  Tensor& out, Tensor& lse);

  // ---- mixture of experts ----
  // logits [T, E] (f32) -> experts I32 [T, k], weights f32 [T, k]. correction_bias [E] (any float
  // dtype, or undefined) is added to the scores for selection only.
  virtual void route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
                     Tensor& experts, Tensor& weights) = 0;
  // y[t] = Σ_j weights[t, j] · SwiGLU_{experts[t, j]}(x[t]); x, y [T, hidden]. Each expert runs
  // once over the tokens routed to it (gather, two GEMMs, scatter-add).
  // accumulate: y[t] += that sum instead (y holds the shared experts' output: no separate add
  // pass); per element y + Σ_j in f32, rounded once to y's dtype.
  virtual void moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                           std::span<const ExpertWeights> expert_weights, Tensor& y,
                           bool accumulate = false) = 0;
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

  // ---- backward (training, DESIGN §4) ----
  // Each op below is the gradient of the forward op of the same name, taking that op's inputs
  // (and, where it says so, its output) plus the gradient of its output, dy.
  // Conventions:
  //  - Every backward op ADDS into the gradients it writes (g += ...), so a tensor used twice
  //    collects the sum of both uses; the caller zeroes gradients first (fill_zero).
  //  - An undefined gradient output (Tensor{}) is skipped: a frozen weight, an input that needs
  //    no gradient.
  //  - Gradient outputs never alias inputs or each other.
  //  - Activation gradients have their activation's dtype (f32 on the CPU; bf16 or f32 on CUDA);
  //    weight gradients (linear weights and biases, norm weights, embedding tables) are always f32
  //    [same shape as the weight], whatever the weight's dtype.
  // The defaults throw an internal error naming the op and the backend.

  // Of linear (dense weights only: a DenseWeight in f32/bf16/f16; other storages are an error):
  // dx[T, in] += dy[T, out] · W;  dw[out, in] += dyᵀ · x;  db[out] += Σ_t dy[t, :].
  // dx_write / dw_write: kOverwrite writes dx / dw instead of adding (db always adds).
  virtual void linear_backward(const Tensor& x, const LinearWeight& w, const Tensor& dy,
                               Tensor& dx, Tensor& dw, Tensor& db,
                               GradWrite dx_write = GradWrite::kAdd,
                               GradWrite dw_write = GradWrite::kAdd);
  // Of rms_norm (x [R, D], weight [D]): with r = 1 / sqrt(mean(x²) + eps) and n = x·r,
  //   dx += r · (dy∘w − n · mean(dy∘w∘n)),   dweight[d] += Σ_rows dy[:, d] · n[:, d].
  // x and dx may be f32 while dy is bf16 (the residual stream), as in the forward.
  virtual void rms_norm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                                 Tensor& dx, Tensor& dweight);
  // rms_norm_backward, then dx_converted = dx (the updated dx) converted to dx_converted's dtype:
  // training's f32 residual gradient goes on as the bf16 dy of the next linear's backward. The
  // default runs the two ops; CUDA writes both from one kernel (no re-read of dx).
  virtual void rms_norm_backward_and_convert(const Tensor& x, const Tensor& weight, float eps,
                                             const Tensor& dy, Tensor& dx, Tensor& dweight,
                                             Tensor& dx_converted);
  // Of embedding: dtable[ids[t], :] += dy[t, :]; dtable f32 [vocab, hidden], dy [T, hidden].
  // Deterministic (the same result for any thread count; no float atomics on the CPU).
  virtual void embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable);
  // Of swiglu: dgate += dy · up · silu'(gate),  dup += dy · silu(gate);
  // silu'(g) = σ(g) · (1 + g · (1 − σ(g))).
  // write: kOverwrite writes dgate and dup instead of adding.
  virtual void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                               Tensor& dgate, Tensor& dup, GradWrite write = GradWrite::kAdd);
  // Of sigmoid_gate: dx[t, :] += σ(g[t]) · dy[t, :];  dg[t] += σ'(g[t]) · Σ_d dy[t, d] · x[t, d].
  virtual void sigmoid_gate_backward(const Tensor& x, const Tensor& g, const Tensor& dy,
                                     Tensor& dx, Tensor& dg);
  // Of copy_columns(src, src_col, dst, dst_col, width) with n = ddst rows / dsrc rows:
  // dsrc[r, src_col + j] += Σ_{i < n} ddst[r·n + i, dst_col + j] for j < width.
  virtual void copy_columns_backward(const Tensor& ddst, int64_t dst_col, Tensor& dsrc,
                                     int64_t src_col, int64_t width);
  // Of rope (x, y [T, heads, D]): dx += Rᵀ · dy, the inverse rotation at the same positions; the
  // dims outside [offset, offset + rotary_dim) pass dy through unchanged.
  // write: kOverwrite writes dx instead of adding. segment_length: as rope's.
  virtual void rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                             int64_t offset, Tensor& dx, GradWrite write = GradWrite::kAdd,
                             int64_t segment_length = 0);
  // Of attention, for whole sequences only (S == T, query t sees keys 0..t): `out` is the
  // forward's output. dq [T, H, dk], dk [T, KV, dk], dv [T, KV, dv] accumulate; a kv head's
  // gradient sums over the H / KV query heads that share it. P is recomputed (nothing is saved
  // by the forward).
  // write: kOverwrite writes dq, dk, dv instead of adding. lse: attention_with_lse's output for
  // these q, k (f32 [H, T]) or undefined; a backend may use it to skip recomputing the row
  // log-sum-exp (CUDA's flash kernels do; the CPU recomputes it).
  virtual void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& dout, float scale, Tensor& dq,
                                  Tensor& dk, Tensor& dv, GradWrite write = GradWrite::kAdd,
                                  const Tensor& lse = Tensor{});
  // Of route, with the selection `experts` [T, k] held fixed (the argmax has no gradient; the
  // correction bias only selects): dlogits[T, E] (f32) += ∂(Σ_j dweights[t, j] · weights[t, j]) /
  // ∂logits[t, :], through the scoring (softmax over all E, or sigmoid), norm_topk_prob and the
  // routed scaling factor of `spec`. dweights f32 [T, k].
  virtual void route_backward(const Tensor& logits, const RouterSpec& spec, const Tensor& experts,
                              const Tensor& dweights, Tensor& dlogits);
  // Of scatter_add_rows(x, rows, scale, y): dx[i, :] += scale[i] · dy[rows[i], :];
  // dscale[i] += Σ_d x[i, d] · dy[rows[i], d] (f32 [N]). (gather_rows' backward is
  // scatter_add_rows of dy with scale 1.)
  virtual void scatter_add_rows_backward(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                         const Tensor& dy, Tensor& dx, Tensor& dscale);

  // ---- training losses and the optimizer ----
  // The distillation loss of every row r of student logits s [R, V] (f32), per src/distill/
  // losses.hpp: teacher either dense (teacher_logits f32 [R, V], ids/log-probs undefined) or
  // sparse top-k (teacher_ids I32 [R, k] + teacher_log_probs f32 [R, k], log-softmax at T = 1
  // over the full vocabulary; teacher_logits undefined), or none at all when kd_weight == 0 (CE
  // only). labels I32 [R]: the next token, or -1 for a row that does not count.
  // Writes row_terms f32 [R, 2] = (D_r, CE_r): the row's divergence (0 without a teacher) and its
  // hard-label cross-entropy -log softmax(s_r)[label] at temperature 1 (both 0 for a row whose
  // label is -1), and grad [R, V] = grad_scale · ∂(kd_weight·T²·D_r + ce_weight·CE_r)/∂s_r
  // (0 for uncounted rows), f32 or the activation dtype (bf16 on CUDA: rounded once, what the LM
  // head's backward reads). An f32 grad may alias student_logits (the logits are consumed). The caller
  // sums row_terms and picks grad_scale = 1 / (counted positions of the whole batch).
  virtual void kd_loss(const Tensor& student_logits, const Tensor& teacher_logits,
                       const Tensor& teacher_ids, const Tensor& teacher_log_probs,
                       const Tensor& labels, const KdLossOptions& options, float grad_scale,
                       Tensor& row_terms, Tensor& grad);
  // A top-k teacher made dense with a prior over its tail (distill/losses.hpp, "tail prior"):
  // for every row r, out[r, ids[r, i]] = log_probs[r, i] (the cached log-softmax at T = 1), and
  // for every other id j: out[r, j] = log P_tail + log_prior[j] − log Σ_{j' uncached} prior[j'],
  // with P_tail = max(1 − Σ_i exp(log_probs[r, i]), kSparseTailFloor) and log_prior f32 [V] a
  // normalized log-distribution over the vocabulary. ids I32 [R, k], log_probs f32 [R, k],
  // out f32 [R, V]: a log-distribution per row, usable as kd_loss's dense teacher_logits.
  virtual void expand_top_k(const Tensor& ids, const Tensor& log_probs, const Tensor& log_prior,
                            Tensor& out);
  // ---- quantization (AWQ's searches, src/quantize/awq.hpp) ----
  // out = Q(w · diag(s)) · diag(s)^-1 with Q the group quantization of src/quantize/
  // group_quant.hpp (AutoAWQ's pseudo_quantize_tensor, fp16-rounded scales; q.bits, q.group_size
  // inputs per scale, asymmetric with a zero point or symmetric), each group first clamped to
  // ±q.clip_ratio · max|v| of its values v (AutoAWQ's clip search; 1 = no clamp). w [out, in] f32
  // or bf16, s f32 [in] or undefined (s = 1), out [out, in] f32 or bf16. A group holding a
  // non-finite value: a user error on the CPU, NaN outputs on CUDA (kernels cannot throw);
  // callers treat both as "not finite".
  virtual void group_fake_quantize(const Tensor& w, const Tensor& s, const FakeQuantSpec& q,
                                   Tensor& out);
  // The clip search's error per output row and quantization group:
  //   err[o, g] = (1/n) Σ_t (Σ_{c in group g} x[t, c] · (q[o, c] − w[o, c]))²
  // x f32 [n, in], q and w f32 [out, in], err f32 [out, in / group_size].
  virtual void group_output_errors(const Tensor& x, const Tensor& q, const Tensor& w,
                                   int group_size, Tensor& err);
  // AWQ's activation statistic, reduced where x lives: sums[c] += Σ_r |x[r, c]| for every column
  // c. x [n, cols] f32 or bf16 (activation dtype), sums f32 [cols]. ADDS (never overwrites), so
  // a caller zeroes sums once and calls this per calibration chunk. Deterministic: the rows are
  // summed in an order fixed by the shapes (not the thread count), in double on the CPU.
  virtual void column_abs_sums(const Tensor& x, Tensor& sums);

  // Σ t² over all elements (f32 or bf16), accumulated in double in an order that does not depend
  // on the thread count (the global gradient norm; deterministic resume).
  virtual double sum_squares(const Tensor& t);
  // Σ (a − b)² over all elements of two tensors of one shape (each f32 or bf16), accumulated in
  // double in fixed chunks like sum_squares (AWQ's search loss: one pass, no difference tensor).
  virtual double sum_squared_difference(const Tensor& a, const Tensor& b);
  // One AdamW step on f32 [n] tensors, per element i exactly as train::AdamW::step with
  // g = grad[i] · s.grad_scale:
  //   w = master[i]; if (s.decay) w *= s.decay_factor;
  //   m = fma(s.lerp_weight, g - exp_avg[i], exp_avg[i]);
  //   v = exp_avg_sq[i] * s.beta2;  v = fma(s.one_minus_beta2 * g, g, v);
  //   master[i] = w + (s.neg_step_size * m) / (sqrt(v) / s.bc2_sqrt + s.eps);
  //   exp_avg[i] = m; exp_avg_sq[i] = v;  compute[i] = master[i] in compute's dtype (bf16 round
  //   to nearest even, or f32) when compute is defined.
  virtual void adamw_update(Tensor& master, const Tensor& grad, Tensor& exp_avg,
                            Tensor& exp_avg_sq, const AdamWScalars& s, Tensor& compute);
  // The multi-tensor forms (one launch each on CUDA instead of one per parameter tensor).
  // sum_squares_many: Σ t² over all elements of all tensors (each f32 or bf16), deterministic run
  // to run; the default is Σ_k sum_squares(tensors[k]) in tensor order (so the CPU result is
  // bitwise that loop), the CUDA op sums fixed chunks in double and adds the chunk partials in a
  // fixed order, which may differ from the loop by rounding only.
  // adamw_update_many: adamw_update(p.master, p.grad, p.exp_avg, p.exp_avg_sq, s with decay =
  // p.decay, p.compute) for every p, bitwise as that loop on every backend; no two entries may
  // share memory.
  virtual double sum_squares_many(std::span<const Tensor> tensors);
  virtual void adamw_update_many(std::span<AdamWTensors> params, const AdamWScalars& s);
  // dst = src converted element-wise (same shape; f32 <-> bf16 <-> f16), on this device.
  virtual void convert(const Tensor& src, Tensor& dst);

  // ---- LM head ----
  // The k most likely next tokens of every row and their log-softmax over the whole vocabulary:
  // hidden [T, hidden] (activation dtype) · lm_headᵀ [vocab, hidden] -> indices I32 [T, k] (most
  // likely first, ties: lower id first, as eval::top_k_log_probs) and log_probs f32 [T, k].
  // Never holds f32 [T, vocab]: the logits are made and consumed a chunk at a time.
  // With sampling.enabled the k ids are instead a priority sample of the row's distribution and
  // log_probs their estimates (priority_sampling.hpp), most likely first.
  virtual void log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                                 const TopKSampling& sampling, Tensor& indices,
                                 Tensor& log_probs) = 0;
};

// The CPU reference backend (Eigen, OpenMP). `threads` > 0 sets the OpenMP thread count.
std::shared_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace refinery::backend
