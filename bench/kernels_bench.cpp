// kernels_bench [--experts-only]
// Achieved throughput of the CUDA backend's heavy ops on the shapes of issue 4's benchmark models,
// through the Backend interface (what the engine runs), bf16 activations and weights:
//   gemm       linear x[8192, 4096] · W[14336, 4096]ᵀ (a 7B MLP projection)       -> TFLOP/s
//   attention  causal prefill, L = 2048: MLA 16 heads dk 192 / dv 128 (V2-Lite), GQA 32/8 dk 128
//              (Llama 7B); FLOPs = 2·H·(dk + dv)·L(L+1)/2                          -> TFLOP/s
//              by default and with each flash kernel forced (REFINERY_ATTN_KERNEL=mma|wgmma,
//              wgmma on compute 9.0 only; 10 launches per timed run, so the sync is amortized)
//   attention_backward  L = 2048, 32 heads of 64, GQA 32/4 (the 1.4B student), fused kernels
//              (flash) and the cuBLAS path (REFINERY_ATTN_BWD=cublas); FLOPs = 2.5x the forward's
//              causal count (the standard 5 GEMMs over the causal half)              -> TFLOP/s
//              then each fused kernel forced (REFINERY_ATTN_BWD_KERNEL=mma|wgmma, wgmma on
//              compute 9.0 only) for GQA 32/4 of 64 and GQA 32/8 of 128
//   experts    moe_experts, T = 2048 and 8192 tokens, 64 experts of 2048 -> 1408, top-6
//              (distinct experts per token, uniform); FLOPs = 2·T·k·3·2048·1408     -> TFLOP/s
//              by default and with each route forced (REFINERY_MOE_GEMM=ggemm|cublas); then the
//              grouped GEMM kernels alone on the gate|up shape (mma.sync, wgmma 128x128 and
//              128x256 tiles, with and without the fused SwiGLU) and on the down shape (n 2048,
//              k 1408, every wgmma tile)                                              -> TFLOP/s
//   copy       add of two 2^28-element bf16 tensors: 3 x 512 MiB moved             -> TB/s
// Prints one JSON line. The card's ceilings (issue 4): bf16 GEMM ≈ 779 TFLOP/s, copy ≈ 2.99 TB/s.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/cuda/flash_attention.hpp"
#include "engine/backend/cuda/grouped_gemm.hpp"
#include "engine/core/error.hpp"

namespace {

using namespace refinery;
using Clock = std::chrono::steady_clock;

using bench::random_bf16;

// Median seconds of `iters` runs of fn after one warm-up; `sync` waits for the device.
double time_it(const std::function<void()>& fn, const std::function<void()>& sync, int iters = 5) {
  fn();
  sync();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto start = Clock::now();
    fn();
    sync();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // --experts-only: only the routed-experts section (the MoE op and the grouped GEMM kernels).
    const bool experts_only = argc > 1 && std::string(argv[1]) == "--experts-only";
    if (argc > 1 && !experts_only)
      throw_user_error("kernels_bench: unknown argument '", argv[1], "'; usage: kernels_bench [--experts-only]");
    if (cuda::list_devices().empty()) throw_user_error(cuda::no_device_reason());
    auto be = backend::make_cuda_backend(0);
    std::string json = "{\"device\": \"" + cuda::list_devices()[0].name + "\"";
    Tensor probe = be->empty(DType::kBF16, {1});
    auto sync = [&] { be->download(probe); };

    if (!experts_only) {  // dense GEMM
      const int64_t m = 8192, k = 4096, n = 14336;
      const Tensor x = random_bf16({m, k}, 1, 1.0f);
      backend::LinearWeight w;
      w.name = "bench.gemm";
      w.storage = backend::DenseWeight{random_bf16({n, k}, 2, 0.02f)};
      Tensor y = be->empty(DType::kBF16, {m, n});
      const double s = time_it([&] { be->linear(x, w, y); }, sync);
      json += str(", \"gemm_8192x4096x14336_tflops\": ", 2.0 * m * k * n / s / 1e12);
    }
    struct AttentionShape { const char* name; int64_t heads, kv, dk, dv; };
    for (const AttentionShape a : {AttentionShape{"mla_16x192x128", 16, 16, 192, 128},
                                   AttentionShape{"gqa_32x8x128", 32, 8, 128, 128}}) {
      if (experts_only) break;
      const int64_t l = 2048;
      const Tensor q = random_bf16({l, a.heads, a.dk}, 3, 1.0f);
      const Tensor k = random_bf16({l, a.kv, a.dk}, 4, 1.0f);
      const Tensor v = random_bf16({l, a.kv, a.dv}, 5, 1.0f);
      Tensor out = be->empty(DType::kBF16, {l, a.heads, a.dv});
      const float scale = 1.0f / std::sqrt(static_cast<float>(a.dk));
      const double s = time_it([&] { be->attention(q, k, v, scale, out); }, sync);
      const double flops = 2.0 * a.heads * (a.dk + a.dv) * (l * (l + 1) / 2.0);
      json += str(", \"attention_", a.name, "_L2048_tflops\": ", flops / s / 1e12);
    }
    // The two flash attention kernels forced (REFINERY_ATTN_KERNEL): mma.sync and, on compute
    // 9.0, the Hopper warpgroup-MMA kernel (flash_attention_sm90a.cu).
    for (const char* kernel : {"mma", "wgmma"}) {
      if (experts_only) break;
      if (std::string(kernel) == "wgmma" && !backend::cuda::flash_attention_wgmma_available())
        continue;
      setenv("REFINERY_ATTN_KERNEL", kernel, 1);
      for (const AttentionShape a : {AttentionShape{"mla_16x192x128", 16, 16, 192, 128},
                                     AttentionShape{"gqa_32x8x128", 32, 8, 128, 128}}) {
        const int64_t l = 2048;
        const Tensor q = random_bf16({l, a.heads, a.dk}, 3, 1.0f);
        const Tensor k = random_bf16({l, a.kv, a.dk}, 4, 1.0f);
        const Tensor v = random_bf16({l, a.kv, a.dv}, 5, 1.0f);
        Tensor out = be->empty(DType::kBF16, {l, a.heads, a.dv});
        const float scale = 1.0f / std::sqrt(static_cast<float>(a.dk));
        // 10 back-to-back launches per timing: one ~60 µs kernel is not much longer than the sync.
        const double s =
            time_it([&] { for (int r = 0; r < 10; ++r) be->attention(q, k, v, scale, out); }, sync) /
            10;
        const double flops = 2.0 * a.heads * (a.dk + a.dv) * (l * (l + 1) / 2.0);
        json += str(", \"attention_", kernel, "_", a.name, "_L2048_tflops\": ", flops / s / 1e12);
      }
    }
    unsetenv("REFINERY_ATTN_KERNEL");
    // Attention backward: the default kernels and each kernel forced (REFINERY_ATTN_BWD_KERNEL:
    // mma.sync, and on compute 9.0 the Hopper wgmma kernels of flash_attention_backward_sm90a.cu),
    // GQA 32/4 of 64 (the 1.4B student) and GQA 32/8 of 128.
    if (!experts_only) {
      struct BwdShape { const char* name; int64_t heads, kv, d; };
      for (const BwdShape a :
           {BwdShape{"gqa_32x4x64", 32, 4, 64}, BwdShape{"gqa_32x8x128", 32, 8, 128}}) {
        const int64_t l = 2048, heads = a.heads, kv = a.kv, d = a.d;
        const Tensor q = random_bf16({l, heads, d}, 20, 1.0f);
        const Tensor k = random_bf16({l, kv, d}, 21, 1.0f);
        const Tensor v = random_bf16({l, kv, d}, 22, 1.0f);
        const Tensor dout = random_bf16({l, heads, d}, 23, 1.0f);
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        Tensor out = be->empty(DType::kBF16, {l, heads, d});
        be->attention(q, k, v, scale, out);
        Tensor dq = be->empty(DType::kBF16, {l, heads, d});
        Tensor dk = be->empty(DType::kBF16, {l, kv, d}), dv = be->empty(DType::kBF16, {l, kv, d});
        for (Tensor* g : {&dq, &dk, &dv}) be->fill_zero(*g);
        const double flops = 2.5 * 2.0 * heads * (d + d) * (l * (l + 1) / 2.0);
        auto run = [&] { be->attention_backward(q, k, v, out, dout, scale, dq, dk, dv); };
        if (d == 64) {  // the entries of earlier sessions: the default flash kernels and cuBLAS
          for (const char* path : {"flash", "cublas"}) {
            setenv("REFINERY_ATTN_BWD", path, 1);
            const double s = time_it(run, sync);
            json += str(", \"attention_backward_", path, "_", a.name, "_L2048_tflops\": ",
                        flops / s / 1e12);
          }
        }
        setenv("REFINERY_ATTN_BWD", "flash", 1);
        for (const char* kernel : {"mma", "wgmma"}) {
          if (std::string(kernel) == "wgmma" && !backend::cuda::flash_attention_wgmma_available())
            continue;
          setenv("REFINERY_ATTN_BWD_KERNEL", kernel, 1);
          const double s = time_it(run, sync);
          json += str(", \"attention_backward_", kernel, "_", a.name, "_L2048_tflops\": ",
                      flops / s / 1e12);
        }
        unsetenv("REFINERY_ATTN_BWD_KERNEL");
        unsetenv("REFINERY_ATTN_BWD");
      }
    }
    {  // routed experts
      const int64_t hidden = 2048, inter = 1408, e_count = 64, top = 6;
      std::vector<backend::ExpertWeights> experts;
      for (int64_t e = 0; e < e_count; ++e) {
        backend::ExpertWeights w;
        w.gate.storage = backend::DenseWeight{random_bf16({inter, hidden}, 10 + 3 * e, 0.02f)};
        w.up.storage = backend::DenseWeight{random_bf16({inter, hidden}, 11 + 3 * e, 0.02f)};
        w.down.storage = backend::DenseWeight{random_bf16({hidden, inter}, 12 + 3 * e, 0.02f)};
        w.gate.name = w.up.name = w.down.name = "bench.expert";
        experts.push_back(std::move(w));
      }
      for (const int64_t t : {int64_t{2048}, int64_t{8192}}) {
        std::mt19937_64 rng(42);
        std::vector<int32_t> chosen(static_cast<std::size_t>(t * top));
        std::vector<float> weights(chosen.size(), 1.0f / top);
        std::vector<int32_t> all(e_count);
        std::iota(all.begin(), all.end(), 0);
        for (int64_t i = 0; i < t; ++i) {
          std::shuffle(all.begin(), all.end(), rng);
          std::copy(all.begin(), all.begin() + top, chosen.begin() + i * top);
        }
        const Tensor x = random_bf16({t, hidden}, 7, 1.0f);
        const Tensor ids = Tensor::copy_of(DType::kI32, {t, top}, chosen.data()).to(Device::kCUDA);
        const Tensor w = Tensor::copy_of(DType::kF32, {t, top}, weights.data()).to(Device::kCUDA);
        Tensor y = be->empty(DType::kBF16, {t, hidden});
        const double flops = 2.0 * t * top * 3 * hidden * inter;
        const double s = time_it([&] { be->moe_experts(x, ids, w, experts, y); }, sync);
        json += str(", \"experts_T", t, "_tflops\": ", flops / s / 1e12);
        for (const char* route : {"ggemm", "cublas"}) {  // the two routes of moe.cu, forced
          setenv("REFINERY_MOE_GEMM", route, 1);
          const double sr = time_it([&] { be->moe_experts(x, ids, w, experts, y); }, sync);
          json += str(", \"experts_", route, "_T", t, "_tflops\": ", flops / sr / 1e12);
        }
        unsetenv("REFINERY_MOE_GEMM");
        // The grouped GEMM kernels alone on the gate|up shape (rows per expert as routed above), on
        // the legacy default stream (the backend's stream is a blocking one: sync() waits for it).
        std::vector<int32_t> offsets(static_cast<std::size_t>(e_count + 1), 0);
        for (const int32_t e : chosen) ++offsets[e + 1];
        std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
        const int64_t rows = t * top;
        const Tensor off = Tensor::copy_of(DType::kI32, {e_count + 1}, offsets.data()).to(Device::kCUDA);
        const Tensor xs = random_bf16({rows, hidden}, 8, 1.0f);
        const Tensor gate_up = random_bf16({e_count, 2 * inter, hidden}, 9, 0.02f);
        Tensor gu = be->empty(DType::kBF16, {rows, 2 * inter});
        const double gemm_flops = 2.0 * rows * 2 * inter * hidden;
        struct Variant {
          const char* name;
          backend::cuda::GroupedGemmKernel kernel;
          const char* tile;
        };
        for (const Variant& v : {Variant{"mma", backend::cuda::GroupedGemmKernel::kMmaSync, ""},
                                 Variant{"wgmma", backend::cuda::GroupedGemmKernel::kWgmma, "128x128"},
                                 Variant{"wgmma256", backend::cuda::GroupedGemmKernel::kWgmma,
                                         "128x256"},
                                 Variant{"ws128", backend::cuda::GroupedGemmKernel::kWgmma,
                                         "ws128x128"},
                                 Variant{"ws256", backend::cuda::GroupedGemmKernel::kWgmma,
                                         "ws128x256"},
                                 Variant{"pws256", backend::cuda::GroupedGemmKernel::kWgmma,
                                         "pws128x256"},
                                 Variant{"tws256", backend::cuda::GroupedGemmKernel::kWgmma,
                                         "tws128x256"}}) {
          if (v.kernel == backend::cuda::GroupedGemmKernel::kWgmma &&
              !backend::cuda::grouped_gemm_wgmma_available())
            continue;
          setenv("REFINERY_GGEMM_TILE", v.tile, 1);
          const backend::cuda::GroupedGemmArgs args{xs.data(), gate_up.data(), gu.mutable_data(),
                                                    off.data<int32_t>(), e_count, rows,
                                                    2 * inter, hidden, false};
          const double sg = time_it(
              [&] { backend::cuda::grouped_gemm_bf16(args, nullptr, v.kernel); }, sync);
          json += str(", \"ggemm_", v.name, "_gate_up_T", t, "_tflops\": ", gemm_flops / sg / 1e12);
        }
        unsetenv("REFINERY_GGEMM_TILE");
        if (backend::cuda::grouped_gemm_fused_swiglu_available()) {  // + SwiGLU in the epilogue
          Tensor h = be->empty(DType::kBF16, {rows, inter});
          const backend::cuda::GroupedGemmArgs args{
              xs.data(), gate_up.data(), h.mutable_data(), off.data<int32_t>(), e_count, rows,
              inter, hidden, false, nullptr, true};
          for (const char* tile : {"128x128", "ws128x128", "ws128x256", "pws128x256", "tws128x256"}) {
            setenv("REFINERY_GGEMM_TILE", tile, 1);
            const double sg =
                time_it([&] { backend::cuda::grouped_gemm_bf16(args, nullptr); }, sync);
            json += str(", \"ggemm_wgmma_swiglu", tile, "_gate_up_T", t, "_tflops\": ",
                        gemm_flops / sg / 1e12);
          }
          unsetenv("REFINERY_GGEMM_TILE");
        }
        {  // the down projection's shape (n = hidden 2048, k = inter 1408), every wgmma tile
          const Tensor hs = random_bf16({rows, inter}, 13, 1.0f);
          const Tensor down = random_bf16({e_count, hidden, inter}, 14, 0.02f);
          Tensor outs = be->empty(DType::kBF16, {rows, hidden});
          const double down_flops = 2.0 * rows * hidden * inter;
          const backend::cuda::GroupedGemmArgs args{hs.data(), down.data(), outs.mutable_data(),
                                                    off.data<int32_t>(), e_count, rows, hidden,
                                                    inter, false};
          for (const char* tile : {"128x128", "128x256", "ws128x128", "ws128x256", "pws128x256",
                                   "tws128x256"}) {
            if (!backend::cuda::grouped_gemm_wgmma_available()) break;
            setenv("REFINERY_GGEMM_TILE", tile, 1);
            const double sd = time_it([&] { backend::cuda::grouped_gemm_bf16(args, nullptr); }, sync);
            json += str(", \"ggemm_wgmma", tile, "_down_T", t, "_tflops\": ", down_flops / sd / 1e12);
          }
          unsetenv("REFINERY_GGEMM_TILE");
        }
      }
    }
    if (!experts_only) {  // copy bandwidth
      const int64_t n = int64_t{1} << 28;
      Tensor a = be->empty(DType::kBF16, {n}), b = be->empty(DType::kBF16, {n});
      be->fill_zero(a);
      be->fill_zero(b);
      Tensor y = be->empty(DType::kBF16, {n});
      const double s = time_it([&] { be->add(a, b, y); }, sync);
      json += str(", \"add_bf16_tb_s\": ", 3.0 * n * 2 / s / 1e12);
    }
    std::cout << json << "}" << std::endl;
    return 0;
  } catch (const Error& e) {
    std::cerr << "kernels_bench: " << e.what() << "\n";
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
}
