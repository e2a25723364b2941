#pragma once
// Shared by rope.cu and rope_backward.cu: the 8-element register chunks their vectorized kernels
// load and store as 16-byte vectors, the 8-entry cos/sin table chunk, and when the vectorized
// path applies. Device structs plus one host predicate.
#include <cuda_bf16.h>

#include <cstdint>

#include "engine/backend/cuda/alignment.hpp"

namespace refinery::backend::cuda::rope_detail {

constexpr int kRopeThreads = 64;

// Eight consecutive elements of T in registers, loaded and stored as 16-byte vectors (one for
// bf16, two for f32); the pointer must be 16-byte aligned.
template <typename T>
struct RopeChunk {
  static constexpr int kWords = 8 * sizeof(T) / 16;  // uint4 words
  uint4 w[kWords];
  __device__ void load(const T* p) {
    for (int k = 0; k < kWords; ++k) w[k] = reinterpret_cast<const uint4*>(p)[k];
  }
  // load(p), or eight zeros without reading p (a gradient that is overwritten, not added to).
  __device__ void load_or_zero(const T* p, bool zero) {
    if (zero) {
      for (int k = 0; k < kWords; ++k) w[k] = make_uint4(0u, 0u, 0u, 0u);
    } else {
      load(p);
    }
  }
  __device__ void store(T* p) const {
    for (int k = 0; k < kWords; ++k) reinterpret_cast<uint4*>(p)[k] = w[k];
  }
  __device__ uint32_t word(int i) const {  // 32-bit word i of the 8 elements
    const uint4& v = w[i / 4];
    const int j = i % 4;
    return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
  }
  __device__ float get(int j) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(word(j));
    } else {
      const uint32_t v = word(j / 2);
      return __uint_as_float(j % 2 == 0 ? v << 16 : v & 0xffff0000u);
    }
  }
  __device__ void set(const float (&v)[8]) {
    uint32_t words[kWords * 4];
    if constexpr (sizeof(T) == 4) {
      for (int k = 0; k < 8; ++k) words[k] = __float_as_uint(v[k]);
    } else {
      for (int k = 0; k < 4; ++k)
        words[k] = static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k]))) |
                   (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1])))
                    << 16);
    }
    for (int k = 0; k < kWords; ++k)
      w[k] = make_uint4(words[4 * k], words[4 * k + 1], words[4 * k + 2], words[4 * k + 3]);
  }
};

// Eight f32 table entries (cos or sin of pairs i..i+7), 32-byte aligned.
struct TableChunk {
  float v[8];
  __device__ void load(const float* p) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
};

// Whether the vectorized kernel applies: whole chunks of 8 everywhere, aligned pointers, and a
// 32-bit index space.
inline bool rope_vectorizable(const void* x, const void* y, const float* cos_rows, const float* sin_rows,
                       int64_t rows, int64_t d, int64_t offset, int64_t half) {
  return d % 8 == 0 && offset % 8 == 0 && half % 8 == 0 && aligned16(x) && aligned16(y) &&
         aligned16(cos_rows) && aligned16(sin_rows) && rows * (d / 8) < (int64_t{1} << 31);
}

}  // namespace refinery::backend::cuda::rope_detail
