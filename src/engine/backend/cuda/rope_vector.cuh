#pragma once
// Shared by rope.cu and rope_backward.cu: the 8-element register chunks their vectorized kernels
// load and store as 16-byte vectors (Vec16), the 8-entry cos/sin table chunk, and when the
// vectorized path applies. Device structs plus the host checks and predicate.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/backend.hpp"
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

// One rotated pair: (x0, x1) at angle (c, s) -> (y0, y1), in f32. Every forward rope kernel
// (rope.cu, mla_assemble.cu) goes through this one expression, so that they round (and contract
// to FMA) alike and agree bit for bit.
__device__ inline void rotate_pair(float x0, float x1, float c, float s, float& y0, float& y1) {
  y0 = x0 * c - x1 * s;
  y1 = x1 * c + x0 * s;
}

// The first dims of the two 8-dim chunks that hold rotary pairs [first, first + 8) (first a
// multiple of 8) behind `offset`: half-split pairs (i, i + half) are at offset + first and
// offset + half + first; interleaved pairs (2i, 2i + 1) fill the 16 dims from offset + 2·first.
struct GroupDims {
  uint32_t a, b;
};
__device__ inline GroupDims group_dims(uint32_t offset, uint32_t first, uint32_t half,
                                       bool interleaved) {
  const uint32_t pa = offset + (interleaved ? 2 * first : first);
  return {pa, interleaved ? pa + 8 : pa + half};
}

// Rotates one group of 8 pairs held in va (dims group_dims.a..+8) and vb (.b..+8) in place, with
// the group's cos/sin entries c, s.
template <typename T>
__device__ inline void rotate_group(RopeChunk<T>& va, RopeChunk<T>& vb, const TableChunk& c,
                                    const TableChunk& s, bool interleaved) {
  float oa[8], ob[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    // pair j: half-split (va[j], vb[j]); interleaved elements 2j, 2j + 1 of va|vb
    const float x0 = interleaved ? (j < 4 ? va.get(2 * j) : vb.get(2 * j - 8)) : va.get(j);
    const float x1 = interleaved ? (j < 4 ? va.get(2 * j + 1) : vb.get(2 * j - 7)) : vb.get(j);
    float y0, y1;
    rotate_pair(x0, x1, c.v[j], s.v[j], y0, y1);
    if (interleaved) {
      float* dst = j < 4 ? oa : ob;
      dst[(2 * j) % 8] = y0;
      dst[(2 * j + 1) % 8] = y1;
    } else {
      oa[j] = y0;
      ob[j] = y1;
    }
  }
  va.set(oa);
  vb.set(ob);
}

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

// The table rows a rope kernel reads, on the device: [first_position, first_position +
// min(T, segment)) (every segment starts at first_position; table row t % segment serves row t).
// A device table is viewed in place; a host one is copied per call by `be.upload` (no cache keyed
// by host addresses: a table may be rebuilt at the same address).
struct RopeRows {
  Tensor cos, sin;
};
inline RopeRows rope_rows(Backend& be, const RopeTable& table, int64_t first_position,
                          int64_t t_count, int64_t segment) {
  const int64_t end = first_position + std::min(t_count, segment);
  return {be.upload(table.cos.slice(first_position, end)),
          be.upload(table.sin.slice(first_position, end))};
}

}  // namespace refinery::backend::cuda::rope_detail
