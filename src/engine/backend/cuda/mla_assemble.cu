// mla_assemble_kv on the GPU: MLA's per-head keys and values in one pass, instead of the
// reference sequence (Backend::mla_assemble_kv: k_pe copied out of ckv, rope on it, three
// column copies). For every (token t, head h) row, with kv_row = kv[t, h·(dn + dv) ...]:
//   keys[t, h, :dn] = kv_row[:dn],  values[t, h, :] = kv_row[dn:],
//   keys[t, h, dn:] = rope(ckv[t, C - dr:]) at position first_position + t % segment.
// The rope part is recomputed per head from ckv (H reads of the same 2·dr bytes, L1/L2 hits)
// rather than staged in memory; it goes through rope_vector.cuh's rotate_group / rotate_pair, the
// code rope.cu runs, so the keys equal the reference's bit for bit.
// Vectorized path (dn, dv, dr/2 and C multiples of 8, 16-byte aligned operands: DeepSeek V2/V3
// have dn = dv = 128, dr = 64, C = 576): one thread per 8-dim chunk of a row (dn/8 key chunks,
// dv/8 value chunks) or per group of 8 rotary pairs (two key chunks), 16-byte loads and stores,
// a flat grid-stride loop. Memory bound: kv read once, keys and values written once.
// General path: one 64-thread block per (token, head) row, scalar.
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/cuda/rope_vector.cuh"

namespace refinery::backend::cuda {

namespace {

using namespace rope_detail;

// cos/sin: [min(T, segment), half] rows; kv [rows, dn + dv] (rows = T·H), ckv [T, ckv_cols],
// keys [rows, dn + 2·half], values [rows, dv].
template <typename T>
__global__ void mla_assemble_kernel(const T* kv, const T* ckv, const float* cos_table,
                                    const float* sin_table, int64_t heads, int64_t dn, int64_t dv,
                                    int64_t half, int64_t ckv_cols, int64_t segment,
                                    bool interleaved, T* keys, T* values) {
  const int64_t row = blockIdx.x;  // t * heads + h
  const int64_t t = row / heads, dk = dn + 2 * half;
  const T* kv_row = kv + row * (dn + dv);
  const T* k_pe = ckv + t * ckv_cols + (ckv_cols - 2 * half);
  T* k_row = keys + row * dk;
  T* v_row = values + row * dv;
  for (int64_t j = threadIdx.x; j < dn; j += blockDim.x) k_row[j] = kv_row[j];
  for (int64_t j = threadIdx.x; j < dv; j += blockDim.x) v_row[j] = kv_row[dn + j];
  const float* c = cos_table + (t % segment) * half;
  const float* s = sin_table + (t % segment) * half;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    float y0, y1;
    rotate_pair(to_f32(k_pe[a]), to_f32(k_pe[b]), c[i], s[i], y0, y1);
    k_row[dn + a] = from_f32<T>(y0);
    k_row[dn + b] = from_f32<T>(y1);
  }
}

// Vectorized: items of a row = dn/8 key chunks, dv/8 value chunks (together the kv row in order,
// so a warp reads kv contiguously), then half/8 rope groups.
template <typename T>
__global__ void mla_assemble_vec_kernel(const T* kv, const T* ckv, const float* cos_table,
                                        const float* sin_table, uint32_t rows, uint32_t heads,
                                        uint32_t dn, uint32_t dv, uint32_t half, uint32_t ckv_cols,
                                        uint32_t segment, bool interleaved, T* keys, T* values) {
  const uint32_t nope = dn / 8, copies = nope + dv / 8, items = copies + half / 8;
  const uint32_t dk = dn + 2 * half;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * items;
       i += gridDim.x * blockDim.x) {
    const uint32_t row = i / items, item = i % items;
    if (item < copies) {
      RopeChunk<T> v;
      v.load(kv + static_cast<int64_t>(row) * (dn + dv) + item * 8);
      if (item < nope)
        v.store(keys + static_cast<int64_t>(row) * dk + item * 8);
      else
        v.store(values + static_cast<int64_t>(row) * dv + (item - nope) * 8);
      continue;
    }
    const uint32_t t = row / heads, first = (item - copies) * 8;
    TableChunk c, s;
    c.load(cos_table + static_cast<int64_t>(t % segment) * half + first);
    s.load(sin_table + static_cast<int64_t>(t % segment) * half + first);
    const GroupDims g = group_dims(0, first, half, interleaved);
    const T* k_pe = ckv + static_cast<int64_t>(t) * ckv_cols + (ckv_cols - 2 * half);
    RopeChunk<T> va, vb;
    va.load(k_pe + g.a);
    vb.load(k_pe + g.b);
    rotate_group(va, vb, c, s, interleaved);
    T* k_rope = keys + static_cast<int64_t>(row) * dk + dn;
    va.store(k_rope + g.a);
    vb.store(k_rope + g.b);
  }
}

}  // namespace

void CudaBackend::mla_assemble_kv(const Tensor& kv, const Tensor& ckv, const RopeTable& table,
                                  int64_t first_position, int64_t segment_length, Tensor& keys,
                                  Tensor& values) {
  OpTimer timer(profiler_, stream_, "mla_assemble_kv");
  const MlaKvSizes z = check_mla_assemble_kv(Device::kCUDA, kv, ckv, table, first_position,
                                             segment_length, keys, values);
  const int64_t t_count = z.t_count, heads = z.heads, dn = z.dn, dv = z.dv, half = z.dr / 2;
  const int64_t rows = t_count * heads;
  check_rope_tables(table, half, rows, "mla_assemble_kv");
  if (rows == 0) return;
  const RopeRows table_rows = rope_rows(*this, table, first_position, t_count, z.segment);
  const Tensor &cos_rows = table_rows.cos, &sin_rows = table_rows.sin;
  const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
  dispatch_activation(keys.dtype(), "mla_assemble_kv", [&](auto tag) {
    using T = decltype(tag);
    const T* kv_p = static_cast<const T*>(kv.data());
    const T* ckv_p = static_cast<const T*>(ckv.data());
    T* keys_p = static_cast<T*>(keys.mutable_data());
    T* values_p = static_cast<T*>(values.mutable_data());
    const float* cos_p = cos_rows.data<float>();
    const float* sin_p = sin_rows.data<float>();
    const int64_t items = dn / 8 + dv / 8 + half / 8;
    const bool vector = dn % 8 == 0 && dv % 8 == 0 && half % 8 == 0 && z.ckv_cols % 8 == 0 &&
                        aligned16(kv_p) && aligned16(ckv_p) && aligned16(keys_p) &&
                        aligned16(values_p) && aligned16(cos_p) && aligned16(sin_p) &&
                        rows * items < (int64_t{1} << 31);
    if (vector) {
      mla_assemble_vec_kernel<T><<<grid_for(rows * items), kThreads, 0, stream_>>>(
          kv_p, ckv_p, cos_p, sin_p, static_cast<uint32_t>(rows), static_cast<uint32_t>(heads),
          static_cast<uint32_t>(dn), static_cast<uint32_t>(dv), static_cast<uint32_t>(half),
          static_cast<uint32_t>(z.ckv_cols), static_cast<uint32_t>(z.segment), interleaved,
          keys_p, values_p);
      return;
    }
    mla_assemble_kernel<T><<<static_cast<unsigned>(rows), kRopeThreads, 0, stream_>>>(
        kv_p, ckv_p, cos_p, sin_p, heads, dn, dv, half, z.ckv_cols, z.segment, interleaved, keys_p,
        values_p);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "mla_assemble_kv");
}

}  // namespace refinery::backend::cuda
