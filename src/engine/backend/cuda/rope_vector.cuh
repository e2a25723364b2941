#pragma once
// Shared by rope.cu and rope_backward.cu: the 8-element register chunks their vectorized kernels
// load and store as 16-byte vectors (Vec16), the 8-entry cos/sin table chunk, and when the
// vectorized path applies. Device structs plus the host checks and predicate.
#include <cuda_bf16.h>

#include <cstdint>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/rope_table.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda::rope_detail {

constexpr int kRopeThreads = 64;

// Eight consecutive elements of T in registers as Vec16 vectors (kernel_util.cuh: one for bf16,
// two for f32), loaded and stored whole; the pointer must be 16-byte aligned.
template <typename T>
struct RopeChunk {
  static constexpr int kPerVector = Vec16<T>::kN;  // elements per 16-byte vector
  static constexpr int kVectors = 8 / kPerVector;
  Vec16<T> v[kVectors];
  __device__ void load(const T* p) {
    for (int k = 0; k < kVectors; ++k) v[k].load(p + k * kPerVector);
  }
  // load(p), or eight zeros without reading p (a gradient that is overwritten, not added to).
  __device__ void load_or_zero(const T* p, bool zero) {
    if (zero) {
      for (int k = 0; k < kVectors; ++k) v[k].raw = make_uint4(0u, 0u, 0u, 0u);
    } else {
      load(p);
    }
  }
  __device__ void store(T* p) const {
    for (int k = 0; k < kVectors; ++k) v[k].store(p + k * kPerVector);
  }
  // 32-bit word i of the 8 elements (get's index arithmetic as before the fold onto Vec16: the
  // same code from nvcc).
  __device__ uint32_t word(int i) const { return v[i / 4].word(i % 4); }
  __device__ float get(int j) const { return Vec16<T>::element(word(j / Vec16<T>::kPerWord), j); }
  __device__ void set(const float (&x)[8]) {
    for (int k = 0; k < kVectors; ++k) {
      float part[kPerVector];
      for (int i = 0; i < kPerVector; ++i) part[i] = x[k * kPerVector + i];
      v[k].set(part);
    }
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

// The checks rope and rope_backward add to check_rope (`op` names the caller in the error): f32
// cos/sin tables [positions, half] of the same shape, and rows = T · heads within the kernels'
// 32-bit row index.
inline void check_rope_tables(const RopeTable& table, int64_t half, int64_t rows, const char* op) {
  REFINERY_CHECK(table.cos.dtype() == DType::kF32 && table.sin.dtype() == DType::kF32 &&
                     table.cos.ndim() == 2 && table.cos.size(1) == half &&
                     table.sin.shape() == table.cos.shape(),
                 op, ": f32 [positions, ", half, "] tables expected, found ", table.cos.describe(),
                 " and ", table.sin.describe());
  REFINERY_CHECK(rows < (int64_t{1} << 31), op, ": too many rows");
}

}  // namespace refinery::backend::cuda::rope_detail
