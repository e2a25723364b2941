#pragma once
// PTX building blocks of the tensor-core kernels (flash_attention*.cu, grouped_gemm*.cu): cp.async
// global -> shared copies, ldmatrix fragment loads and the bf16 mma.sync m16n8k16, with the
// fragment layouts they rely on; the attention kernels' exp2 and bf16 pair packing. Device code only.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

namespace refinery::backend::cuda::ptx {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers; `valid` false writes 16 zero bytes
// (src-size 0: nothing is read) for rows past the end of the source (q/k/v rows, a group's rows, columns past n or k).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ldmatrix .x4: lanes 8i..8i+7 give the row addresses (16 bytes each) of 8x8 matrix i; afterwards
// register i of lane L holds row L/4, columns 2(L%4), 2(L%4)+1 of matrix i (low half = lower
// column). With .trans, register i of lane L holds rows 2(L%4), 2(L%4)+1 of column L/4 instead.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// D += A·B for A 16x16 bf16 (row), B 16x8 bf16 (col), D 16x8 f32. Fragment layout (PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type"), g = lane / 4, c = lane % 4:
//   A: a[0] = (row g,   cols 2c, 2c+1)   a[1] = (row g+8, cols 2c, 2c+1)
//      a[2] = (row g,   cols 2c+8, +9)   a[3] = (row g+8, cols 2c+8, +9)
//   B: b0 = (k rows 2c, 2c+1; col g)     b1 = (k rows 2c+8, 2c+9; col g)
//   D: d[0], d[1] = (row g, cols 2c, 2c+1)   d[2], d[3] = (row g+8, cols 2c, 2c+1)
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with the MUFU approximation (relative error ~2^-22); -inf gives +0, which the attention
// kernels' masking relies on. ftz: results below 2^-126 become 0, far below what bf16 resolves.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two f32 as a bf16 pair (round to nearest even), `lo` in the low 16 bits = the lower column.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

}  // namespace refinery::backend::cuda::ptx
