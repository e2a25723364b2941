// CUDA rope and attention vs the CPU backend. Bounds: rope within 1e-6 · max|y| (FMA contraction
// on the device); attention within 1e-5 · max|out| (f32 online softmax vs the CPU's two-pass
// softmax and GEMMs: different summation orders).
#include <cmath>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;

TEST(RopeGpu, MatchesCpuForEveryLayout) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  struct Case {
    int64_t t, heads, d, offset;
    int rotary;
    model::RopePairing pairing;
    int64_t first;
  };
  const Case cases[] = {
      {1, 5, 64, 0, 64, model::RopePairing::kHalfSplit, 0},
      {7, 5, 64, 0, 64, model::RopePairing::kInterleaved, 3},
      {33, 3, 192, 128, 64, model::RopePairing::kInterleaved, 10},  // MLA rope part
      {7, 1, 192, 128, 64, model::RopePairing::kHalfSplit, 0},
      {7, 4, 100, 0, 50, model::RopePairing::kHalfSplit, 2},        // partial rotary
      {33, 2, 256, 16, 200, model::RopePairing::kInterleaved, 40},  // offset and partial
  };
  uint64_t seed = 1000;
  for (const Case& c : cases) {
    const backend::RopeTable table = random_table(c.first + c.t + 5, c.rotary, c.pairing, ++seed);
    const Tensor x = random_f32({c.t, c.heads, c.d}, ++seed);
    Tensor want = Tensor::empty(DType::kF32, {c.t, c.heads, c.d});
    cpu->rope(x, table, c.first, c.offset, want);
    const std::string what =
        str("rope T=", c.t, " heads=", c.heads, " D=", c.d, " offset=", c.offset,
            " rotary=", c.rotary, " first=", c.first,
            c.pairing == model::RopePairing::kInterleaved ? " interleaved" : " half-split");
    const double tol = 1e-6 * max_abs(want);
    Tensor got = poisoned_gpu({c.t, c.heads, c.d});
    be->rope(gpu(x), table, c.first, c.offset, got);  // host table
    EXPECT_TRUE(close(what + " (host table)", got, want, tol));
    backend::RopeTable device_table = table;
    device_table.cos = be->upload(table.cos);
    device_table.sin = be->upload(table.sin);
    Tensor inplace = gpu(x);
    be->rope(inplace, device_table, c.first, c.offset, inplace);
    EXPECT_TRUE(close(what + " (device table, in place)", inplace, want, tol));
  }
}

TEST(AttentionGpu, MatchesCpuForGqaMlaAndCachedKeys) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  struct Case {
    int64_t t, s, heads, kv, dk, dv;
  };
  const Case cases[] = {
      {1, 1, 5, 1, 64, 64},      // first token
      {7, 7, 5, 1, 64, 64},      // MQA prefill
      {33, 33, 8, 2, 72, 72},    // GQA, odd head width
      {1, 40, 4, 4, 128, 128},   // decode against a cache
      {7, 300, 6, 3, 32, 48},    // several key chunks, dk != dv
      {33, 40, 5, 5, 192, 128},  // MLA widths
      {3, 129, 2, 1, 256, 256},  // the kernel's widest heads, a chunk boundary
      {130, 130, 1, 1, 16, 8},   // more queries than a chunk
      // Decode with the keys split over blocks (attention.cu: few (query, head) pairs, S >= 128):
      {1, 2000, 32, 8, 128, 128},  // a 7B Llama step against a long cache
      {1, 1000, 16, 16, 192, 128},  // MLA widths
      {2, 777, 4, 2, 64, 64},      // two queries: the first sees one key fewer (last split ragged)
      {1, 128, 8, 8, 64, 64},      // the shortest cache that is split
  };
  uint64_t seed = 2000;
  for (const Case& c : cases) {
    const Tensor q = random_f32({c.t, c.heads, c.dk}, ++seed);
    const Tensor k = random_f32({c.s, c.kv, c.dk}, ++seed);
    const Tensor v = random_f32({c.s, c.kv, c.dv}, ++seed);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
    Tensor want = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
    cpu->attention(q, k, v, scale, want);
    Tensor got = poisoned_gpu({c.t, c.heads, c.dv});
    be->attention(gpu(q), gpu(k), gpu(v), scale, got);
    EXPECT_TRUE(close(str("attention T=", c.t, " S=", c.s, " H=", c.heads, " KV=", c.kv,
                          " dk=", c.dk, " dv=", c.dv),
                      got, want, 1e-5 * max_abs(want)));
  }
}

}  // namespace
}  // namespace refinery
