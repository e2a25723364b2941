// The optimizer's element-wise ops: sum of squares (the global gradient norm), one AdamW update,
// dtype conversion. Memory bound; parallel over fixed chunks / independent elements, so no result
// depends on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

// Elements per partial sum of sum_squares: fixed (not derived from the thread count), as in
// engine/train/grad_clip.cpp, so the double total is the same for any thread count.
constexpr int64_t kChunk = 1 << 16;
// Element-wise loops below this size stay on one thread.
constexpr int64_t kParallelMin = 1 << 15;

bool is_convertible(DType dt) {
  return dt == DType::kF32 || dt == DType::kBF16 || dt == DType::kF16;
}

}  // namespace

double CpuBackend::sum_squares(const Tensor& t) { return sum_squared_difference(t, Tensor()); }

// Σ (a − b)², or Σ a² when b is undefined (sum_squares).
double CpuBackend::sum_squared_difference(const Tensor& a, const Tensor& b) {
  for (const Tensor* t : {&a, &b})
    REFINERY_CHECK((t == &b && !t->defined()) ||
                       (t->defined() && t->device() == Device::kCPU &&
                        (t->dtype() == DType::kF32 || t->dtype() == DType::kBF16)),
                   "sum_squares: f32 or bf16 CPU tensor expected, found ", t->describe());
  REFINERY_CHECK(!b.defined() || a.shape() == b.shape(), "sum_squared_difference: shapes ",
                 a.describe(), " and ", b.describe(), " differ");
  const int64_t count = a.numel();
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
  // Chunk [begin, begin + n) of t as f32 (converted into `buffer` when bf16).
  auto values = [](const Tensor& t, int64_t begin, int64_t n, std::vector<float>& buffer) {
    if (t.dtype() == DType::kF32) return t.data<float>() + begin;
    buffer.resize(static_cast<std::size_t>(n));
    convert_to_f32(DType::kBF16, static_cast<const std::byte*>(t.data()) + 2 * begin,
                   buffer.data(), buffer.size());
    return static_cast<const float*>(buffer.data());
  };
#pragma omp parallel if (chunks > 1)
  {
    std::vector<float> buffer_a, buffer_b;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk, n = std::min(count, begin + kChunk) - begin;
      const float* va = values(a, begin, n, buffer_a);
      const float* vb = b.defined() ? values(b, begin, n, buffer_b) : nullptr;
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double v = vb ? static_cast<double>(va[i]) - vb[i] : va[i];
        s += v * v;
      }
      partial[static_cast<std::size_t>(c)] = s;
    }
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

void CpuBackend::adamw_update(Tensor& master, const Tensor& grad, Tensor& exp_avg,
                              Tensor& exp_avg_sq, const AdamWScalars& s, Tensor& compute) {
  // Documented as [n]; any shape is accepted as long as all five agree (elements are independent).
  REFINERY_CHECK(master.defined(), "adamw_update: undefined master weights");
  const std::vector<int64_t> shape = master.shape();
  const int64_t n = master.numel();
  require_f32(master, shape, "adamw_update master");
  require_f32(grad, shape, "adamw_update grad");
  require_f32(exp_avg, shape, "adamw_update exp_avg");
  require_f32(exp_avg_sq, shape, "adamw_update exp_avg_sq");
  REFINERY_CHECK(!compute.defined() ||
                     (compute.device() == Device::kCPU && compute.shape() == shape &&
                      (compute.dtype() == DType::kF32 || compute.dtype() == DType::kBF16)),
                 "adamw_update compute: expected f32 or bf16", shape_to_string(shape), ", found ",
                 compute.describe());
  float* w = master.mutable_data<float>();
  const float* g = grad.data<float>();
  float* m = exp_avg.mutable_data<float>();
  float* v = exp_avg_sq.mutable_data<float>();
  float* out_f32 =
      compute.defined() && compute.dtype() == DType::kF32 ? compute.mutable_data<float>() : nullptr;
  uint16_t* out_bf16 = compute.defined() && compute.dtype() == DType::kBF16
                           ? compute.mutable_data<uint16_t>()
                           : nullptr;
  // Copies of the scalars (locals, so the loop reads registers), named as in train::AdamW::step.
  const bool decay = s.decay;
  const float decay_factor = s.decay_factor, lerp_weight = s.lerp_weight, beta2 = s.beta2;
  const float one_minus_beta2 = s.one_minus_beta2, bc2_sqrt = s.bc2_sqrt, eps = s.eps;
  const float neg_step_size = s.neg_step_size, grad_scale = s.grad_scale;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    // The same float operations in the same order as train::AdamW::step (bitwise equal results).
    float wi = w[i];
    if (decay) wi *= decay_factor;
    const float gi = g[i] * grad_scale;
    const float mi = std::fma(lerp_weight, gi - m[i], m[i]);
    float vi = v[i] * beta2;
    vi = std::fma(one_minus_beta2 * gi, gi, vi);  // as AdamW::step and the CUDA op
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    w[i] = wi + (neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
    if (out_f32 != nullptr) out_f32[i] = w[i];
    if (out_bf16 != nullptr) out_bf16[i] = f32_to_bf16(w[i]);
  }
}

void CpuBackend::convert(const Tensor& src, Tensor& dst) {
  REFINERY_CHECK(src.defined() && dst.defined() && src.device() == Device::kCPU &&
                     dst.device() == Device::kCPU && is_convertible(src.dtype()) &&
                     is_convertible(dst.dtype()) && src.shape() == dst.shape(),
                 "convert: f32/bf16/f16 CPU tensors of one shape expected, found ",
                 src.describe(), " and ", dst.describe());
  const int64_t count = src.numel();
  const DType from = src.dtype(), to = dst.dtype();
  const auto* ps = static_cast<const std::byte*>(src.data());
  auto* pd = static_cast<std::byte*>(dst.mutable_data());
  if (from == to) {
    if (count > 0 && ps != pd) std::memmove(pd, ps, src.nbytes());
    return;
  }
  const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel if (count > kParallelMin)
  {
    std::vector<float> buffer;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * kChunk, n = std::min(count, begin + kChunk) - begin;
      const std::byte* in = ps + dtype_bytes_for(from, static_cast<std::size_t>(begin));
      std::byte* out = pd + dtype_bytes_for(to, static_cast<std::size_t>(begin));
      if (from == DType::kF32) {
        convert_from_f32(to, reinterpret_cast<const float*>(in), out,
                         static_cast<std::size_t>(n));
      } else if (to == DType::kF32) {
        convert_to_f32(from, in, reinterpret_cast<float*>(out), static_cast<std::size_t>(n));
      } else {
        // bf16 <-> f16 through f32: exact widening, then one rounding.
        buffer.resize(static_cast<std::size_t>(n));
        convert_to_f32(from, in, buffer.data(), buffer.size());
        convert_from_f32(to, buffer.data(), out, buffer.size());
      }
    }
  }
}

}  // namespace refinery::backend::cpu
