// The defaults of the Backend's training ops: a backend that lacks one says so by name; the
// multi-tensor optimizer ops loop over their single-tensor forms.
#include "engine/backend/backend.hpp"

#include "engine/backend/op_checks.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend {

namespace {
[[noreturn]] void missing(const Backend& be, const char* op) {
  throw_internal_error(op, " is not implemented on the ", be.name(), " backend");
}
}  // namespace

void Backend::linear_backward(const Tensor&, const LinearWeight&, const Tensor&, Tensor&, Tensor&,
                              Tensor&, GradWrite, GradWrite) {
  missing(*this, "linear_backward");
}
void Backend::rms_norm_backward_and_convert(const Tensor& x, const Tensor& weight, float eps,
                                            const Tensor& dy, Tensor& dx, Tensor& dweight,
                                            Tensor& dx_converted) {
  rms_norm_backward(x, weight, eps, dy, dx, dweight);
  convert(dx, dx_converted);
}
void Backend::rms_norm_backward(const Tensor&, const Tensor&, float, const Tensor&, Tensor&,
                                Tensor&) {
  missing(*this, "rms_norm_backward");
}
void Backend::embedding_backward(const Tensor&, const Tensor&, Tensor&) {
  missing(*this, "embedding_backward");
}
void Backend::swiglu_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                              GradWrite) {
  missing(*this, "swiglu_backward");
}
void Backend::sigmoid_gate_backward(const Tensor&, const Tensor&, const Tensor&, Tensor&,
                                    Tensor&) {
  missing(*this, "sigmoid_gate_backward");
}
void Backend::copy_columns_backward(const Tensor&, int64_t, Tensor&, int64_t, int64_t) {
  missing(*this, "copy_columns_backward");
}
void Backend::attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                                 Tensor& out, Tensor& lse) {
  attention(q, k, v, scale, out);
  lse = Tensor{};
}
void Backend::rope_backward(const Tensor&, const RopeTable&, int64_t, int64_t, Tensor&, GradWrite,
                            int64_t) {
  missing(*this, "rope_backward");
}
// The reference sequence (what the MLA forward ran before the fused op): k_pe out of ckv, rope on
// it, then the nope keys, the values and the broadcast rope key as three column copies over the
// (token, head) rows.
void Backend::mla_assemble_kv(const Tensor& kv, const Tensor& ckv, const RopeTable& table,
                              int64_t first_position, int64_t segment_length, Tensor& keys,
                              Tensor& values) {
  const MlaKvSizes z = check_mla_assemble_kv(device(), kv, ckv, table, first_position,
                                             segment_length, keys, values);
  const int64_t t = z.t_count, heads = z.heads, dn = z.dn, dr = z.dr, dv = z.dv;
  Tensor k_pe = empty(keys.dtype(), {t, 1, dr});  // [T, 1, dr]: one rope "head"
  Tensor k_pe2 = k_pe.view({t, dr});
  copy_columns(ckv, z.ckv_cols - dr, k_pe2, 0, dr);
  rope(k_pe, table, first_position, 0, k_pe, segment_length);
  const Tensor kv_heads = kv.view({t * heads, dn + dv});
  Tensor k_heads = keys.view({t * heads, dn + dr}), v_heads = values.view({t * heads, dv});
  copy_columns(kv_heads, 0, k_heads, 0, dn);
  copy_columns(kv_heads, dn, v_heads, 0, dv);
  copy_columns(k_pe2, 0, k_heads, dn, dr);  // each k_pe row to the H rows of its token
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, float, Tensor&, Tensor&, Tensor&, GradWrite,
                                 const Tensor&) {
  missing(*this, "attention_backward");
}
void Backend::route_backward(const Tensor&, const RouterSpec&, const Tensor&, const Tensor&,
                             Tensor&) {
  missing(*this, "route_backward");
}
void Backend::scatter_add_rows_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                        Tensor&, Tensor&) {
  missing(*this, "scatter_add_rows_backward");
}
void Backend::kd_loss(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      const KdLossOptions&, float, Tensor&, Tensor&) {
  missing(*this, "kd_loss");
}
void Backend::expand_top_k(const Tensor&, const Tensor&, const Tensor&, Tensor&) {
  missing(*this, "expand_top_k");
}
void Backend::group_fake_quantize(const Tensor&, const Tensor&, const FakeQuantSpec&, Tensor&) {
  missing(*this, "group_fake_quantize");
}
void Backend::group_output_errors(const Tensor&, const Tensor&, const Tensor&, int, Tensor&) {
  missing(*this, "group_output_errors");
}
void Backend::column_abs_sums(const Tensor&, Tensor&) { missing(*this, "column_abs_sums"); }
double Backend::sum_squares(const Tensor&) { missing(*this, "sum_squares"); }
double Backend::sum_squared_difference(const Tensor&, const Tensor&) {
  missing(*this, "sum_squared_difference");
}
void Backend::adamw_update(Tensor&, const Tensor&, Tensor&, Tensor&, const AdamWScalars&,
                           Tensor&) {
  missing(*this, "adamw_update");
}
void Backend::convert(const Tensor&, Tensor&) { missing(*this, "convert"); }
double Backend::sum_squares_many(std::span<const Tensor> tensors) {
  double total = 0.0;
  for (const Tensor& t : tensors) total += sum_squares(t);
  return total;
}
void Backend::adamw_update_many(std::span<AdamWTensors> params, const AdamWScalars& s) {
  for (AdamWTensors& p : params) {
    AdamWScalars si = s;
    si.decay = p.decay;
    adamw_update(p.master, p.grad, p.exp_avg, p.exp_avg_sq, si, p.compute);
  }
}

}  // namespace refinery::backend
