// train_kernels_bench
// Achieved memory bandwidth of the memory-bound training ops of the 1.4B dense student (hidden
// 2048, intermediate 5632, 32 heads of 64 with 4 KV heads, batch 4 x 2048 = 8192 tokens), through
// the Backend interface (what the trainer runs):
//   rms_norm_backward  x f32 [8192, 2048] (residual stream), dy bf16, weight f32, dx f32 and
//                      dweight f32: bytes = x + dy + 2·dx (dx is read and written)
//   swiglu_backward    gate, up, dy, dgate, dup bf16 [8192, 5632]: bytes = 3 reads + 2 x (read +
//                      write) = 7 tensors
//   rope               q bf16 [8192, 32, 64] and k [8192, 4, 64], half-split pairs, device
//                      table: bytes = 2 x tensor (+ the table rows)
//   rope_backward      the same shapes: bytes = 3 x tensor (dy read, dx read and written)
//   add_bf16           y = a + b over 2^27 bf16 elements: the card's copy ceiling, for scale
// Each op is timed as the median of 5 runs of 20 back-to-back calls (launch overhead amortised)
// divided by 20; microseconds per call and GB/s (10^9 bytes/s). Prints one JSON line.
#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/rope_table.hpp"
#include "engine/core/error.hpp"

namespace {

using namespace refinery;
using Clock = std::chrono::steady_clock;

using bench::random_bf16;

constexpr int kCalls = 20;

// Median seconds per call: 5 runs of kCalls calls after a warm-up run; `sync` waits for the device.
double time_per_call(const std::function<void()>& fn, const std::function<void()>& sync) {
  for (int i = 0; i < kCalls; ++i) fn();
  sync();
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    const auto start = Clock::now();
    for (int i = 0; i < kCalls; ++i) fn();
    sync();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count() / kCalls);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A device f32 tensor of normal(0, scale) values, seeded.
Tensor random_f32_device(std::vector<int64_t> shape, uint64_t seed, float scale) {
  Tensor f = Tensor::empty(DType::kF32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  float* p = f.mutable_data<float>();
  for (int64_t i = 0; i < f.numel(); ++i) p[i] = normal(rng);
  return f.to(Device::kCUDA);
}

std::string entry(const std::string& name, double seconds, double bytes) {
  return str(", \"", name, "_us\": ", seconds * 1e6, ", \"", name, "_gb_s\": ", bytes / seconds / 1e9);
}

}  // namespace

int main() {
  try {
    if (cuda::list_devices().empty()) throw_user_error(cuda::no_device_reason());
    auto be = backend::make_cuda_backend(0, DType::kBF16);
    std::string json = "{\"device\": \"" + cuda::list_devices()[0].name + "\"";
    Tensor probe = be->empty(DType::kBF16, {1});
    auto sync = [&] { be->download(probe); };
    const int64_t tokens = 8192, hidden = 2048, inter = 5632, head_dim = 64;

    {  // rms_norm_backward
      const Tensor x = random_f32_device({tokens, hidden}, 1, 1.0f);
      const Tensor dy = random_bf16({tokens, hidden}, 2, 1.0f);
      const Tensor w = random_f32_device({hidden}, 3, 1.0f);
      Tensor dx = random_f32_device({tokens, hidden}, 4, 1.0f);
      Tensor dw = random_f32_device({hidden}, 5, 1.0f);
      const double s = time_per_call([&] { be->rms_norm_backward(x, w, 1e-6f, dy, dx, dw); }, sync);
      json += entry("rms_norm_backward_8192x2048", s, double(tokens * hidden) * (4 + 2 + 2 * 4));
    }
    {  // swiglu_backward
      const Tensor gate = random_bf16({tokens, inter}, 6, 2.0f);
      const Tensor up = random_bf16({tokens, inter}, 7, 1.0f);
      const Tensor dy = random_bf16({tokens, inter}, 8, 1.0f);
      Tensor dgate = random_bf16({tokens, inter}, 9, 1.0f);
      Tensor dup = random_bf16({tokens, inter}, 10, 1.0f);
      const double s = time_per_call([&] { be->swiglu_backward(gate, up, dy, dgate, dup); }, sync);
      json += entry("swiglu_backward_8192x5632", s, double(tokens * inter) * 2 * 7);
    }
    {  // rope / rope_backward on q and k
      model::RopeConfig config;
      config.rotary_dim = static_cast<int>(head_dim);
      backend::RopeTable table = backend::make_rope_table(config, tokens);
      table.cos = be->upload(table.cos);
      table.sin = be->upload(table.sin);
      for (const int64_t heads : {int64_t{32}, int64_t{4}}) {
        const Tensor x = random_bf16({tokens, heads, head_dim}, 11, 1.0f);
        Tensor y = be->empty(DType::kBF16, {tokens, heads, head_dim});
        Tensor dx = random_bf16({tokens, heads, head_dim}, 12, 1.0f);
        const double bytes = double(tokens * heads * head_dim) * 2;
        const std::string shape = str("8192x", heads, "x", head_dim);
        const double sf = time_per_call([&] { be->rope(x, table, 0, 0, y); }, sync);
        json += entry("rope_" + shape, sf, 2 * bytes);
        const double sb = time_per_call([&] { be->rope_backward(x, table, 0, 0, dx); }, sync);
        json += entry("rope_backward_" + shape, sb, 3 * bytes);
      }
    }
    {  // copy ceiling
      const int64_t n = int64_t{1} << 27;
      Tensor a = be->empty(DType::kBF16, {n}), b = be->empty(DType::kBF16, {n});
      be->fill_zero(a);
      be->fill_zero(b);
      Tensor y = be->empty(DType::kBF16, {n});
      const double s = time_per_call([&] { be->add(a, b, y); }, sync);
      json += entry("add_bf16_2e27", s, 3.0 * double(n) * 2);
    }
    std::cout << json << "}" << std::endl;
    return 0;
  } catch (const Error& e) {
    std::cerr << "train_kernels_bench: " << e.what() << "\n";
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
}
