// Causal attention with GQA/MQA and MLA head widths (dk != dv) over a KV cache.
//
// Design: one task per (query head, block of 64 queries). Scores [block, keys] = Q·Kᵀ·scale with
// an Eigen GEMM on strided maps of the [T, H, d] / [S, KV, d] layouts (no transposed copies), the
// causal mask, a row softmax in f32, then out = P·V. Memory per task is block × S floats, so long
// prefills never build [T, S] per head at once.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void causal_softmax_rows(float* scores, int64_t rows, int64_t keys, int64_t first_visible,
                         float scale) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t visible = first_visible + i;
    float* row = scores + i * keys;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) {
      row[j] *= scale;
      mx = std::max(mx, row[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < keys; ++j) row[j] = 0.0f;
  }
}

namespace {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::OuterStride<>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Strided>;
using StridedMap = Eigen::Map<RowMatrix, 0, Strided>;
constexpr int64_t kQueryBlock = 64;
}  // namespace

void CpuBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                           Tensor& out) {
  const AttentionSizes sizes = check_attention(Device::kCPU, q, k, v, out);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, dk = sizes.dk;
  const int64_t s_count = sizes.s_count, kv_heads = sizes.kv_heads, dv = sizes.dv;
  const int64_t group = heads / kv_heads;
  const int64_t past = s_count - t_count;  // keys before the first query
  const int64_t blocks = (t_count + kQueryBlock - 1) / kQueryBlock;
  const float* pq = q.data<float>();
  const float* pk = k.data<float>();
  const float* pv = v.data<float>();
  float* po = out.mutable_data<float>();

  const bool parallel = t_count * s_count * heads * (dk + dv) >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    RowMatrix scores;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t t0 = b * kQueryBlock, n = std::min(kQueryBlock, t_count - t0);
        const int64_t keys = past + t0 + n;  // the last query of the block sees this many keys
        const int64_t kvh = h / group;
        ConstStridedMap qm(pq + (t0 * heads + h) * dk, n, dk, Strided(heads * dk));
        ConstStridedMap km(pk + kvh * dk, keys, dk, Strided(kv_heads * dk));
        ConstStridedMap vm(pv + kvh * dv, keys, dv, Strided(kv_heads * dv));
        scores.resize(n, keys);
        scores.noalias() = qm * km.transpose();
        causal_softmax_rows(scores.data(), n, keys, past + t0 + 1, scale);
        StridedMap om(po + (t0 * heads + h) * dv, n, dv, Strided(heads * dv));
        om.noalias() = scores * vm;
      }
    }
  }
}

}  // namespace refinery::backend::cpu
