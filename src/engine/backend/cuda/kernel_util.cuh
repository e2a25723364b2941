#pragma once
// Device-side helpers shared by the kernels: element loads in any weight dtype, launch sizes.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "engine/backend/cuda/cuda_backend_internal.hpp"

namespace refinery::backend::cuda {

// Exact E4M3 ("fn") decode: no infinities, S.1111.111 is NaN, subnormals below 2^-6.
__device__ inline float e4m3_to_f32(uint8_t b) {
  const int exponent = (b >> 3) & 0xF, mantissa = b & 0x7;
  float magnitude;
  if (exponent == 0xF && mantissa == 0x7)
    magnitude = __int_as_float(0x7fc00000);
  else if (exponent == 0)
    magnitude = ldexpf(static_cast<float>(mantissa), -9);
  else
    magnitude = ldexpf(static_cast<float>(8 + mantissa), exponent - 10);
  return (b & 0x80) ? -magnitude : magnitude;
}

// Element i of a vector/matrix of element type `type`, as f32 (exact).
__device__ inline float load_f32(const void* p, ElementType type, int64_t i) {
  switch (type) {
    case ElementType::kF32:
      return static_cast<const float*>(p)[i];
    case ElementType::kBF16:
      return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
    case ElementType::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    default:
      return e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
  }
}

// Activations are f32 or bf16 (Backend::activation_dtype); kernels are templated on the element
// type T and compute in f32: to_f32 widens exactly, from_f32 rounds to nearest even.
__device__ inline float to_f32(float v) { return v; }
__device__ inline float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ inline T from_f32(float v);
template <>
__device__ inline float from_f32<float>(float v) {
  return v;
}
template <>
__device__ inline __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Calls f(T{}) with T = float or __nv_bfloat16 for an activation dtype; `op` names the caller in
// the internal error for any other dtype. Used as
//   dispatch_activation(x.dtype(), "add", [&](auto tag) { using T = decltype(tag); ... });
template <typename F>
void dispatch_activation(DType dtype, const char* op, F&& f) {
  if (dtype == DType::kF32)
    f(float{});
  else if (dtype == DType::kBF16)
    f(__nv_bfloat16{});
  else
    throw_internal_error(op, ": activations must be f32 or bf16, found ", dtype_name(dtype));
}

// The CUDA library type of an activation element type.
template <typename T>
constexpr cudaDataType cuda_data_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

// 16 bytes of T: 8 bf16 or 4 f32, loaded and stored whole (pointers 16-byte aligned). An
// aggregate: `Vec16<T> v{p[i]}` takes a uint4 directly; load/store take element pointers.
template <typename T>
struct Vec16 {
  static constexpr int kN = 16 / sizeof(T);
  uint4 raw;
  __device__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  static constexpr int kPerWord = 4 / sizeof(T);  // elements per 32-bit word
  // 32-bit word i: a select, not an indexed array, so that an index known only at run time
  // (rope_backward's interleaved pairs) does not send a bf16 vector to local memory.
  __device__ uint32_t word(int i) const {
    return i == 0 ? raw.x : i == 1 ? raw.y : i == 2 ? raw.z : raw.w;
  }
  // Element j (of this or any longer run of elements) from the 32-bit word that holds it: the word
  // itself for f32, half j % 2 of it for bf16 (a bf16 is the high half of its f32).
  __device__ static float element(uint32_t w, int j) {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(w);
    } else {
      return __uint_as_float(j % 2 == 0 ? w << 16 : w & 0xffff0000u);
    }
  }
  __device__ float get(int j) const { return element(word(j / kPerWord), j); }
  __device__ void set(const float (&v)[kN]) {
    uint32_t words[4];
    if constexpr (sizeof(T) == 4) {
      for (int k = 0; k < 4; ++k) words[k] = __float_as_uint(v[k]);
    } else {
      for (int k = 0; k < 4; ++k)
        words[k] = static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k]))) |
                   (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1])))
                    << 16);
    }
    raw = make_uint4(words[0], words[1], words[2], words[3]);
  }
};

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (kernels loop, so the grid may be capped).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 16));
}

// A 2-D launch over a [rows, cols] index space without a 64-bit division per element: threads
// along x walk the columns of a row (up to 256 of them; fewer for narrow rows, the rest of the
// block's 256 threads take further rows along y — a warp may span several narrow rows, so no
// thread idles on MLA's 8- and 16-vector column copies). Kernels loop over both with
//   for (r = blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += gridDim.y * blockDim.y)
//     for (c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
struct RowColumnLaunch {
  dim3 grid, block;
};
inline RowColumnLaunch row_column_launch(int64_t rows, int64_t cols) {
  unsigned tx = 1;
  while (tx < 256 && static_cast<int64_t>(tx) < cols) tx *= 2;
  const unsigned ty = kThreads / tx;
  const int64_t gx = std::clamp<int64_t>((cols + tx - 1) / tx, 1, 65535);
  const int64_t gy = std::clamp<int64_t>((rows + ty - 1) / ty, 1, 65535);
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(tx, ty)};
}

}  // namespace refinery::backend::cuda
