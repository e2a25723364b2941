// group_fake_quantize on the CPU: the reference math of src/quantize/group_quant.cpp on f32 rows.
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "quantize/group_quant.hpp"

namespace refinery::backend::cpu {

void CpuBackend::group_fake_quantize(const Tensor& w, const Tensor& s, int bits, int group_size,
                                     bool zero_point, Tensor& out) {
  REFINERY_CHECK(w.ndim() == 2 && out.shape() == w.shape() && out.device() == Device::kCPU &&
                     w.device() == Device::kCPU,
                 "group_fake_quantize: w [out, in] and out of its shape on the CPU, found ",
                 w.describe(), " and ", out.describe());
  const int64_t rows = w.size(0), cols = w.size(1);
  if (s.defined()) require_f32(s, {cols}, "group_fake_quantize s");
  const Tensor wf = w.dtype() == DType::kF32 ? w : w.to_f32();
  std::vector<float> v(wf.data<float>(), wf.data<float>() + wf.numel());
  const float* ps = s.defined() ? s.data<float>() : nullptr;
  if (ps != nullptr)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[r * cols + c] *= ps[c];
  quantize::GroupQuantSpec spec;
  spec.bits = bits;
  spec.group_size = group_size;
  spec.zero_point = zero_point;
  quantize::fake_quantize(v.data(), rows, cols, spec, "group_fake_quantize");
  if (ps != nullptr)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[r * cols + c] /= ps[c];
  REFINERY_CHECK(out.dtype() == DType::kF32 || out.dtype() == DType::kBF16,
                 "group_fake_quantize: out must be f32 or bf16, found ", out.describe());
  convert_from_f32(out.dtype(), v.data(), out.mutable_data(), v.size());
}

}  // namespace refinery::backend::cpu
