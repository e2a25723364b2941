#pragma once
// Helpers shared by the GPU benchmarks (kernels_bench, awq_bench).
#include <random>
#include <utility>
#include <vector>

#include "engine/core/tensor.hpp"

namespace refinery::bench {

// A tensor of normal(0, scale) values rounded to bf16, on the CUDA device; seeded, so every run
// and every benchmark sees the same numbers.
inline Tensor random_bf16(std::vector<int64_t> shape, uint64_t seed, float scale) {
  Tensor f = Tensor::empty(DType::kF32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  float* p = f.mutable_data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) p[i] = normal(rng);
  Tensor b = Tensor::empty(DType::kBF16, f.shape());
  convert_from_f32(DType::kBF16, p, b.mutable_data(), static_cast<std::size_t>(f.numel()));
  return b.to(Device::kCUDA);
}

}  // namespace refinery::bench
