#pragma once
// The CPU reference backend: Eigen GEMMs and OpenMP over tokens/heads/experts, f32 math. Weights
// stay in their checkpoint dtype; linear() converts tiles of rows to f32 on the fly into a
// per-thread buffer (never a permanent f32 copy). Each concern lives in its own .cpp file.

#include <string_view>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/backend/op_checks.hpp"

namespace refinery::backend::cpu {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  Device device() const override { return Device::kCPU; }
  std::string_view name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }

  Tensor empty(DType dtype, std::vector<int64_t> shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor download(const Tensor& t) override;

  void linear(const Tensor& x, const LinearWeight& w, Tensor& y) override;  // linear.cpp
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) override;  // norm.cpp
  void add_rms_norm(Tensor& x, const Tensor& delta, const Tensor& weight, float eps,
                    Tensor& out) override;  // norm.cpp
  void embedding(const Tensor& ids, const Tensor& table, Tensor& y) override;  // elementwise.cpp
  void add(const Tensor& a, const Tensor& b, Tensor& y) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& y) override;
  void sigmoid_gate(const Tensor& x, const Tensor& g, Tensor& y) override;
  void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    int64_t width) override;
  void fill_zero(Tensor& y) override;
  void rope(const Tensor& x, const RopeTable& table, int64_t first_position, int64_t offset,
            Tensor& y, int64_t segment_length = 0) override;  // rope.cpp
  // mla_assemble_kv: the Backend default (rope and column copies, the reference sequence).
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                 Tensor& out) override;  // attention.cpp
  void route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
             Tensor& experts, Tensor& weights) override;  // router.cpp
  void moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                   std::span<const ExpertWeights> expert_weights, Tensor& y,
                   bool accumulate = false) override;  // moe.cpp
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) override;
  void scatter_add_rows(const Tensor& x, const Tensor& rows, const Tensor& scale,
                        Tensor& y) override;
  void log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                         const TopKSampling& sampling, Tensor& indices,
                         Tensor& log_probs) override;  // lm_head.cpp

  // ---- backward (training): each adds into its gradient outputs, see backend.hpp ----
  void linear_backward(const Tensor& x, const LinearWeight& w, const Tensor& dy, Tensor& dx,
                       Tensor& dw, Tensor& db, GradWrite dx_write = GradWrite::kAdd,
                       GradWrite dw_write = GradWrite::kAdd) override;  // linear_backward.cpp
  void rms_norm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                         Tensor& dx, Tensor& dweight) override;  // norm_backward.cpp
  void embedding_backward(const Tensor& ids, const Tensor& dy,
                          Tensor& dtable) override;  // elementwise_backward.cpp
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                       Tensor& dup,
                       GradWrite write = GradWrite::kAdd) override;  // elementwise_backward.cpp
  void sigmoid_gate_backward(const Tensor& x, const Tensor& g, const Tensor& dy, Tensor& dx,
                             Tensor& dg) override;  // elementwise_backward.cpp
  void copy_columns_backward(const Tensor& ddst, int64_t dst_col, Tensor& dsrc, int64_t src_col,
                             int64_t width) override;  // elementwise_backward.cpp
  void scatter_add_rows_backward(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                 const Tensor& dy, Tensor& dx,
                                 Tensor& dscale) override;  // elementwise_backward.cpp
  void rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                     int64_t offset, Tensor& dx, GradWrite write = GradWrite::kAdd,
                     int64_t segment_length = 0) override;  // rope.cpp
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& dout, float scale, Tensor& dq, Tensor& dk,
                          Tensor& dv, GradWrite write = GradWrite::kAdd,
                          const Tensor& lse = Tensor{}) override;  // attention_backward.cpp
  void route_backward(const Tensor& logits, const RouterSpec& spec, const Tensor& experts,
                      const Tensor& dweights, Tensor& dlogits) override;  // router_backward.cpp

  // ---- training losses and the optimizer ----
  void kd_loss(const Tensor& student_logits, const Tensor& teacher_logits,
               const Tensor& teacher_ids, const Tensor& teacher_log_probs, const Tensor& labels,
               const KdLossOptions& options, float grad_scale, Tensor& row_terms,
               Tensor& grad) override;  // kd_loss.cpp
  void expand_top_k(const Tensor& ids, const Tensor& log_probs, const Tensor& log_prior,
                    Tensor& out) override;  // kd_loss.cpp
  void group_fake_quantize(const Tensor& w, const Tensor& s, const FakeQuantSpec& q,
                           Tensor& out) override;  // group_quant.cpp
  void group_output_errors(const Tensor& x, const Tensor& q, const Tensor& w, int group_size,
                           Tensor& err) override;  // group_quant.cpp
  void column_abs_sums(const Tensor& x, Tensor& sums) override;  // column_stats.cpp
  double sum_squares(const Tensor& t) override;  // optimizer_ops.cpp
  double sum_squared_difference(const Tensor& a, const Tensor& b) override;  // optimizer_ops.cpp
  void adamw_update(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                    const AdamWScalars& s, Tensor& compute) override;  // optimizer_ops.cpp
  void convert(const Tensor& src, Tensor& dst) override;  // optimizer_ops.cpp
};

// Small helpers shared by the op files.
// In place over scores [rows, keys] (row-major): row i = softmax(scale · row) over its first
// first_visible + i entries, zeros after them (causal attention; attention.cpp).
void causal_softmax_rows(float* scores, int64_t rows, int64_t keys, int64_t first_visible,
                         float scale);
// Any float vector/matrix (f32/bf16/f16/fp8) as f32 values.
std::vector<float> to_f32_vector(const Tensor& t);
// Throws an internal error unless `t` is an f32 / i32 CPU tensor of `shape` (op_checks.hpp).
inline void require_f32(const Tensor& t, const std::vector<int64_t>& shape, const char* what) {
  backend::require_f32(Device::kCPU, t, shape, what);
}
inline void require_i32(const Tensor& t, const std::vector<int64_t>& shape, const char* what) {
  backend::require_i32(Device::kCPU, t, shape, what);
}

}  // namespace refinery::backend::cpu
