#pragma once
// The CUDA backend class and what its op files (*.cu in this folder) share. Included by .cu files
// only: it names CUDA and cuBLAS types. Design notes per concern live at the top of each op file.
//
// Execution model: every op enqueues its kernels and cuBLAS calls on the backend's one stream and
// returns without synchronizing, except where it needs host values (index checks, MoE routing
// tables; each such op says so). The stream is a blocking stream, so the synchronous copies of
// Tensor (to, copy_from: cudaMemcpy on the legacy default stream) are ordered after the op's work.
// Scratch tensors are plain device tensors freed at the end of the op (cudaFree synchronizes);
// a caching allocator comes with the performance work.

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/backend/op_checks.hpp"
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/op_profiler.hpp"

namespace refinery::backend::cuda {

// Element types a kernel can read weights and small vectors in (converted to f32 on load).
enum class ElementType : int { kF32 = 0, kBF16 = 1, kF16 = 2, kF8E4M3 = 3 };
// Throws an internal error naming `what` for a dtype the kernels do not read.
ElementType element_type(DType dtype, const char* what);

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device_index, DType activations);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::kCUDA; }
  std::string_view name() const override { return "cuda"; }
  DType activation_dtype() const override { return activations_; }
  void profile_reset() override { profiler_.reset(); }

  Tensor empty(DType dtype, std::vector<int64_t> shape) override;
  Tensor upload(const Tensor& host) override;
  Tensor download(const Tensor& t) override;

  void linear(const Tensor& x, const LinearWeight& w, Tensor& y) override;              // linear.cu
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) override;  // norm.cu
  void add_rms_norm(Tensor& x, const Tensor& delta, const Tensor& weight, float eps,
                    Tensor& out) override;  // norm.cu
  void embedding(const Tensor& ids, const Tensor& table, Tensor& y) override;  // elementwise.cu
  void add(const Tensor& a, const Tensor& b, Tensor& y) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& y) override;
  void sigmoid_gate(const Tensor& x, const Tensor& g, Tensor& y) override;
  void copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                    int64_t width) override;
  void fill_zero(Tensor& y) override;
  void rope(const Tensor& x, const RopeTable& table, int64_t first_position, int64_t offset,
            Tensor& y, int64_t segment_length = 0) override;  // rope.cu
  void mla_assemble_kv(const Tensor& kv, const Tensor& ckv, const RopeTable& table,
                       int64_t first_position, int64_t segment_length, Tensor& keys,
                       Tensor& values) override;  // mla_assemble.cu
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                 Tensor& out) override;  // attention.cu
  void attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                          Tensor& out, Tensor& lse) override;  // attention.cu
  void route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
             Tensor& experts, Tensor& weights) override;  // router.cu
  void moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                   std::span<const ExpertWeights> expert_weights, Tensor& y,
                   bool accumulate = false) override;  // moe.cu
  void gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) override;            // rows.cu
  void scatter_add_rows(const Tensor& x, const Tensor& rows, const Tensor& scale,
                        Tensor& y) override;
  void log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                         const TopKSampling& sampling, Tensor& indices,
                         Tensor& log_probs) override;  // lm_head.cu

  // ---- training (backend.hpp "backward"; every op adds into its gradients) ----
  void linear_backward(const Tensor& x, const LinearWeight& w, const Tensor& dy, Tensor& dx,
                       Tensor& dw, Tensor& db, GradWrite dx_write = GradWrite::kAdd,
                       GradWrite dw_write = GradWrite::kAdd) override;  // linear_backward.cu
  void rms_norm_backward(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                         Tensor& dx, Tensor& dweight) override;  // norm_backward.cu
  void rms_norm_backward_and_convert(const Tensor& x, const Tensor& weight, float eps,
                                     const Tensor& dy, Tensor& dx, Tensor& dweight,
                                     Tensor& dx_converted) override;  // norm_backward.cu
  void embedding_backward(const Tensor& ids, const Tensor& dy,
                          Tensor& dtable) override;  // elementwise_backward.cu
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, Tensor& dgate,
                       Tensor& dup, GradWrite write = GradWrite::kAdd) override;
  void sigmoid_gate_backward(const Tensor& x, const Tensor& g, const Tensor& dy, Tensor& dx,
                             Tensor& dg) override;
  void copy_columns_backward(const Tensor& ddst, int64_t dst_col, Tensor& dsrc, int64_t src_col,
                             int64_t width) override;
  void rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                     int64_t offset, Tensor& dx, GradWrite write = GradWrite::kAdd,
                     int64_t segment_length = 0) override;  // rope_backward.cu
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& dout, float scale, Tensor& dq, Tensor& dk,
                          Tensor& dv, GradWrite write = GradWrite::kAdd,
                          const Tensor& lse = Tensor{}) override;  // attention_backward.cu
  void route_backward(const Tensor& logits, const RouterSpec& spec, const Tensor& experts,
                      const Tensor& dweights, Tensor& dlogits) override;  // router_backward.cu
  void scatter_add_rows_backward(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                 const Tensor& dy, Tensor& dx, Tensor& dscale) override;
  void kd_loss(const Tensor& student_logits, const Tensor& teacher_logits,
               const Tensor& teacher_ids, const Tensor& teacher_log_probs, const Tensor& labels,
               const KdLossOptions& options, float grad_scale, Tensor& row_terms,
               Tensor& grad) override;  // kd_loss.cu
  void expand_top_k(const Tensor& ids, const Tensor& log_probs, const Tensor& log_prior,
                    Tensor& out) override;  // kd_loss.cu
  void group_fake_quantize(const Tensor& w, const Tensor& s, const FakeQuantSpec& q,
                           Tensor& out) override;  // group_quant.cu
  void group_output_errors(const Tensor& x, const Tensor& q, const Tensor& w, int group_size,
                           Tensor& err) override;  // group_quant.cu
  void column_abs_sums(const Tensor& x, Tensor& sums) override;  // column_stats.cu
  double sum_squares(const Tensor& t) override;  // optimizer_ops.cu
  double sum_squared_difference(const Tensor& a, const Tensor& b) override;  // optimizer_ops.cu
  void adamw_update(Tensor& master, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                    const AdamWScalars& s, Tensor& compute) override;
  double sum_squares_many(std::span<const Tensor> tensors) override;  // optimizer_ops.cu
  void adamw_update_many(std::span<AdamWTensors> params, const AdamWScalars& s) override;
  void convert(const Tensor& src, Tensor& dst) override;

  // ---- for the op files ----
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // y[t, n] (row stride ldy, y_type f32 or bf16) = x[t, k] · w[n, k]ᵀ (+ beta · y), x and w bf16
  // row-major, f32 accumulation, through cuBLASLt with a cached plan per shape (gemm.cu).
  void gemm_bf16(const void* w, const void* x, int64_t t, int64_t k, int64_t n, void* y,
                 cudaDataType y_type, int64_t ldy, float beta = 0.0f);
  // The general form, column-major as cuBLAS: C[m, n] (leading dimension ldc, c_type f32 or bf16)
  // = alpha · op(A)[m, k] · op(B)[k, n] + beta · C, A and B bf16 (op = transpose when trans_*),
  // f32 accumulation, a cached plan per shape (gemm.cu). A row-major [r, c] matrix is a
  // column-major [c, r] one with leading dimension c.
  void gemm_bf16_cm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a,
                    int64_t lda, const void* b, int64_t ldb, void* c, cudaDataType c_type,
                    int64_t ldc, float alpha, float beta);
  // The routed experts of one MoE layer stacked on the device for batched GEMMs (moe.cu):
  // gate_up bf16 [E, 2I, H] (expert e's gate rows, then its up rows), down bf16 [E, H, I].
  struct StackedExperts {
    Tensor gate_up, down;
    int64_t inter = 0;
    std::vector<Tensor> host;  // keeps the source weights' storage alive while cached
  };
  // The stack of these experts: built on first use and cached for memory-mapped (read-only) or
  // device weights, built per call for writable host weights; nullptr when the experts are not
  // all dense bf16 without bias of one width (moe.cu).
  std::shared_ptr<const StackedExperts> stacked_experts(std::span<const ExpertWeights> experts);
  // moe_experts on a stack through the grouped GEMM kernel, routed on the device (moe_routing.cuh):
  // no host synchronization. x [T, H], experts i32 / weights f32 [T, k], y [T, H] zeroed (moe.cu).
  void moe_experts_grouped_on_device(const Tensor& x, const Tensor& experts,
                                     const Tensor& weights, const StackedExperts& stack, Tensor& y);
  // x in `dtype` (f32 or bf16): x itself when it has it, else a converted copy (linear.cu).
  Tensor as_dtype(const Tensor& x, DType dtype, const char* op);
  // Σ a² (b undefined) or Σ (a − b)²: sum_squares and sum_squared_difference (optimizer_ops.cu).
  double sum_squares_of(const Tensor& a, const Tensor& b, const char* op);
  // The weight as bf16 rows [r0, r0 + rows) of [out, in] on the device: the weight itself for a
  // dense bf16 weight (no copy; `scratch` then holds the device tensor so that it outlives the
  // GEMMs the caller enqueues), else a converted copy in `scratch` (fp8 block: e4m3 x scale_inv
  // rounded to bf16; f32/f16 rounded to bf16; awq dequantized, r0 and rows multiples of the pack
  // factor, awq_linear.cu), reused when large enough (linear.cu). Returns the
  // device pointer.
  const void* bf16_weight_rows(const LinearWeight& w, int64_t r0, int64_t rows, Tensor& scratch);
  // The contents of `t` on this device: `t` itself when it is already there; for a read-only host
  // tensor (memory-mapped checkpoint weights) a device copy made on first use and kept for the
  // backend's lifetime (the entry holds the host tensor, so its storage cannot be freed and its
  // address reused while cached); for a writable host tensor a fresh copy, since it may change.
  Tensor on_device(const Tensor& t);
  // After REFINERY_CUDA_CHECK_LAUNCH: with REFINERY_CUDA_SYNC=1 in the environment, waits for the
  // stream so that an asynchronous fault is reported by the op that caused it (debugging aid).
  void sync_if_debugging(const char* op);

  // y[i] = x[rows[i]] for i < n; x [T, d], y [>= n, d] of one activation dtype; rows (device)
  // already checked (rows.cu).
  void gather_rows_device(const Tensor& x, const int32_t* rows, int64_t n, Tensor& y,
                          const char* op);
  // CSR-ordered weighted scatter-add, shared by scatter_add_rows and moe_experts (rows.cu):
  // for each target u, y[targets[u]] += Σ_{e in offsets[u]..offsets[u+1]} scale[entry[e]] *
  // x[entry[e]], summed in f32 in entry order (deterministic, no atomics). x [N, d], y [T, d];
  // the index arrays on the device.
  void scatter_add_csr(const Tensor& x, const int32_t* entry, const float* scale,
                       const int32_t* offsets, const int32_t* targets, int64_t n_targets,
                       Tensor& y, const char* op);
  // dst[c] += Σ_p partial[p, c] for c < d, summed in p order (deterministic column reduction of
  // per-block partial sums; partial f32 [parts, d] on the device, dst f32 [d]) (norm_backward.cu).
  void add_column_sums(const float* partial, int64_t parts, int64_t d, float* dst,
                       const char* op);
  // y += x element-wise, x f32 [n], y f32 or bf16 [n] (one rounding per element of y)
  // (attention_backward.cu).
  void accumulate_f32(const float* x, int64_t n, Tensor& y, const char* op);
  // rms_norm_backward; with dx_bf16 non-null (f32 dx, 16-byte aligned), also the updated dx
  // rounded to bf16 into dx_bf16 [R, D] from the same kernel. Returns false when that fused path
  // did not apply (dx_bf16 then untouched) (norm_backward.cu).
  bool rms_norm_backward_fused(const Tensor& x, const Tensor& weight, float eps, const Tensor& dy,
                               Tensor& dx, Tensor& dweight, __nv_bfloat16* dx_bf16);

 private:
  // (storage, byte offset, dtype, shape) of a cached host tensor.
  using ResidentKey = std::tuple<const void*, std::size_t, DType, std::vector<int64_t>>;
  struct Resident {
    Tensor host;    // keeps the host storage alive (see on_device)
    Tensor device;  // its copy
  };

  struct GemmPlan;  // gemm.cu
  struct GemmPlanDeleter {
    void operator()(GemmPlan* p) const;
  };
  // (transposes, m, n, k, lda, ldb, ldc, c type, pointer alignments)
  using GemmKey =
      std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int>;

  int device_index_;
  DType activations_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  Tensor lt_workspace_;  // cuBLASLt workspace (kLtWorkspaceBytes)
  std::map<GemmKey, std::unique_ptr<GemmPlan, GemmPlanDeleter>> gemm_plans_;
  // Stacked experts by the address of expert 0's gate weight.
  std::map<const void*, std::shared_ptr<const StackedExperts>> stacked_;
  bool sync_debug_ = false;
  OpProfiler profiler_{false};  // REFINERY_PROFILE=1 (op_profiler.hpp)
  std::mutex resident_mutex_;
  std::map<ResidentKey, Resident> resident_;
};

// Throws an internal error unless `t` is a device tensor of dtype f32 / i32 and `shape`
// (op_checks.hpp).
inline void require_f32(const Tensor& t, const std::vector<int64_t>& shape, const char* what) {
  backend::require_f32(Device::kCUDA, t, shape, what);
}
inline void require_i32(const Tensor& t, const std::vector<int64_t>& shape, const char* what) {
  backend::require_i32(Device::kCUDA, t, shape, what);
}
// A device i32/f32 tensor holding a copy of host values (synchronous upload).
Tensor device_i32(const std::vector<int32_t>& values);
Tensor device_f32(const std::vector<float>& values);
// The host values of a small i32 tensor on either device (synchronous download).
std::vector<int32_t> host_i32(const Tensor& t);

}  // namespace refinery::backend::cuda

// Every kernel launch in the op files is followed by this: launch check with the op's name, then
// the optional debugging synchronization.
#define REFINERY_CUDA_AFTER_LAUNCH(backend, op_name) \
  do {                                               \
    REFINERY_CUDA_CHECK_LAUNCH(op_name);             \
    (backend).sync_if_debugging(op_name);            \
  } while (0)
