// awq_bench
// The AWQ W4 (group 128) kernels of the CUDA backend against bf16 on a 7-8B model's projection
// shapes (issue 6), bf16 activations. `awq_bench [gemv|prefill|all|gemv-sweep]` (default all;
// prefill also runs dequant; gemv-sweep is not part of all). One line per case:
//   gemv       decode, x [rows, in] for rows 1 and 4 on the 5 decode shapes (gate or up alone,
//              qkv, o, gate|up fused, down): the raw launcher (awq_gemv_bf16_variant) with the
//              old default (kAwqGemvAutoAwqVariant, AutoAWQ layout) and the tiled kernel (tiled
//              layout, the default), then Backend::linear (what the engine runs: + argument
//              checks, upload cache, launch overheads; read-only host weights, tiled once on the
//              device), against Backend::linear on the bf16 weight (cuBLASLt), and the max abs
//              difference of the old and tiled f32 outputs. GB/s counts the weight bytes read
//              (W4: qweight + qzeros + scales; bf16: 2 bytes per weight) plus x and y.
//   dequant    the prefill dequantization alone (packed -> bf16 [out, in]) from each layout: GB/s
//              of bytes read + written.
//   prefill    x [2048, in] through Backend::linear, W4 (dequantize + cuBLASLt GEMM) vs bf16: µs,
//              TFLOP/s (2·T·in·out) and the ratio (the bar: <= 1.3).
//   gemv-sweep every GEMV variant (awq_gemv_variant_count; awq_gemv.cu) on the 5 decode shapes at
//              rows 1 and 4 through awq_gemv_bf16_variant: one line per (shape, rows, variant) with
//              µs, GB/s, what the variant ran (its kernel configuration and plan, or "base
//              (fallback)") and the max abs difference of its f32 output from variant 0's
//              (run on the same weight and x); then the best variant per (shape, rows), and per
//              variant the summed µs over the 5 shapes at rows 1 and at rows 4 (what a single
//              default would cost a decode step). Pick one with kAwqGemvDefaultVariant
//              (awq_linear.hpp) or try it in the engine with REFINERY_AWQ_GEMV=<name>.
// Each case cycles through enough copies of its weights to exceed the 50 MB L2 of an H100 (decode
// reads every layer's weights from memory once), times back-to-back calls between two
// synchronizations (µs per call = wall time / calls) and prints the median of 5 repetitions.
// Ceilings on an H100 SXM (issue 6): copy floor 10.4 µs for the 4096x14336 W4 GEMV, torch int4
// 26 µs, bf16 GEMV 56 µs.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/awq_linear.hpp"
#include "bench_util.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/error.hpp"

namespace {

using namespace refinery;
using backend::cuda::AwqDeviceMatrix;
using Clock = std::chrono::steady_clock;

constexpr int kGroup = 128;
constexpr double kL2Bytes = 160e6;  // copies of a weight fill at least this much

using bench::random_bf16;

// A random W4 weight [out, in] in groups of kGroup: host tensors (read-only, like a memory-mapped
// checkpoint, so that Backend::linear keeps one tiled copy on the device), and device copies in
// both layouts for the raw launchers (AutoAWQ: the old kernels; tiled: the new one).
struct BenchW4 {
  backend::AwqWeight mapped;        // read-only host tensors (what Backend::linear gets)
  Tensor q, z, s;                   // AutoAWQ layout on the device
  Tensor tq, tz, ts;                // tiled layout on the device
  AwqDeviceMatrix autoawq, tiled;
};

BenchW4 random_w4(int64_t out, int64_t in, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t words = out / 8, groups = in / kGroup;
  auto w = std::make_shared<backend::AwqWeight>();
  w->bits = 4;
  w->group_size = kGroup;
  w->out = out;
  w->in = in;
  w->qweight = Tensor::empty(DType::kI32, {in, words});
  for (int64_t i = 0; i < in * words; ++i)
    w->qweight.mutable_data<int32_t>()[i] = static_cast<int32_t>(rng());
  w->qzeros = Tensor::empty(DType::kI32, {groups, words});
  for (int64_t i = 0; i < groups * words; ++i)
    w->qzeros.mutable_data<int32_t>()[i] = static_cast<int32_t>(rng());
  std::vector<float> s(static_cast<std::size_t>(groups * out));
  std::uniform_real_distribution<float> mag(0.001f, 0.004f);
  for (float& v : s) v = mag(rng);
  w->scales = Tensor::empty(DType::kF16, {groups, out});
  convert_from_f32(DType::kF16, s.data(), w->scales.mutable_data(), s.size());
  BenchW4 b;
  b.mapped = *w;
  b.mapped.qweight = Tensor::from_external(DType::kI32, {in, words}, w->qweight.data(), w);
  b.mapped.qzeros = Tensor::from_external(DType::kI32, {groups, words}, w->qzeros.data(), w);
  b.mapped.scales = Tensor::from_external(DType::kF16, {groups, out}, w->scales.data(), w);
  b.q = w->qweight.to(Device::kCUDA);
  b.z = w->qzeros.to(Device::kCUDA);
  b.s = w->scales.to(Device::kCUDA);
  b.autoawq.qweight = b.q.data<int32_t>();
  b.autoawq.qzeros = b.z.data<int32_t>();
  b.autoawq.scales = b.s.data();
  b.autoawq.bits = 4;
  b.autoawq.group_size = kGroup;
  b.autoawq.out = out;
  b.autoawq.in = in;
  b.autoawq.words = words;
  b.tq = Tensor::empty(DType::kI32, {in, words}, Device::kCUDA);
  b.tz = Tensor::empty(DType::kI32, {groups, words}, Device::kCUDA);
  b.ts = Tensor::empty(DType::kF16, {groups, out}, Device::kCUDA);
  backend::cuda::awq_repack_tiled(b.autoawq, b.tq.mutable_data<int32_t>(), b.tz.mutable_data(),
                                  b.ts.mutable_data(), nullptr);
  b.tiled = b.autoawq;
  b.tiled.qweight = b.tq.data<int32_t>();
  b.tiled.qzeros = b.tz.data<int32_t>();
  b.tiled.scales = b.ts.data();
  b.tiled.layout = backend::cuda::AwqLayout::kTiled;
  return b;
}

// The matrix of `b` in the layout `variant` runs on.
const AwqDeviceMatrix& matrix_for(const BenchW4& b, int variant) {
  return backend::cuda::awq_gemv_variant_is_tiled(variant) ? b.tiled : b.autoawq;
}

double w4_bytes(int64_t out, int64_t in) {
  return double(out) * in / 2 + double(in / kGroup) * out * (2 + 0.5);
}

// Median over 5 repetitions of the seconds per call of `calls` back-to-back calls fn(i).
double seconds_per_call(const std::function<void(int)>& fn, const std::function<void()>& sync,
                        int calls) {
  for (int i = 0; i < calls; ++i) fn(i);  // warm-up (plans, caches, pool)
  sync();
  std::vector<double> t;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = Clock::now();
    for (int i = 0; i < calls; ++i) fn(i);
    sync();
    t.push_back(std::chrono::duration<double>(Clock::now() - start).count() / calls);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int copies_for(double bytes) { return std::max(2, static_cast<int>(kL2Bytes / bytes) + 1); }

struct Shape {
  int64_t in, out;
  const char* name;
};

// Max |a - b| over two f32 device tensors of the same shape.
double max_abs_diff(backend::Backend& be, const Tensor& a, const Tensor& b) {
  const Tensor ha = be.download(a), hb = be.download(b);
  double m = 0.0;
  for (int64_t i = 0; i < ha.numel(); ++i)
    m = std::max(m, std::abs(double(ha.data<float>()[i]) - double(hb.data<float>()[i])));
  return m;
}

// See the header comment (gemv-sweep).
void gemv_sweep(backend::Backend& be, const Shape* shapes, std::size_t n_shapes,
                const std::function<void()>& sync) {
  namespace bc = backend::cuda;
  const int variants = bc::awq_gemv_variant_count();
  std::printf("variants (REFINERY_AWQ_GEMV=<name>; default %s):\n",
              bc::awq_gemv_variant_name(bc::kAwqGemvDefaultVariant).c_str());
  for (int v = 0; v < variants; ++v)
    std::printf("  %2d %-10s %s\n", v, bc::awq_gemv_variant_name(v).c_str(),
                bc::awq_gemv_variant_description(v).c_str());
  // total[rows index][variant]: µs summed over the shapes.
  std::vector<std::vector<double>> total(2, std::vector<double>(static_cast<std::size_t>(variants)));
  std::vector<std::string> best_lines;
  for (std::size_t si = 0; si < n_shapes; ++si) {
    const Shape s = shapes[si];
    const double wb4 = w4_bytes(s.out, s.in);
    const int n4 = copies_for(wb4);
    std::vector<BenchW4> w4;
    for (int i = 0; i < n4; ++i) w4.push_back(random_w4(s.out, s.in, 100 + i));
    for (int ri = 0; ri < 2; ++ri) {
      const int64_t rows = ri == 0 ? 1 : 4;
      const double bytes = wb4 + 2.0 * rows * (s.in + s.out);
      const Tensor x = random_bf16({rows, s.in}, 1, 1.0f);
      Tensor y = be.empty(DType::kBF16, {rows, s.out});
      Tensor want = be.empty(DType::kF32, {rows, s.out});
      Tensor got = be.empty(DType::kF32, {rows, s.out});
      bc::awq_gemv_bf16_variant(w4[0].autoawq, x.data(), rows, want.mutable_data(), true, 0,
                                nullptr);
      int best = 0;
      std::vector<double> us(static_cast<std::size_t>(variants));
      for (int v = 0; v < variants; ++v) {
        const AwqDeviceMatrix& m0 = matrix_for(w4[0], v);
        bc::awq_gemv_bf16_variant(m0, x.data(), rows, got.mutable_data(), true, v, nullptr);
        const double diff = max_abs_diff(be, got, want);
        const double t = seconds_per_call(
            [&](int i) {
              bc::awq_gemv_bf16_variant(matrix_for(w4[i % n4], v), x.data(), rows,
                                        y.mutable_data(), false, v, nullptr);
            },
            sync, 400);
        us[v] = t * 1e6;
        total[ri][v] += us[v];
        if (us[v] < us[best]) best = v;
        std::printf("sweep %-7s in=%lld out=%lld rows=%lld variant %2d %-10s %7.2f us %5.0f GB/s "
                    "maxdiff %.3g  [%s]\n",
                    s.name, static_cast<long long>(s.in), static_cast<long long>(s.out),
                    static_cast<long long>(rows), v, bc::awq_gemv_variant_name(v).c_str(), us[v],
                    bytes / t / 1e9, diff, bc::awq_gemv_variant_runs(m0, rows, v).c_str());
        std::fflush(stdout);
      }
      best_lines.push_back(str("best  ", s.name, " rows=", rows, ": variant ", best, " ",
                               bc::awq_gemv_variant_name(best), " ", us[best], " us (base ",
                               us[0], " us, ", bytes / (us[best] * 1e-6) / 1e9, " GB/s)"));
      std::printf("%s\n", best_lines.back().c_str());
    }
  }
  std::printf("summary:\n");
  for (const std::string& line : best_lines) std::printf("%s\n", line.c_str());
  for (int ri = 0; ri < 2; ++ri) {
    int best = 0;
    for (int v = 0; v < variants; ++v)
      if (total[ri][v] < total[ri][best]) best = v;
    std::printf("total over the 5 shapes rows=%d:", ri == 0 ? 1 : 4);
    for (int v = 0; v < variants; ++v)
      std::printf(" %s %.1f", bc::awq_gemv_variant_name(v).c_str(), total[ri][v]);
    std::printf("  -> best %s\n", bc::awq_gemv_variant_name(best).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "all";
    if (mode != "all" && mode != "gemv" && mode != "prefill" && mode != "gemv-sweep")
      throw_user_error("unknown mode '", mode, "'; use gemv, prefill, gemv-sweep or all (default)");
    if (cuda::list_devices().empty()) throw_user_error(cuda::no_device_reason());
    auto be = backend::make_cuda_backend(0);
    std::printf("device %s\n", cuda::list_devices()[0].name.c_str());
    Tensor probe = be->empty(DType::kBF16, {1});
    auto sync = [&] { be->download(probe); };

    // A 7-8B Llama's decode projections: qkv, o, gate|up (fused), down, and gate or up alone.
    const Shape shapes[] = {{4096, 14336, "gate"},
                            {4096, 6144, "qkv"},
                            {4096, 4096, "o"},
                            {4096, 28672, "gate|up"},
                            {14336, 4096, "down"}};
    if (mode == "gemv-sweep") {
      gemv_sweep(*be, shapes, sizeof(shapes) / sizeof(shapes[0]), sync);
      return 0;
    }
    for (const Shape s : shapes) {
      if (mode == "prefill") break;
      const int64_t in = s.in, out = s.out;
      // W4 weights (enough copies to defeat the L2), shared by both row counts.
      const double wb4 = w4_bytes(out, in);
      const int n4 = copies_for(wb4);
      std::vector<BenchW4> w4;
      std::vector<backend::LinearWeight> l4(static_cast<std::size_t>(n4));
      for (int i = 0; i < n4; ++i) {
        w4.push_back(random_w4(out, in, 100 + i));
        l4[i].storage = w4.back().mapped;
        l4[i].name = "bench.awq";
      }
      const double wb16 = 2.0 * in * out;
      const int n16 = copies_for(wb16);
      std::vector<backend::LinearWeight> l16(static_cast<std::size_t>(n16));
      for (int i = 0; i < n16; ++i) {
        l16[i].storage = backend::DenseWeight{random_bf16({out, in}, 200 + i, 0.02f)};
        l16[i].name = "bench.bf16";
      }
      namespace bc = backend::cuda;
      const int old_variant = bc::kAwqGemvAutoAwqVariant, tiled = bc::kAwqGemvDefaultVariant;
      for (const int64_t rows : {int64_t{1}, int64_t{4}}) {
        const double act_bytes = 2.0 * rows * (in + out);
        const double bytes = wb4 + act_bytes;
        const Tensor x = random_bf16({rows, in}, 1, 1.0f);
        Tensor y = be->empty(DType::kBF16, {rows, out});
        // The raw launchers: the old default (AutoAWQ layout) and the tiled kernels.
        auto raw = [&](int variant) {
          return seconds_per_call(
              [&](int i) {
                bc::awq_gemv_bf16_variant(matrix_for(w4[i % n4], variant), x.data(), rows,
                                          y.mutable_data(), false, variant, nullptr);
              },
              sync, 400);
        };
        Tensor y_old = be->empty(DType::kF32, {rows, out}), y_new = be->empty(DType::kF32, {rows, out});
        bc::awq_gemv_bf16_variant(w4[0].autoawq, x.data(), rows, y_old.mutable_data(), true,
                                  old_variant, nullptr);
        bc::awq_gemv_bf16_variant(w4[0].tiled, x.data(), rows, y_new.mutable_data(), true, tiled,
                                  nullptr);
        const double diff = max_abs_diff(*be, y_old, y_new);
        const double t_old = raw(old_variant), t_tiled = raw(tiled);
        const double lin4 =
            seconds_per_call([&](int i) { be->linear(x, l4[i % n4], y); }, sync, 400);
        const double lin16 =
            seconds_per_call([&](int i) { be->linear(x, l16[i % n16], y); }, sync, 200);
        std::printf(
            "gemv %-7s in=%lld out=%lld rows=%lld: old(%s) %.2f us (%.0f GB/s), tiled %.2f us "
            "(%.0f GB/s), w4_linear %.2f us (%.0f GB/s), bf16_linear %.2f us (%.0f GB/s), "
            "bf16/w4_linear %.2fx, maxdiff old-tiled %.3g [%s]\n",
            s.name, static_cast<long long>(in), static_cast<long long>(out),
            static_cast<long long>(rows), bc::awq_gemv_variant_name(old_variant).c_str(),
            t_old * 1e6, bytes / t_old / 1e9, t_tiled * 1e6, bytes / t_tiled / 1e9, lin4 * 1e6, bytes / lin4 / 1e9, lin16 * 1e6,
            (wb16 + act_bytes) / lin16 / 1e9, lin16 / lin4, diff,
            bc::awq_gemv_variant_runs(w4[0].tiled, rows, tiled).c_str());
        std::fflush(stdout);
      }
    }

    if (mode != "gemv") {  // dequant and prefill, 2048 tokens, 4096 -> 14336
      const int64_t t = 2048, in = 4096, out = 14336;
      const Tensor x = random_bf16({t, in}, 3, 1.0f);
      Tensor y = be->empty(DType::kBF16, {t, out});
      const BenchW4 w4 = random_w4(out, in, 300);
      backend::LinearWeight l4, l16;
      l4.storage = w4.mapped;
      l4.name = "bench.awq";
      l16.storage = backend::DenseWeight{random_bf16({out, in}, 301, 0.02f)};
      l16.name = "bench.bf16";
      Tensor dequant = be->empty(DType::kBF16, {out, in});
      const double deq_bytes = w4_bytes(out, in) + 2.0 * in * out;
      for (const AwqDeviceMatrix* m : {&w4.autoawq, &w4.tiled}) {
        const double deq = seconds_per_call(
            [&](int) {
              backend::cuda::awq_dequantize_bf16(*m, 0, m->words, dequant.mutable_data(), nullptr);
            },
            sync, 20);
        std::printf("dequant %s in=%lld out=%lld: %.2f us (%.0f GB/s)\n",
                    m->layout == backend::cuda::AwqLayout::kTiled ? "tiled" : "autoawq",
                    static_cast<long long>(in), static_cast<long long>(out), deq * 1e6,
                    deq_bytes / deq / 1e9);
      }
      const double s4 = seconds_per_call([&](int) { be->linear(x, l4, y); }, sync, 10);
      const double s16 = seconds_per_call([&](int) { be->linear(x, l16, y); }, sync, 10);
      const double flops = 2.0 * t * in * out;
      std::printf(
          "prefill T=%lld in=%lld out=%lld: w4 %.1f us (%.0f TFLOP/s), bf16 %.1f us (%.0f "
          "TFLOP/s), w4/bf16 %.3fx\n",
          static_cast<long long>(t), static_cast<long long>(in), static_cast<long long>(out),
          s4 * 1e6, flops / s4 / 1e12, s16 * 1e6, flops / s16 / 1e12, s4 / s16);
    }
    return 0;
  } catch (const Error& e) {
    std::cerr << "awq_bench: " << e.what() << "\n";
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
}
