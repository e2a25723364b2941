// make_cuda_backend in a build without the CUDA backend (-DREFINERY_CUDA=OFF or no nvcc).
#include "engine/backend/cuda/cuda_backend.hpp"

namespace refinery::backend {

std::shared_ptr<Backend> make_cuda_backend(int device_index, DType) {
  throw_user_error("the CUDA backend (device ", device_index,
                   ") is not available: this build has no CUDA support. Rebuild with nvcc "
                   "installed and -DREFINERY_CUDA=ON, or use --device cpu");
}

}  // namespace refinery::backend
