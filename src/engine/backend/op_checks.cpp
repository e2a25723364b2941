// Shared argument checks of the backend ops (see op_checks.hpp).
#include "engine/backend/op_checks.hpp"

#include <algorithm>
#include <cmath>

namespace refinery::backend {

namespace {
// The CUDA messages name the device so that a host tensor passed to a device op is obvious.
const char* device_note(Device device) { return device == Device::kCUDA ? " (cuda)" : ""; }
}  // namespace

void require_f32(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                 const char* what) {
  REFINERY_CHECK(
      t.defined() && t.device() == device && t.dtype() == DType::kF32 && t.shape() == shape,
      what, ": expected f32", shape_to_string(shape), device_note(device), ", found ",
      t.describe());
}

void require_i32(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                 const char* what) {
  REFINERY_CHECK(
      t.defined() && t.device() == device && t.dtype() == DType::kI32 && t.shape() == shape,
      what, ": expected i32", shape_to_string(shape), device_note(device), ", found ",
      t.describe());
}

void require_float(Device device, const Tensor& t, const std::vector<int64_t>& shape,
                   const char* what) {
  const bool dtype_ok = t.defined() && (t.dtype() == DType::kF32 ||
                                        (device == Device::kCUDA && t.dtype() == DType::kBF16));
  REFINERY_CHECK(dtype_ok && t.device() == device && t.shape() == shape, what, ": expected ",
                 device == Device::kCUDA ? "f32 or bf16" : "f32", shape_to_string(shape),
                 device_note(device), ", found ", t.describe());
}

void require_same_dtype(const Tensor& a, const Tensor& b, const char* what) {
  REFINERY_CHECK(a.dtype() == b.dtype(), what, ": tensors of one dtype expected, found ",
                 a.describe(), " and ", b.describe());
}

LinearSizes check_linear(Device device, const Tensor& x, const LinearWeight& w, const Tensor& y) {
  REFINERY_CHECK(w.defined(), "linear: undefined weight ", w.name);
  REFINERY_CHECK(x.ndim() == 2, "linear ", w.name, ": x must be [T, in], found ", x.describe());
  const int64_t rows = x.size(0), in = w.in_features(), out = w.out_features();
  require_float(device, x, {rows, in}, w.name.c_str());
  require_float(device, y, {rows, out}, w.name.c_str());
  return {rows, in, out};
}

RowsCols check_rms_norm(Device device, const Tensor& x, const Tensor& weight, const Tensor& y) {
  REFINERY_CHECK(x.ndim() == 2, "rms_norm x must be [R, D], found ", x.describe());
  const int64_t rows = x.size(0), d = x.size(1);
  require_float(device, x, {rows, d}, "rms_norm x");
  require_float(device, y, {rows, d}, "rms_norm y");
  REFINERY_CHECK(weight.numel() == d, "rms_norm weight must have ", d, " elements, found ",
                 weight.describe());
  return {rows, d};
}

RowsCols check_add_rms_norm(Device device, const Tensor& x, const Tensor& delta,
                            const Tensor& weight, const Tensor& out) {
  REFINERY_CHECK(x.ndim() == 2, "add_rms_norm x must be [R, D], found ", x.describe());
  const int64_t rows = x.size(0), d = x.size(1);
  require_f32(device, x, {rows, d}, "add_rms_norm x (the residual stream)");
  require_float(device, delta, {rows, d}, "add_rms_norm delta");
  require_float(device, out, {rows, d}, "add_rms_norm out");
  REFINERY_CHECK(weight.numel() == d, "add_rms_norm weight must have ", d, " elements, found ",
                 weight.describe());
  const auto* xb = static_cast<const std::byte*>(x.data());
  const auto* ob = static_cast<const std::byte*>(out.data());
  const bool disjoint = ob + out.nbytes() <= xb || xb + x.nbytes() <= ob;
  REFINERY_CHECK(x.nbytes() == 0 || disjoint, "add_rms_norm: out ", out.describe(),
                 " overlaps x ", x.describe(), " (x keeps the sum, out the normed rows)");
  return {rows, d};
}

void check_add(Device device, const Tensor& a, const Tensor& b, const Tensor& y) {
  require_float(device, a, y.shape(), "add a");
  require_float(device, b, y.shape(), "add b");
  require_same_dtype(a, y, "add");
}

void check_swiglu(Device device, const Tensor& gate, const Tensor& up, const Tensor& y) {
  require_float(device, gate, y.shape(), "swiglu gate");
  require_float(device, up, y.shape(), "swiglu up");
  require_same_dtype(gate, y, "swiglu");
  require_same_dtype(up, y, "swiglu");
}

RowsCols check_sigmoid_gate(Device device, const Tensor& x, const Tensor& g, const Tensor& y) {
  REFINERY_CHECK(x.ndim() == 2, "sigmoid_gate x must be [T, D], found ", x.describe());
  const int64_t rows = x.size(0), d = x.size(1);
  require_float(device, x, {rows, d}, "sigmoid_gate x");
  require_float(device, g, {rows, 1}, "sigmoid_gate g");
  require_float(device, y, {rows, d}, "sigmoid_gate y");
  require_same_dtype(x, y, "sigmoid_gate");
  require_same_dtype(g, y, "sigmoid_gate");
  return {rows, d};
}

CopyColumnsSizes check_copy_columns(Device device, const Tensor& src, int64_t src_col,
                                    const Tensor& dst, int64_t dst_col, int64_t width) {
  REFINERY_CHECK(src.ndim() == 2 && dst.ndim() == 2 &&
                     (src.size(0) == 0 ? dst.size(0) == 0 : dst.size(0) % src.size(0) == 0),
                 "copy_columns: [R, C] source and [R·n, C] destination expected, found ",
                 src.describe(), " and ", dst.describe());
  const int64_t rows = dst.size(0), cs = src.size(1), cd = dst.size(1);
  const int64_t repeat = src.size(0) == 0 ? 1 : rows / src.size(0);
  REFINERY_CHECK(
      src_col >= 0 && dst_col >= 0 && width >= 0 && src_col + width <= cs && dst_col + width <= cd,
      "copy_columns: columns out of range");
  require_float(device, src, {src.size(0), cs}, "copy_columns src");
  require_float(device, dst, {rows, cd}, "copy_columns dst");
  require_same_dtype(src, dst, "copy_columns");
  return {rows, cs, cd, repeat};
}

namespace {
// The segment length of rope-like ops (0: one segment of all t_count rows) and the table rows
// they read, [first_position, first_position + min(T, L)). Returns L (>= 1).
int64_t check_rope_positions(const RopeTable& table, int64_t t_count, int64_t first_position,
                             int64_t segment_length, const char* op) {
  REFINERY_CHECK(segment_length >= 0 && (segment_length == 0 || t_count % segment_length == 0),
                 op, ": segment length ", segment_length, " does not divide ", t_count, " rows");
  const int64_t segment = segment_length == 0 ? std::max<int64_t>(t_count, 1) : segment_length;
  const int64_t last = first_position + std::min(t_count, segment);
  REFINERY_CHECK(first_position >= 0 && last <= table.positions(), op, ": positions up to ", last,
                 " but the table has ", table.positions());
  return segment;
}
}  // namespace

RopeSizes check_rope(Device device, const Tensor& x, const RopeTable& table,
                     int64_t first_position, int64_t offset, const Tensor& y,
                     int64_t segment_length) {
  REFINERY_CHECK(x.ndim() == 3, "rope x must be [T, heads, D], found ", x.describe());
  const int64_t t_count = x.size(0), heads = x.size(1), d = x.size(2);
  const int64_t r = table.rotary_dim, half = r / 2;
  require_float(device, x, {t_count, heads, d}, "rope x");
  require_float(device, y, {t_count, heads, d}, "rope y");
  require_same_dtype(x, y, "rope");
  REFINERY_CHECK(offset >= 0 && offset + r <= d, "rope: rotary dims [", offset, ", ", offset + r,
                 ") exceed the head width ", d);
  const int64_t segment =
      check_rope_positions(table, t_count, first_position, segment_length, "rope");
  return {t_count, heads, d, r, half, segment};
}

MlaKvSizes check_mla_assemble_kv(Device device, const Tensor& kv, const Tensor& ckv,
                                 const RopeTable& table, int64_t first_position,
                                 int64_t segment_length, const Tensor& keys, const Tensor& values) {
  REFINERY_CHECK(kv.ndim() == 2 && ckv.ndim() == 2 && keys.ndim() == 3 && values.ndim() == 3,
                 "mla_assemble_kv: kv [T, H·(dn + dv)], ckv [T, C], keys [T, H, dk], values "
                 "[T, H, dv] expected, found ",
                 kv.describe(), ", ", ckv.describe(), ", ", keys.describe(), ", ",
                 values.describe());
  const int64_t t_count = kv.size(0), heads = keys.size(1), dv = values.size(2);
  const int64_t dr = table.rotary_dim, dk = keys.size(2), dn = dk - dr, ckv_cols = ckv.size(1);
  REFINERY_CHECK(dr > 0 && dr % 2 == 0 && dn >= 0 && ckv_cols >= dr,
                 "mla_assemble_kv: rope width ", dr, " does not fit keys ", keys.describe(),
                 " and ckv ", ckv.describe());
  require_float(device, kv, {t_count, heads * (dn + dv)}, "mla_assemble_kv kv");
  require_float(device, ckv, {t_count, ckv_cols}, "mla_assemble_kv ckv");
  require_float(device, keys, {t_count, heads, dk}, "mla_assemble_kv keys");
  require_float(device, values, {t_count, heads, dv}, "mla_assemble_kv values");
  require_same_dtype(kv, ckv, "mla_assemble_kv");
  require_same_dtype(kv, keys, "mla_assemble_kv");
  require_same_dtype(kv, values, "mla_assemble_kv");
  const int64_t segment =
      check_rope_positions(table, t_count, first_position, segment_length, "mla_assemble_kv");
  return {t_count, heads, dn, dr, dv, ckv_cols, segment};
}

AttentionSizes check_attention(Device device, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out) {
  REFINERY_CHECK(q.ndim() == 3 && k.ndim() == 3 && v.ndim() == 3,
                 "attention: 3-D q, k, v expected");
  const int64_t t_count = q.size(0), heads = q.size(1), dk = q.size(2);
  const int64_t s_count = k.size(0), kv_heads = k.size(1), dv = v.size(2);
  require_float(device, q, {t_count, heads, dk}, "attention q");
  require_float(device, k, {s_count, kv_heads, dk}, "attention k");
  require_float(device, v, {s_count, kv_heads, dv}, "attention v");
  require_float(device, out, {t_count, heads, dv}, "attention out");
  require_same_dtype(q, k, "attention");
  require_same_dtype(q, v, "attention");
  require_same_dtype(q, out, "attention");
  REFINERY_CHECK(kv_heads > 0 && heads % kv_heads == 0, "attention: ", heads, " query heads over ",
                 kv_heads, " kv heads");
  REFINERY_CHECK(s_count >= t_count, "attention: ", s_count, " keys for ", t_count, " queries");
  return {t_count, heads, dk, s_count, kv_heads, dv};
}

void check_attention_lse(Device device, const Tensor& lse, int64_t heads, int64_t t_count,
                         const char* op) {
  if (lse.defined()) require_f32(device, lse, {heads, t_count}, str(op, " lse").c_str());
}

RouteSizes check_route(Device device, const Tensor& logits, const RouterSpec& spec,
                       const Tensor& experts, const Tensor& weights) {
  const int64_t t_count = logits.size(0);
  const int e_count = spec.num_experts, k = spec.top_k;
  require_f32(device, logits, {t_count, e_count}, "route logits");
  require_i32(device, experts, {t_count, k}, "route experts");
  require_f32(device, weights, {t_count, k}, "route weights");
  REFINERY_CHECK(k > 0 && k <= e_count, "route: top-k ", k, " of ", e_count, " experts");
  return {t_count, e_count, k};
}

MoeSizes check_moe(Device device, const Tensor& x, const Tensor& experts, const Tensor& weights,
                   std::span<const ExpertWeights> expert_weights, const Tensor& y) {
  const int64_t t_count = x.size(0), hidden = x.size(1), k = experts.size(1);
  const int64_t e_count = static_cast<int64_t>(expert_weights.size());
  require_float(device, x, {t_count, hidden}, "moe x");
  require_i32(device, experts, {t_count, k}, "moe experts");
  require_f32(device, weights, {t_count, k}, "moe weights");
  require_float(device, y, {t_count, hidden}, "moe y");
  require_same_dtype(x, y, "moe");
  return {t_count, hidden, k, e_count};
}

RowsSizes check_gather_rows(Device device, const Tensor& x, const Tensor& rows, const Tensor& y) {
  const int64_t n = rows.numel(), t_count = x.size(0), d = x.size(1);
  require_float(device, x, {t_count, d}, "gather_rows x");
  require_i32(device, rows, {n}, "gather_rows rows");
  require_float(device, y, {n, d}, "gather_rows y");
  require_same_dtype(x, y, "gather_rows");
  return {n, t_count, d};
}

RowsSizes check_scatter_add_rows(Device device, const Tensor& x, const Tensor& rows,
                                 const Tensor& scale, const Tensor& y) {
  const int64_t n = rows.numel(), d = x.size(1), t_count = y.size(0);
  require_float(device, x, {n, d}, "scatter_add_rows x");
  require_i32(device, rows, {n}, "scatter_add_rows rows");
  require_f32(device, scale, {n}, "scatter_add_rows scale");
  require_float(device, y, {t_count, d}, "scatter_add_rows y");
  require_same_dtype(x, y, "scatter_add_rows");
  return {n, t_count, d};
}

TopKSizes check_log_softmax_top_k(Device device, const Tensor& hidden, const LinearWeight& lm_head,
                                  int64_t k, const Tensor& indices, const Tensor& log_probs) {
  REFINERY_CHECK(lm_head.defined(), "log_softmax_top_k: undefined lm_head");
  REFINERY_CHECK(hidden.ndim() == 2, "log_softmax_top_k: hidden must be [T, in], found ",
                 hidden.describe());
  const int64_t rows = hidden.size(0), vocab = lm_head.out_features();
  require_float(device, hidden, {rows, lm_head.in_features()}, "log_softmax_top_k hidden");
  REFINERY_CHECK(k > 0 && k <= vocab, "log_softmax_top_k: k = ", k, " for a vocabulary of ",
                 vocab);
  require_i32(device, indices, {rows, k}, "log_softmax_top_k indices");
  require_f32(device, log_probs, {rows, k}, "log_softmax_top_k log_probs");
  return {rows, vocab, k};
}

void check_top_k_rows(const int32_t* ids, const float* log_probs, int64_t rows, int64_t k,
                      int64_t vocab, const char* what) {
  if (k < 1 || k > vocab)
    throw_user_error(what, ": the teacher cache has top-k = ", k, ", expected 1 <= k <= vocab (",
                     vocab, "); the cache was made for another vocabulary or is damaged");
  std::vector<uint8_t> seen(static_cast<std::size_t>(vocab), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = ids + r * k;
    for (int64_t i = 0; i < k; ++i) {
      if (row[i] < 0 || row[i] >= vocab)
        throw_user_error(what, ": teacher id ", i, " of row ", r, " is ", row[i],
                         ", expected a token id in [0, ", vocab,
                         "); the logit cache does not match the student's vocabulary");
      if (seen[row[i]])
        throw_user_error(what, ": teacher id ", row[i], " appears twice in row ", r,
                         " of the top-k cache; the cache is damaged, regenerate it with refine "
                         "logits");
      seen[row[i]] = 1;
      if (!std::isfinite(log_probs[r * k + i]))
        throw_user_error(what, ": teacher log-prob ", i, " of row ", r, " is ",
                         log_probs[r * k + i],
                         ", expected a finite log-probability; the cache is damaged");
    }
    for (int64_t i = 0; i < k; ++i) seen[row[i]] = 0;
  }
}

}  // namespace refinery::backend
