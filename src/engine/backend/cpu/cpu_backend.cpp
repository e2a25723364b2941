// CpuBackend: construction, memory and the helpers the op files share.
#include "engine/backend/cpu/cpu_backend.hpp"

#include <omp.h>

namespace refinery::backend {

std::shared_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_shared<cpu::CpuBackend>(threads);
}

namespace cpu {

CpuBackend::CpuBackend(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

Tensor CpuBackend::empty(DType dtype, std::vector<int64_t> shape) {
  return Tensor::empty(dtype, std::move(shape), Device::kCPU);
}

Tensor CpuBackend::upload(const Tensor& host) {
  return host.device() == Device::kCPU ? host : host.to(Device::kCPU);
}

Tensor CpuBackend::download(const Tensor& t) {
  return t.device() == Device::kCPU ? t : t.to(Device::kCPU);
}

std::vector<float> to_f32_vector(const Tensor& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  convert_to_f32(t.dtype(), t.data(), out.data(), out.size());
  return out;
}

}  // namespace cpu
}  // namespace refinery::backend
