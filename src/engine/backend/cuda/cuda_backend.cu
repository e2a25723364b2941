// CudaBackend: construction (device, stream, cuBLAS handle), memory, the device cache of host
// weights, and the helpers the op files share.
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/cuda_backend_internal.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/log.hpp"

namespace refinery::backend {

std::shared_ptr<Backend> make_cuda_backend(int device_index, DType activations) {
  if (activations != DType::kF32 && activations != DType::kBF16)
    throw_internal_error("make_cuda_backend: activations must be f32 or bf16, found ",
                         dtype_name(activations));
  return std::make_shared<cuda::CudaBackend>(device_index, activations);
}

namespace cuda {

namespace {
// cuBLASLt workspace: NVIDIA recommends 32 MiB on Hopper for the best kernels.
constexpr int64_t kLtWorkspaceBytes = int64_t{32} << 20;

// An environment variable set to something other than "" or "0".
bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}
}  // namespace

ElementType element_type(DType dtype, const char* what) {
  switch (dtype) {
    case DType::kF32:
      return ElementType::kF32;
    case DType::kBF16:
      return ElementType::kBF16;
    case DType::kF16:
      return ElementType::kF16;
    case DType::kF8E4M3:
      return ElementType::kF8E4M3;
    default:
      throw_internal_error(what, ": the CUDA backend reads f32, bf16, f16 or f8_e4m3, found ",
                           dtype_name(dtype));
  }
}

CudaBackend::CudaBackend(int device_index, DType activations)
    : device_index_(device_index),
      activations_(activations),
      profiler_(env_flag("REFINERY_PROFILE")) {
  const auto devices = refinery::cuda::list_devices();
  if (devices.empty())
    throw_user_error("the CUDA backend needs a GPU: ", refinery::cuda::no_device_reason(),
                     "; use --device cpu");
  if (device_index < 0 || device_index >= static_cast<int>(devices.size()))
    throw_user_error("CUDA device ", device_index, " does not exist: this machine has ",
                     devices.size(), " device(s), numbered from 0");
  REFINERY_CUDA_CHECK(cudaSetDevice(device_index));
  // The calling thread's default stream (per-thread default streams, CMakeLists.txt): ordered with
  // this thread's copies and allocations; a backend is used from one thread at a time.
  stream_ = cudaStreamPerThread;
  const cublasStatus_t status = cublasCreate(&cublas_);
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_internal_error("cublasCreate failed: ", cublasGetStatusString(status));
  try {
    REFINERY_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // Default math: f32 GEMMs requested with CUBLAS_COMPUTE_32F use plain f32 (no TF32).
    REFINERY_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    REFINERY_CUBLAS_CHECK(cublasLtCreate(&lt_));
    lt_workspace_ = Tensor::empty(DType::kU8, {kLtWorkspaceBytes}, Device::kCUDA);
  } catch (...) {
    if (lt_ != nullptr) cublasLtDestroy(lt_);
    cublasDestroy(cublas_);
    throw;
  }
  sync_debug_ = env_flag("REFINERY_CUDA_SYNC");
  log::debug("CUDA backend on device ", device_index, " (", devices[device_index].name, ")");
}

CudaBackend::~CudaBackend() {
  // Destructors never throw: failures are logged.
  if (cudaStreamSynchronize(stream_) != cudaSuccess) cudaGetLastError();
  profiler_.report();
  resident_.clear();
  gemm_plans_.clear();
  stacked_.clear();
  if (lt_ != nullptr && cublasLtDestroy(lt_) != CUBLAS_STATUS_SUCCESS) log::warn("cublasLtDestroy failed");
  if (cublasDestroy(cublas_) != CUBLAS_STATUS_SUCCESS) log::warn("cublasDestroy failed");
}

Tensor CudaBackend::empty(DType dtype, std::vector<int64_t> shape) {
  return Tensor::empty(dtype, std::move(shape), Device::kCUDA);
}

Tensor CudaBackend::upload(const Tensor& host) {
  return host.device() == Device::kCUDA ? host : host.to(Device::kCUDA);
}

Tensor CudaBackend::download(const Tensor& t) {
  return t.device() == Device::kCPU ? t : t.to(Device::kCPU);
}

Tensor CudaBackend::on_device(const Tensor& t) {
  REFINERY_CHECK(t.defined(), "on_device: undefined tensor");
  if (t.device() == Device::kCUDA) return t;
  if (!t.is_read_only()) return t.to(Device::kCUDA);
  ResidentKey key{t.storage().get(), t.storage_offset(), t.dtype(), t.shape()};
  std::lock_guard<std::mutex> lock(resident_mutex_);
  auto it = resident_.find(key);
  if (it == resident_.end()) it = resident_.emplace(key, Resident{t, t.to(Device::kCUDA)}).first;
  return it->second.device;
}

void CudaBackend::sync_if_debugging(const char* op) {
  if (!sync_debug_) return;
  const cudaError_t status = cudaStreamSynchronize(stream_);
  if (status != cudaSuccess)
    throw_internal_error("CUDA error while running op ", op, ": ", cudaGetErrorString(status));
}

void CudaBackend::fill_zero(Tensor& y) {
  OpTimer timer(profiler_, stream_, "fill_zero");
  REFINERY_CHECK(y.device() == Device::kCUDA, "fill_zero: CUDA tensor expected, found ",
                 y.describe());
  if (y.nbytes() == 0) return;
  REFINERY_CUDA_CHECK(cudaMemsetAsync(y.mutable_data(), 0, y.nbytes(), stream_));
}

Tensor device_i32(const std::vector<int32_t>& values) {
  return Tensor::copy_of(DType::kI32, {static_cast<int64_t>(values.size())}, values.data())
      .to(Device::kCUDA);
}

Tensor device_f32(const std::vector<float>& values) {
  return Tensor::copy_of(DType::kF32, {static_cast<int64_t>(values.size())}, values.data())
      .to(Device::kCUDA);
}

std::vector<int32_t> host_i32(const Tensor& t) {
  REFINERY_CHECK(t.dtype() == DType::kI32, "expected an i32 tensor, found ", t.describe());
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  const int32_t* p = h.data<int32_t>();
  return std::vector<int32_t>(p, p + h.numel());
}

}  // namespace cuda
}  // namespace refinery::backend
