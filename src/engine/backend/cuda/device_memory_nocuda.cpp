// Device memory in a build without the CUDA backend: every request is a user error (the user asked
// for --device cuda, or a CUDA tensor, in a CPU-only build), except freeing nullptr.
#include "engine/core/device_memory.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw_user_error(what,
                   ": this build has no CUDA backend; rebuild with nvcc present or use --device cpu");
}

}  // namespace

void* device_malloc(std::size_t bytes) { no_cuda("cannot allocate device memory"); }
void device_free(void* ptr) noexcept {}  // nothing can have been allocated
void copy_host_to_device(void*, const void*, std::size_t) { no_cuda("cannot copy to the device"); }
void copy_device_to_host(void*, const void*, std::size_t) { no_cuda("cannot copy from the device"); }
void copy_device_to_device(void*, const void*, std::size_t) { no_cuda("cannot copy on the device"); }
void device_memset_zero(void*, std::size_t) { no_cuda("cannot fill device memory"); }
std::size_t device_peak_bytes() { return 0; }
void device_reset_peak_bytes() {}

}  // namespace refinery
