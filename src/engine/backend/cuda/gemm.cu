// Dense bf16 GEMMs through cuBLASLt, f32 accumulation, output f32 or bf16. gemm_bf16 is the
// forward's y[t, n] = x[t, k] · w[n, k]ᵀ; gemm_bf16_cm is the general column-major
// C = alpha · op(A) · op(B) + beta · C the backward ops use (dx = dy · W, dw += dyᵀ · x). cuBLASLt is column-major: row-major w [n, k] is column-major [k, n] (read transposed),
// row-major x [t, k] is column-major [k, t], and row-major y [t, n] (row stride ldy) is
// column-major [n, t] with leading dimension ldy. So D[n, t] = op_T(W)[n, k] · X[k, t].
//
// A plan (descriptors + the heuristic's best algorithm for the workspace) is made once per shape
// and kept: prefill and decode see a handful of shapes per model, and the heuristic query costs
// more than a small GEMM. The cache is cleared when it grows past kMaxPlans (variable MoE row
// counts use the grouped path in moe.cu, not this one).
#include <cstdint>
#include <utility>

#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {
constexpr std::size_t kMaxPlans = 4096;

// The largest power of two (at most 256) dividing the address: cuBLASLt picks kernels for the
// alignment the preference promises, so views into the middle of a buffer get their own plan.
uint32_t alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && address % a != 0) a /= 2;
  return a;
}
}  // namespace

struct CudaBackend::GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

void CudaBackend::GemmPlanDeleter::operator()(GemmPlan* p) const { delete p; }

void CudaBackend::gemm_bf16(const void* w, const void* x, int64_t t, int64_t k, int64_t n,
                            void* y, cudaDataType y_type, int64_t ldy, float beta) {
  // D[n, t] = op_T(W)[n, k] · X[k, t] (see the top of this file).
  gemm_bf16_cm(true, false, n, t, k, w, k, x, k, y, y_type, ldy, 1.0f, beta);
}

void CudaBackend::gemm_bf16_cm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                               const void* a, int64_t lda, const void* b, int64_t ldb, void* c,
                               cudaDataType c_type, int64_t ldc, float alpha, float beta) {
  if (m == 0 || n == 0) return;
  REFINERY_CHECK(k > 0, "gemm_bf16: empty inner dimension");
  const uint32_t align_a = alignment(a), align_b = alignment(b), align_c = alignment(c);
  const GemmKey key{static_cast<int>(trans_a) | (static_cast<int>(trans_b) << 1),
                    m,
                    n,
                    k,
                    lda,
                    ldb,
                    ldc,
                    static_cast<int>(c_type),
                    static_cast<int>(align_a | (align_b << 9) | (align_c << 18))};
  auto it = gemm_plans_.find(key);
  if (it == gemm_plans_.end()) {
    if (gemm_plans_.size() >= kMaxPlans) gemm_plans_.clear();
    std::unique_ptr<GemmPlan, GemmPlanDeleter> plan(new GemmPlan);
    REFINERY_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    REFINERY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                         &op_a, sizeof(op_a)));
    REFINERY_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                         &op_b, sizeof(op_b)));
    // Stored (column-major) shapes: op(A) is [m, k], so A is [k, m] when transposed.
    REFINERY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, trans_a ? k : m,
                                                     trans_a ? m : k, lda));
    REFINERY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, trans_b ? n : k,
                                                     trans_b ? k : n, ldb));
    REFINERY_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, c_type, m, n, ldc));
    cublasLtMatmulPreference_t preference = nullptr;
    REFINERY_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const std::size_t workspace = lt_workspace_.nbytes();
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = [&] {
      cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(
          preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
      const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
      for (const auto& [attribute, value] : aligns)
        if (s == CUBLAS_STATUS_SUCCESS)
          s = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value));
      if (s != CUBLAS_STATUS_SUCCESS) return s;
      return cublasLtMatmulAlgoGetHeuristic(lt_, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                            preference, 1, &result, &found);
    }();
    cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0)
      throw_internal_error("cuBLASLt has no algorithm for a bf16 GEMM of [", m, " x ", k, "] x [",
                           k, " x ", n, "] (transposes ", trans_a, ", ", trans_b,
                           "): ", cublasGetStatusString(status));
    plan->algo = result.algo;
    it = gemm_plans_.emplace(key, std::move(plan)).first;
  }
  const GemmPlan& plan = *it->second;
  REFINERY_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, c,
                                       plan.d, c, plan.d, &plan.algo, lt_workspace_.mutable_data(),
                                       lt_workspace_.nbytes(), stream_));
}

}  // namespace refinery::backend::cuda
