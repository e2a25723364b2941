#pragma once
// Argument validation shared by the CPU and CUDA backends. Each op's shape/dtype/device contract
// is checked once here, so both backends reject the same arguments with the same messages; each
// check returns the sizes it derived, which the backend then uses. Checks only one backend needs
// (e.g. the CUDA kernels' launch limits) stay in that backend, after the shared check.
// All failures are internal errors (REFINERY_CHECK): the model code allocates these tensors.

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend.hpp"

namespace refinery::backend {

// Throws an internal error naming `what` unless `t` is an f32 / i32 tensor on `device` of `shape`.
void require_f32(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                 const char* what);
void require_i32(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                 const char* what);
// An activation tensor: f32 on the CPU; f32 or bf16 on CUDA (the CUDA backend's kernels are
// templated on the activation type and run bf16 by default, see Backend::activation_dtype).
void require_float(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                   const char* what);
// Every tensor of an element-wise op has the same activation dtype.
void require_same_dtype(const Tensor& a, const Tensor& b, const char* what);

// linear: x [T, in] f32, y [T, out] f32 for a defined weight [out, in].
struct LinearSizes {
  int64_t rows, in, out;
};
LinearSizes check_linear(Device device, const Tensor& x, const LinearWeight& w, const Tensor& y);

// rms_norm: x, y [R, D] f32, weight with D values (any float dtype).
struct RowsCols {
  int64_t rows, cols;
};
RowsCols check_rms_norm(Device device, const Tensor& x, const Tensor& weight, const Tensor& y);

// add_rms_norm: x f32 [R, D], delta and out [R, D] (activation dtypes), weight with D values;
// out must not be x's storage.
RowsCols check_add_rms_norm(Device device, const Tensor& x, const Tensor& delta,
                            const Tensor& weight, const Tensor& out);

// add / swiglu: both inputs f32 with y's shape (y's own dtype/device is not checked here).
void check_add(Device device, const Tensor& a, const Tensor& b, const Tensor& y);
void check_swiglu(Device device, const Tensor& gate, const Tensor& up, const Tensor& y);

// sigmoid_gate: x, y [T, D] f32, g [T, 1] f32.
RowsCols check_sigmoid_gate(Device device, const Tensor& x, const Tensor& g, const Tensor& y);

// copy_columns: src [R, Cs], dst [R·n, Cd] (n >= 1); columns [col, col + width) inside both.
// rows = dst rows, repeat = n.
struct CopyColumnsSizes {
  int64_t rows, src_cols, dst_cols, repeat;
};
CopyColumnsSizes check_copy_columns(Device device, const Tensor& src, int64_t src_col,
                                    const Tensor& dst, int64_t dst_col, int64_t width);

// rope: x, y [T, heads, D] f32; rotary dims [offset, offset + r) inside D; segment_length L >= 0
// (0: T) dividing T; positions [first_position, first_position + min(T, L)) inside the table.
// segment = the resolved L (>= 1), row t's position is first_position + t % segment.
struct RopeSizes {
  int64_t t_count, heads, d, rotary, half, segment;
};
RopeSizes check_rope(Device device, const Tensor& x, const RopeTable& table,
                     int64_t first_position, int64_t offset, const Tensor& y,
                     int64_t segment_length = 0);

// mla_assemble_kv: kv [T, H·(dn + dv)], ckv [T, C] (C >= dr), keys [T, H, dn + dr], values
// [T, H, dv], one float dtype; dr = table.rotary_dim (even); positions and segments as rope's.
struct MlaKvSizes {
  int64_t t_count, heads, dn, dr, dv, ckv_cols, segment;
};
MlaKvSizes check_mla_assemble_kv(Device device, const Tensor& kv, const Tensor& ckv,
                                 const RopeTable& table, int64_t first_position,
                                 int64_t segment_length, const Tensor& keys, const Tensor& values);

// attention: q [T, H, dk], k [S, KV, dk], v [S, KV, dv], out [T, H, dv], all f32; H % KV == 0,
// S >= T.
struct AttentionSizes {
  int64_t t_count, heads, dk, s_count, kv_heads, dv;
};
AttentionSizes check_attention(Device device, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out);
// attention_backward's lse: undefined, or f32 [heads, t_count] on `device`.
void check_attention_lse(Device device, const Tensor& lse, int64_t heads, int64_t t_count,
                         const char* op);

// route: logits [T, E] f32, experts [T, k] i32, weights [T, k] f32, 0 < k <= E. The group
// constraints differ between the backends and stay there.
struct RouteSizes {
  int64_t t_count;
  int e_count, k;
};
RouteSizes check_route(Device device, const Tensor& logits, const RouterSpec& spec,
                       const Tensor& experts, const Tensor& weights);

// moe_experts: x, y [T, hidden] f32, experts [T, k] i32, weights [T, k] f32; E = expert count.
struct MoeSizes {
  int64_t t_count, hidden, k, e_count;
};
MoeSizes check_moe(Device device, const Tensor& x, const Tensor& experts, const Tensor& weights,
                   std::span<const ExpertWeights> expert_weights, const Tensor& y);

// gather_rows: x [T, D] f32, rows [n] i32, y [n, D] f32.
// scatter_add_rows: x [n, D] f32, rows [n] i32, scale [n] f32, y [T, D] f32.
// The row indices themselves are checked by the backends (they live on the backend's device).
struct RowsSizes {
  int64_t n, t_count, d;
};
RowsSizes check_gather_rows(Device device, const Tensor& x, const Tensor& rows, const Tensor& y);
RowsSizes check_scatter_add_rows(Device device, const Tensor& x, const Tensor& rows,
                                 const Tensor& scale, const Tensor& y);

// log_softmax_top_k: hidden [T, in] activations, indices I32 [T, k], log_probs f32 [T, k],
// 0 < k <= vocab.
struct TopKSizes {
  int64_t rows, vocab, k;
};
TopKSizes check_log_softmax_top_k(Device device, const Tensor& hidden, const LinearWeight& lm_head,
                                  int64_t k, const Tensor& indices, const Tensor& log_probs);

// The content of top-k teacher rows (host arrays ids [rows, k], log-probs [rows, k]): k in
// [1, vocab], ids in [0, vocab) and distinct within a row, log-probs finite. Unlike the checks
// above these are USER errors naming `what` (the rows come from a logit cache file).
void check_top_k_rows(const int32_t* ids, const float* log_probs, int64_t rows, int64_t k,
                      int64_t vocab, const char* what);

}  // namespace refinery::backend
