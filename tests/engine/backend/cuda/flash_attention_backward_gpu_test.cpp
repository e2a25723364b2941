// The bf16 flash attention backward (flash_attention_backward.cu) against a host reference in
// double computed from the same bf16 inputs, and against the backend's cuBLAS path
// (REFINERY_ATTN_BWD=cublas) on the same inputs.
//
// Error bound per gradient element, with P the exact softmax, dS = P ∘ (dP − D):
//   dV[j, d]: 2^-7 · (|want| + Σ_i P_ij |dO_id|)
//   dK[j, d]: 2^-7 · (|want| + scale · Σ_i P_ij (|dP_ij| + |D_i|) |Q_id|)
//   dQ[i, d]: 2^-7 · (|want| + scale · Σ_j P_ij (|dP_ij| + |D_i|) |K_jd|)      (+ 1e-5 each)
// Why: the kernels round P (for dV) and dS (for dK, dQ) to bf16 as mma operands (relative error
// <= 2^-8 per term, and |dS| <= P (|dP| + |D|)), and round the accumulated gradient to bf16 once
// (<= 2^-8 · |want|, the pre-filled value included). S, dP, D and the sums are f32 (~1e-6
// relative), the exp2 approximation ~2^-22. The bound is twice that first-order worst case;
// the cuBLAS path has the same roundings, so it is held to the same bound. A wrong mask, tile
// offset or lse gives errors of the order of the gradient itself; the relative L2 check on
// zero-initialised gradients (bf16 noise ~ 2^-9) catches smaller systematic errors.
#include "engine/backend/cuda/flash_attention_backward.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "cuda_test_util.hpp"
#include "engine/backend/cuda/flash_attention.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::cuda::flash_attention_backward_bf16;
using backend::cuda::flash_attention_backward_supports;
using backend::cuda::flash_attention_backward_workspace_bytes;
using backend::cuda::FlashAttentionArgs;
using backend::cuda::FlashAttentionBackwardArgs;
using backend::cuda::flash_attention_wgmma_available;  // compute 9.0: the same check

bool no_gpu() { return cuda::list_devices().empty(); }

struct Case {
  int64_t t, heads, kv, dk, dv;
  float q_std;  // larger q: a peaky softmax
};

std::string name(const Case& c) {
  return str("T=", c.t, " H=", c.heads, " KV=", c.kv, " dk=", c.dk, " dv=", c.dv, " q_std=", c.q_std);
}

// bf16 inputs (host, bf16 dtype) of one case; out is the exact forward rounded to bf16.
struct Inputs {
  Tensor q, k, v, out, dout;
  float scale;
};

// Exact causal softmax rows of head h: p[i][j], j <= i.
std::vector<std::vector<double>> softmax_rows(const Case& c, const std::vector<float>& q,
                                              const std::vector<float>& k, float scale, int64_t h) {
  const int64_t kvh = h / (c.heads / c.kv);
  std::vector<std::vector<double>> p(static_cast<std::size_t>(c.t));
  for (int64_t i = 0; i < c.t; ++i) {
    auto& row = p[i];
    row.resize(static_cast<std::size_t>(i + 1));
    double mx = -INFINITY;
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int64_t d = 0; d < c.dk; ++d)
        dot += double(q[(i * c.heads + h) * c.dk + d]) * double(k[(j * c.kv + kvh) * c.dk + d]);
      row[j] = dot * double(scale);
      mx = std::max(mx, row[j]);
    }
    double sum = 0.0;
    for (auto& x : row) sum += (x = std::exp(x - mx));
    for (auto& x : row) x /= sum;
  }
  return p;
}

// Random q, k, v, dout (seeds seed + 1 .. + 4; q's standard deviation c.q_std) and the scale;
// out is left to the caller.
Inputs random_q_k_v_dout(const Case& c, uint64_t seed) {
  Inputs in;
  in.q = convert(random_f32({c.t, c.heads, c.dk}, seed + 1, c.q_std), DType::kBF16);
  in.k = convert(random_f32({c.t, c.kv, c.dk}, seed + 2), DType::kBF16);
  in.v = convert(random_f32({c.t, c.kv, c.dv}, seed + 3), DType::kBF16);
  in.dout = convert(random_f32({c.t, c.heads, c.dv}, seed + 4), DType::kBF16);
  in.scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  return in;
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in = random_q_k_v_dout(c, seed);
  const std::vector<float> q = values(in.q), k = values(in.k), v = values(in.v);
  Tensor out = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
  float* o = out.mutable_data<float>();
  for (int64_t h = 0; h < c.heads; ++h) {
    const int64_t kvh = h / (c.heads / c.kv);
    const auto p = softmax_rows(c, q, k, in.scale, h);
    for (int64_t i = 0; i < c.t; ++i)
      for (int64_t d = 0; d < c.dv; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= i; ++j) acc += p[i][j] * double(v[(j * c.kv + kvh) * c.dv + d]);
        o[(i * c.heads + h) * c.dv + d] = static_cast<float>(acc);
      }
  }
  in.out = convert(out, DType::kBF16);
  return in;
}

// want = pre + exact gradient (f32 tensors), bound per element as in the file comment.
struct Reference {
  Tensor dq, dk, dv;
  std::vector<float> bq, bk, bv;
};

Reference reference(const Case& c, const Inputs& in, const Tensor& dq0, const Tensor& dk0,
                    const Tensor& dv0) {
  const std::vector<float> q = values(in.q), k = values(in.k), v = values(in.v);
  const std::vector<float> out = values(in.out), dout = values(in.dout);
  std::vector<double> gq(static_cast<std::size_t>(dq0.numel()), 0.0), gk(static_cast<std::size_t>(dk0.numel()), 0.0),
      gv(static_cast<std::size_t>(dv0.numel()), 0.0);
  std::vector<double> bq(gq.size(), 0.0), bk(gk.size(), 0.0), bv(gv.size(), 0.0);
  const double scale = in.scale;
  for (int64_t h = 0; h < c.heads; ++h) {
    const int64_t kvh = h / (c.heads / c.kv);
    const auto p = softmax_rows(c, q, k, in.scale, h);
    for (int64_t i = 0; i < c.t; ++i) {
      const float* dor = &dout[(i * c.heads + h) * c.dv];
      double d_row = 0.0;
      for (int64_t d = 0; d < c.dv; ++d) d_row += double(dor[d]) * double(out[(i * c.heads + h) * c.dv + d]);
      for (int64_t j = 0; j <= i; ++j) {
        const float* vr = &v[(j * c.kv + kvh) * c.dv];
        double dp = 0.0;
        for (int64_t d = 0; d < c.dv; ++d) dp += double(dor[d]) * double(vr[d]);
        const double pij = p[i][j], ds = pij * (dp - d_row), ds_abs = pij * (std::abs(dp) + std::abs(d_row));
        for (int64_t d = 0; d < c.dv; ++d) {
          gv[(j * c.kv + kvh) * c.dv + d] += pij * dor[d];
          bv[(j * c.kv + kvh) * c.dv + d] += pij * std::abs(dor[d]);
        }
        for (int64_t d = 0; d < c.dk; ++d) {
          const double kd = k[(j * c.kv + kvh) * c.dk + d], qd = q[(i * c.heads + h) * c.dk + d];
          gq[(i * c.heads + h) * c.dk + d] += scale * ds * kd;
          bq[(i * c.heads + h) * c.dk + d] += scale * ds_abs * std::abs(kd);
          gk[(j * c.kv + kvh) * c.dk + d] += scale * ds * qd;
          bk[(j * c.kv + kvh) * c.dk + d] += scale * ds_abs * std::abs(qd);
        }
      }
    }
  }
  auto finish = [](const Tensor& pre, const std::vector<double>& g, const std::vector<double>& b,
                   Tensor& want, std::vector<float>& bound) {
    const std::vector<float> p = values(pre);
    want = Tensor::empty(DType::kF32, pre.shape());
    bound.resize(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      const double w = double(p[i]) + g[i];
      want.mutable_data<float>()[i] = static_cast<float>(w);
      bound[i] = static_cast<float>(std::ldexp(std::abs(w) + b[i], -7) + 1e-5);
    }
  };
  Reference r;
  finish(dq0, gq, bq, r.dq, r.bq);
  finish(dk0, gk, bk, r.dk, r.bk);
  finish(dv0, gv, bv, r.dv, r.bv);
  return r;
}

// ‖got − want‖ / ‖want − pre‖ (the accumulated part only), the norm floored at an RMS of 1e-3:
// for T = 1, dS = P (dP − D) is exactly 0 (out == v), and dq, dk are f32 noise.
double relative_l2(const Tensor& got, const Tensor& want, const Tensor& pre) {
  const std::vector<float> g = values(got), w = values(want), p = values(pre);
  double err = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    err += (double(g[i]) - w[i]) * (double(g[i]) - w[i]);
    norm += (double(w[i]) - p[i]) * (double(w[i]) - p[i]);
  }
  return std::sqrt(err / std::max(norm, 1e-6 * static_cast<double>(g.size())));
}

// Device gradients (bf16, copies of the pre-filled values) and a NaN-poisoned workspace.
// lse: the forward's device lse [H, T] to hand over, or null; overwrite: write, not accumulate.
struct DeviceRun {
  Tensor dq, dk, dv;
};

DeviceRun run_kernel(const Case& c, const Inputs& in, const Tensor& dq0, const Tensor& dk0,
                     const Tensor& dv0, bool want_q, bool want_k, bool want_v,
                     const Tensor* lse = nullptr, bool overwrite = false) {
  const Tensor q = gpu(in.q), k = gpu(in.k), v = gpu(in.v), out = gpu(in.out), dout = gpu(in.dout);
  DeviceRun r{gpu(dq0), gpu(dk0), gpu(dv0)};
  FlashAttentionBackwardArgs args{q.data(), k.data(), v.data(), out.data(), dout.data(),
                                  want_q ? r.dq.mutable_data() : nullptr,
                                  want_k ? r.dk.mutable_data() : nullptr,
                                  want_v ? r.dv.mutable_data() : nullptr,
                                  c.t, c.heads, c.kv, c.dk, c.dv, in.scale, nullptr};
  args.lse = lse != nullptr ? lse->data<float>() : nullptr;
  args.overwrite = overwrite;
  const int64_t bytes = flash_attention_backward_workspace_bytes(args);
  EXPECT_EQ(bytes % 16, 0);
  Tensor host_ws = Tensor::empty(DType::kF32, {bytes / 4});
  std::memset(host_ws.mutable_data(), 0xff, host_ws.nbytes());  // NaN everywhere
  Tensor ws = gpu(host_ws);
  args.workspace = ws.mutable_data();
  flash_attention_backward_bf16(args, nullptr);  // default stream: the downloads wait for it
  return r;
}

// Pre-filled gradients (bf16, host) of one case: dq [T, H, dk], dk [T, KV, dk], dv [T, KV, dv].
struct Grads {
  Tensor dq, dk, dv;
};

// Random values (seeds seed + 5, + 6, + 7): the kernels must add into them.
Grads random_grads(const Case& c, uint64_t seed) {
  return {convert(random_f32({c.t, c.heads, c.dk}, seed + 5), DType::kBF16),
          convert(random_f32({c.t, c.kv, c.dk}, seed + 6), DType::kBF16),
          convert(random_f32({c.t, c.kv, c.dv}, seed + 7), DType::kBF16)};
}

// Zeros: the fresh gradients themselves.
Grads zero_grads(const Case& c) {
  return {convert(Tensor::zeros(DType::kF32, {c.t, c.heads, c.dk}), DType::kBF16),
          convert(Tensor::zeros(DType::kF32, {c.t, c.kv, c.dk}), DType::kBF16),
          convert(Tensor::zeros(DType::kF32, {c.t, c.kv, c.dv}), DType::kBF16)};
}

// Inputs without the exact forward (out is random: D = rowsum(dout ∘ out) is then just another
// per-row constant), for shapes too large for the host reference; only kernel-vs-kernel checks.
Inputs random_inputs(const Case& c, uint64_t seed) {
  Inputs in = random_q_k_v_dout(c, seed);
  in.out = convert(random_f32({c.t, c.heads, c.dv}, seed + 5, 0.3f), DType::kBF16);
  return in;
}

// run_kernel with REFINERY_ATTN_BWD_KERNEL = kernel for its duration, or with the environment as
// it is (the default choice) for kernel == nullptr.
DeviceRun run_forced(const char* kernel, const Case& c, const Inputs& in, const Grads& pre,
                     bool want_q = true, bool want_k = true, bool want_v = true) {
  if (kernel == nullptr) return run_kernel(c, in, pre.dq, pre.dk, pre.dv, want_q, want_k, want_v);
  const ScopedEnv env("REFINERY_ATTN_BWD_KERNEL", kernel);
  return run_kernel(c, in, pre.dq, pre.dk, pre.dv, want_q, want_k, want_v);
}

// The bodies the mma.sync (kernel nullptr: the default choice) and wgmma (kernel "wgmma") suites
// share; `label` starts the names of the checks.

// Every case added into random gradients: within the bound of the exact gradient plus the
// pre-filled value.
void expect_accumulates_within_bound(const char* kernel, const char* label,
                                     const std::vector<Case>& cases, uint64_t seed) {
  for (const Case& c : cases) {
    ASSERT_TRUE(flash_attention_backward_supports(c.dk, c.dv)) << name(c);
    const Inputs in = make_inputs(c, seed += 10);
    const Grads pre = random_grads(c, seed);
    const Reference want = reference(c, in, pre.dq, pre.dk, pre.dv);
    const DeviceRun got = run_forced(kernel, c, in, pre);
    EXPECT_TRUE(close(str(label, " dq ", name(c)), got.dq, want.dq, 0.0, want.bq));
    EXPECT_TRUE(close(str(label, " dk ", name(c)), got.dk, want.dk, 0.0, want.bk));
    EXPECT_TRUE(close(str(label, " dv ", name(c)), got.dv, want.dv, 0.0, want.bv));
  }
}

// Every case into zero gradients: within the bound, and a small relative L2 error.
void expect_fresh_gradients_close(const char* kernel, const char* label,
                                  const std::vector<Case>& cases, uint64_t seed) {
  for (const Case& c : cases) {
    const Inputs in = make_inputs(c, seed += 10);
    const Grads pre = zero_grads(c);
    const Reference want = reference(c, in, pre.dq, pre.dk, pre.dv);
    const DeviceRun got = run_forced(kernel, c, in, pre);
    EXPECT_TRUE(close(str(label, " dq ", name(c)), got.dq, want.dq, 0.0, want.bq));
    EXPECT_TRUE(close(str(label, " dk ", name(c)), got.dk, want.dk, 0.0, want.bk));
    EXPECT_TRUE(close(str(label, " dv ", name(c)), got.dv, want.dv, 0.0, want.bv));
    // bf16 has a relative precision of 2^-8 (3.9e-3); random rounding errors average below it.
    EXPECT_LT(relative_l2(got.dq, want.dq, pre.dq), 1e-2) << name(c);
    EXPECT_LT(relative_l2(got.dk, want.dk, pre.dk), 1e-2) << name(c);
    EXPECT_LT(relative_l2(got.dv, want.dv, pre.dv), 1e-2) << name(c);
  }
}

// Two full runs are bitwise equal, and a run that wants one gradient computes exactly that one
// (bitwise the full run's) and leaves the others alone. make: make_inputs or random_inputs.
void expect_deterministic_and_selective(const char* kernel, const std::vector<Case>& cases,
                                        Inputs (*make)(const Case&, uint64_t), uint64_t seed) {
  for (const Case& c : cases) {
    const Inputs in = make(c, seed);
    const Grads pre = random_grads(c, seed);
    const DeviceRun all = run_forced(kernel, c, in, pre);
    const DeviceRun again = run_forced(kernel, c, in, pre);
    const DeviceRun only_q = run_forced(kernel, c, in, pre, true, false, false);
    const DeviceRun only_v = run_forced(kernel, c, in, pre, false, false, true);
    const DeviceRun only_k = run_forced(kernel, c, in, pre, false, true, false);
    auto same = [](const Tensor& a, const Tensor& b) { return values(a) == values(b); };
    EXPECT_TRUE(same(all.dq, again.dq) && same(all.dk, again.dk) && same(all.dv, again.dv))
        << name(c);
    EXPECT_TRUE(same(only_q.dq, all.dq)) << name(c);
    EXPECT_TRUE(same(only_k.dk, all.dk)) << name(c);
    EXPECT_TRUE(same(only_v.dv, all.dv)) << name(c);
    // Unwanted gradients are left alone.
    EXPECT_TRUE(same(only_q.dk, gpu(pre.dk)) && same(only_q.dv, gpu(pre.dv))) << name(c);
    EXPECT_TRUE(same(only_v.dq, gpu(pre.dq)) && same(only_k.dv, gpu(pre.dv))) << name(c);
  }
}

const std::vector<Case> kCases = {
    {1, 4, 2, 64, 64, 1.0f},        // the first token alone
    {15, 6, 2, 64, 64, 1.0f},       // GQA 3:1, one partial tile
    {64, 6, 2, 128, 128, 1.0f},     // exactly one tile
    {130, 6, 2, 192, 128, 1.0f},    // MLA widths, 3 tiles (last partial), BQ = 32
    {130, 3, 3, 64, 64, 4.0f},      // MHA: one split, gradients added in the dkdv kernel
    {1030, 8, 2, 64, 64, 4.0f},     // GQA 4:1 over 17 tiles, peaky softmax
    {1030, 2, 2, 128, 128, 1.0f},
    {200, 4, 1, 192, 128, 2.0f},    // MQA, MLA widths
};

TEST(FlashAttentionBackwardGpu, SupportsThePromisedHeadWidths) {
  EXPECT_FALSE(flash_attention_backward_supports(72, 72));
  EXPECT_FALSE(flash_attention_backward_supports(128, 192));
  EXPECT_FALSE(flash_attention_backward_supports(40, 24));
  if (!cuda::built_with_cuda()) GTEST_SKIP() << cuda::no_device_reason();
  EXPECT_TRUE(flash_attention_backward_supports(64, 64));
  EXPECT_TRUE(flash_attention_backward_supports(128, 128));
  EXPECT_TRUE(flash_attention_backward_supports(192, 128));
}

TEST(FlashAttentionBackwardGpu, RefusesBadArgumentsBeforeTouchingTheDevice) {
  FlashAttentionBackwardArgs args{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                  nullptr, 4, 2, 2, 72, 72, 0.1f, nullptr};
  EXPECT_THROW(flash_attention_backward_bf16(args, nullptr), Error);  // widths
  if (!cuda::built_with_cuda()) return;
  args.dk = args.dv = 64;
  args.heads = 3;  // not a multiple of kv_heads
  EXPECT_THROW(flash_attention_backward_bf16(args, nullptr), Error);
  args.heads = 4;
  args.d_q = reinterpret_cast<void*>(uintptr_t{64});
  EXPECT_THROW(flash_attention_backward_bf16(args, nullptr), Error);  // no workspace
}

TEST(FlashAttentionBackwardGpu, AccumulatesTheExactGradientsWithinTheBf16Bound) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  expect_accumulates_within_bound(nullptr, "flash backward", kCases, 12000);
}

TEST(FlashAttentionBackwardGpu, FreshGradientsHaveSmallRelativeError) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  expect_fresh_gradients_close(nullptr, "fresh", kCases, 13000);
}

TEST(FlashAttentionBackwardGpu, IsDeterministicAndComputesOnlyTheWantedGradients) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  expect_deterministic_and_selective(
      nullptr, {Case{1030, 8, 2, 64, 64, 2.0f}, Case{130, 6, 2, 192, 128, 1.0f}}, make_inputs,
      14000);
}

// Sets REFINERY_ATTN_BWD for one scope.
struct ScopedPath {
  explicit ScopedPath(const char* value) { setenv("REFINERY_ATTN_BWD", value, 1); }
  ~ScopedPath() { unsetenv("REFINERY_ATTN_BWD"); }
};

TEST(FlashAttentionBackwardGpu, BackendRoutesBf16AndMatchesTheCublasPath) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  uint64_t seed = 15000;
  for (const Case& c : kCases) {
    const Inputs in = make_inputs(c, seed += 10);
    const auto [dq0, dk0, dv0] = random_grads(c, seed);
    const Reference want = reference(c, in, dq0, dk0, dv0);
    const Tensor q = gpu(in.q), k = gpu(in.k), v = gpu(in.v), out = gpu(in.out), dout = gpu(in.dout);
    Tensor dq[2] = {gpu(dq0), gpu(dq0)}, dk[2] = {gpu(dk0), gpu(dk0)}, dv[2] = {gpu(dv0), gpu(dv0)};
    {
      ScopedPath path("cublas");
      be->attention_backward(q, k, v, out, dout, in.scale, dq[0], dk[0], dv[0]);
    }
    {
      ScopedPath path("flash");  // the default; explicit in case the environment says otherwise
      be->attention_backward(q, k, v, out, dout, in.scale, dq[1], dk[1], dv[1]);
    }
    const DeviceRun direct = run_kernel(c, in, dq0, dk0, dv0, true, true, true);
    for (int path = 0; path < 2; ++path) {
      const std::string what = str(path == 0 ? "cublas " : "flash ", name(c));
      EXPECT_TRUE(close(what + " dq", dq[path], want.dq, 0.0, want.bq));
      EXPECT_TRUE(close(what + " dk", dk[path], want.dk, 0.0, want.bk));
      EXPECT_TRUE(close(what + " dv", dv[path], want.dv, 0.0, want.bv));
    }
    // The paths differ only by rounding: each is within the bound of the exact value.
    std::vector<float> twice_q(want.bq), twice_k(want.bk), twice_v(want.bv);
    for (auto* b : {&twice_q, &twice_k, &twice_v})
      for (float& x : *b) x *= 2.0f;
    EXPECT_TRUE(close("flash vs cublas dq " + name(c), dq[1], dq[0], 0.0, twice_q));
    EXPECT_TRUE(close("flash vs cublas dk " + name(c), dk[1], dk[0], 0.0, twice_k));
    EXPECT_TRUE(close("flash vs cublas dv " + name(c), dv[1], dv[0], 0.0, twice_v));
    // The backend's default path is the kernel (bitwise: same kernels, same order).
    EXPECT_TRUE(values(dq[1]) == values(direct.dq) && values(dk[1]) == values(direct.dk) &&
                values(dv[1]) == values(direct.dv))
        << name(c);
  }
}

// ---- the Hopper wgmma kernels (flash_attention_backward_sm90a.cu), forced with
// REFINERY_ATTN_BWD_KERNEL=wgmma: the same reference, the same bounds --------------------------

bool skip_without_wgmma() { return no_gpu() || !flash_attention_wgmma_available(); }
constexpr const char* kNoWgmma =
    "the wgmma backward kernels need a compute 9.0 GPU (H100/H200)";

bool wgmma_widths(const Case& c) {
  return (c.dk == 64 && c.dv == 64) || (c.dk == 128 && c.dv == 128);
}

// Lengths that are not multiples of 64 or 128 (the dkdv blocks are 128 keys in 2 x 64, the dq
// blocks 128 queries in 2 x 64, the steps 64), GQA ratios 1, 4 and 8, both widths, with one split
// (MHA: the dkdv kernel adds into the gradients) and with several (partials + reduction).
const Case kWgmmaCases[] = {
    {1, 4, 4, 64, 64, 1.0f},       // one token, MHA
    {1, 8, 1, 128, 128, 1.0f},     // one token, GQA 8
    {63, 4, 1, 64, 64, 1.0f},      // GQA 4, one partial step
    {63, 2, 2, 128, 128, 2.0f},
    {65, 8, 1, 64, 64, 1.0f},      // GQA 8, the second WG of the first block has one key
    {65, 4, 1, 128, 128, 1.0f},
    {128, 4, 1, 64, 64, 1.0f},     // exactly one dkdv / dq block
    {200, 8, 1, 128, 128, 2.0f},   // GQA 8, two blocks, the last partial
    {200, 3, 3, 64, 64, 4.0f},     // MHA, peaky softmax
    {1000, 4, 1, 64, 64, 2.0f},    // GQA 4 over 8 key blocks
    {1000, 8, 1, 64, 64, 1.0f},    // GQA 8
    {1000, 2, 2, 128, 128, 1.0f},  // MHA, wide heads
};

// Every existing case with the widths the wgmma kernels have, then kWgmmaCases.
std::vector<Case> wgmma_cases() {
  std::vector<Case> all;
  for (const Case& c : kCases)
    if (wgmma_widths(c)) all.push_back(c);
  for (const Case& c : kWgmmaCases) all.push_back(c);
  return all;
}

TEST(FlashAttentionBackwardWgmmaGpu, AccumulatesTheExactGradientsWithinTheBf16Bound) {
  if (skip_without_wgmma()) GTEST_SKIP() << kNoWgmma;
  expect_accumulates_within_bound("wgmma", "wgmma backward", wgmma_cases(), 22000);
}

TEST(FlashAttentionBackwardWgmmaGpu, FreshGradientsHaveSmallRelativeError) {
  if (skip_without_wgmma()) GTEST_SKIP() << kNoWgmma;
  expect_fresh_gradients_close("wgmma", "wgmma fresh", wgmma_cases(), 23000);
}

TEST(FlashAttentionBackwardWgmmaGpu, IsDeterministicAndComputesOnlyTheWantedGradients) {
  if (skip_without_wgmma()) GTEST_SKIP() << kNoWgmma;
  // The 1.4B student's shape (GQA 32/4, 64 wide, L 2048) and smaller ones with 1 and 4 splits.
  expect_deterministic_and_selective(
      "wgmma", {Case{2048, 32, 4, 64, 64, 1.0f}, Case{1030, 8, 2, 64, 64, 2.0f},
                Case{1000, 8, 1, 128, 128, 1.0f}, Case{130, 3, 3, 128, 128, 1.0f}},
      random_inputs, 24000);
}

// The two kernels on shapes beyond the host reference (the 1.4B student's; GQA 4 with 2 of the
// group's query heads per split, i.e. 1 < split < group): they differ only by f32 summation order
// and bf16 roundings, so the relative L2 distance of the fresh gradients is at bf16 noise level.
TEST(FlashAttentionBackwardWgmmaGpu, AgreesWithTheMmaKernels) {
  if (skip_without_wgmma()) GTEST_SKIP() << kNoWgmma;
  uint64_t seed = 25000;
  for (const Case& c : {Case{2048, 32, 4, 64, 64, 1.0f}, Case{1024, 64, 16, 64, 64, 2.0f},
                        Case{1024, 16, 4, 128, 128, 1.0f}, Case{333, 8, 1, 128, 128, 4.0f},
                        Case{777, 12, 3, 64, 64, 1.0f}}) {
    const Inputs in = random_inputs(c, seed += 10);
    const Grads zero = zero_grads(c);
    const DeviceRun wg = run_forced("wgmma", c, in, zero);
    const DeviceRun mma = run_forced("mma", c, in, zero);
    for (const auto& [what, a, b, pre] :
         {std::tuple{"dq", &wg.dq, &mma.dq, &zero.dq}, std::tuple{"dk", &wg.dk, &mma.dk, &zero.dk},
          std::tuple{"dv", &wg.dv, &mma.dv, &zero.dv}}) {
      const std::vector<float> x = values(*a);
      EXPECT_TRUE(std::all_of(x.begin(), x.end(), [](float e) { return std::isfinite(e); }))
          << what << " " << name(c);
      EXPECT_LT(relative_l2(*a, *b, *pre), 1e-2) << "wgmma vs mma " << what << " " << name(c);
    }
  }
}

TEST(FlashAttentionBackwardWgmmaGpu, ForcingItWhereItCannotRunIsAUserError) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  const Case mla{64, 2, 1, 192, 128, 1.0f};  // widths only the mma.sync kernels have
  const Inputs in = random_inputs(mla, 26000);
  const Grads zero = zero_grads(mla);
  EXPECT_THROW(run_forced("wgmma", mla, in, zero), Error);
  EXPECT_THROW(run_forced("tensor-cores", mla, in, zero), Error);  // not a kernel name
  EXPECT_NO_THROW(run_forced("mma", mla, in, zero));
  EXPECT_NO_THROW(run_forced("auto", mla, in, zero));  // falls back to mma.sync
  if (!flash_attention_wgmma_available()) {  // not compute 9.0: any width
    const Case c{64, 2, 1, 64, 64, 1.0f};
    EXPECT_THROW(run_forced("wgmma", c, random_inputs(c, 26010), zero_grads(c)), Error);
  }
}

// ---- the forward's lse handed to the backward (FlashAttentionArgs::lse ->
// FlashAttentionBackwardArgs::lse, dsum_kernel instead of the lse pass) and gradients written
// over NaN-poisoned buffers (overwrite), for every forward x backward kernel pair ---------------

// The forward's device lse [H, T] (REFINERY_ATTN_KERNEL=forward), its buffer poisoned first.
Tensor forward_lse(const char* forward, const Case& c, const Inputs& in) {
  const ScopedEnv env("REFINERY_ATTN_KERNEL", forward);
  const Tensor q = gpu(in.q), k = gpu(in.k), v = gpu(in.v);
  Tensor out = gpu(in.out);
  Tensor lse = poisoned_gpu({c.heads, c.t});
  FlashAttentionArgs args{q.data(), k.data(), v.data(), out.mutable_data(), c.t, c.t,
                          c.heads, c.kv, c.dk, c.dv, in.scale};
  args.lse = lse.mutable_data<float>();
  backend::cuda::flash_attention_bf16(args, nullptr);
  return lse;
}

// log Σ_{j <= i} exp(q_i·k_j·scale) in double, [H, T].
std::vector<double> exact_lse(const Case& c, const Inputs& in) {
  const std::vector<float> q = values(in.q), k = values(in.k);
  std::vector<double> lse(static_cast<std::size_t>(c.heads * c.t));
  for (int64_t h = 0; h < c.heads; ++h) {
    const int64_t kvh = h / (c.heads / c.kv);
    for (int64_t i = 0; i < c.t; ++i) {
      std::vector<double> s(static_cast<std::size_t>(i + 1));
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < c.dk; ++d)
          dot += double(q[(i * c.heads + h) * c.dk + d]) * double(k[(j * c.kv + kvh) * c.dk + d]);
        s[j] = dot * double(in.scale);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double x : s) sum += std::exp(x - mx);
      lse[h * c.t + i] = mx + std::log(sum);
    }
  }
  return lse;
}

TEST(FlashAttentionBackwardGpu, TakesTheForwardsLseAndOverwritesPoisonedGradients) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  const bool hopper = flash_attention_wgmma_available();
  uint64_t seed = 27000;
  for (const Case& c : kCases) {
    const Inputs in = make_inputs(c, seed += 10);
    const auto [zq, zk, zv] = zero_grads(c);
    const Reference want = reference(c, in, zq, zk, zv);
    const std::vector<double> lse_want = exact_lse(c, in);
    // NaN in every byte: any element the kernels read or leave unwritten shows up.
    auto poison = [](const Tensor& like) {
      Tensor t = Tensor::empty(like.dtype(), like.shape());
      std::memset(t.mutable_data(), 0xff, t.nbytes());
      return t;
    };
    const Tensor pq = poison(zq), pk = poison(zk), pv = poison(zv);
    std::vector<const char*> forwards = {"mma"}, backwards = {"mma"};
    if (hopper) forwards.push_back("wgmma");
    if (hopper && wgmma_widths(c)) backwards.push_back("wgmma");
    for (const char* forward : forwards) {
      const Tensor lse = forward_lse(forward, c, in);
      const std::vector<float> got_lse = values(lse);
      for (std::size_t i = 0; i < got_lse.size(); ++i)
        ASSERT_NEAR(got_lse[i], lse_want[i], 1e-3 * std::max(1.0, std::abs(lse_want[i])))
            << "lse " << forward << " " << name(c) << " at " << i;
      for (const char* backward : backwards) {
        const ScopedEnv env("REFINERY_ATTN_BWD_KERNEL", backward);
        const DeviceRun got = run_kernel(c, in, pq, pk, pv, true, true, true, &lse, true);
        const std::string what = str(forward, " lse -> ", backward, " backward, ", name(c));
        EXPECT_TRUE(close("overwritten dq " + what, got.dq, want.dq, 0.0, want.bq));
        EXPECT_TRUE(close("overwritten dk " + what, got.dk, want.dk, 0.0, want.bk));
        EXPECT_TRUE(close("overwritten dv " + what, got.dv, want.dv, 0.0, want.bv));
      }
    }
  }
}

// The backend: attention_with_lse hands back [H, T] for bf16 prefill (flash path) and nothing
// for f32; attention_backward with that lse and kOverwrite equals adding into zeros without it.
TEST(FlashAttentionBackwardGpu, BackendHandsTheLseOverAndOverwrites) {
  if (no_gpu()) GTEST_SKIP() << cuda::no_device_reason();
  const Case c{300, 8, 2, 64, 64, 2.0f};
  const float scale = 0.125f;
  for (DType act : {DType::kBF16, DType::kF32}) {
    auto be = backend::make_cuda_backend(0, act);
    // f32 host tensors on the device in the activation dtype.
    auto dev = [&](const Tensor& f32) { return gpu(act == DType::kF32 ? f32 : convert(f32, act)); };
    const Tensor q = dev(random_f32({c.t, c.heads, c.dk}, 28001, c.q_std)),
                 k = dev(random_f32({c.t, c.kv, c.dk}, 28002)),
                 v = dev(random_f32({c.t, c.kv, c.dv}, 28003)),
                 dout = dev(random_f32({c.t, c.heads, c.dv}, 28004));
    Tensor out = be->empty(act, {c.t, c.heads, c.dv}), lse;
    be->attention_with_lse(q, k, v, scale, out, lse);
    if (act == DType::kF32) {
      EXPECT_FALSE(lse.defined()) << "the f32 kernel keeps no row statistics";
    } else {
      ASSERT_TRUE(lse.defined());
      EXPECT_EQ(lse.shape(), (std::vector<int64_t>{c.heads, c.t}));
    }
    Tensor dq = dev(Tensor::zeros(DType::kF32, {c.t, c.heads, c.dk}));
    Tensor dk = dev(Tensor::zeros(DType::kF32, {c.t, c.kv, c.dk}));
    Tensor dv = dev(Tensor::zeros(DType::kF32, {c.t, c.kv, c.dv}));
    be->attention_backward(q, k, v, out, dout, scale, dq, dk, dv);
    Tensor oq = poisoned_gpu({c.t, c.heads, c.dk}, act), ok = poisoned_gpu({c.t, c.kv, c.dk}, act),
           ov = poisoned_gpu({c.t, c.kv, c.dv}, act);
    be->attention_backward(q, k, v, out, dout, scale, oq, ok, ov, backend::GradWrite::kOverwrite,
                           lse);
    for (const auto& [what, a, b] : {std::tuple{"dq", &oq, &dq}, std::tuple{"dk", &ok, &dk},
                                     std::tuple{"dv", &ov, &dv}}) {
      const std::vector<float> x = values(*a);
      EXPECT_TRUE(std::all_of(x.begin(), x.end(), [](float e) { return std::isfinite(e); }))
          << what << " " << dtype_name(act);
      // The lse of the forward kernel vs the backward's own pass: f32 rounding only.
      EXPECT_LT(relative_l2(*a, *b, dev(Tensor::zeros(DType::kF32, a->shape()))),
                act == DType::kF32 ? 1e-6 : 1e-2)
          << what << " " << dtype_name(act);
    }
  }
}

}  // namespace
}  // namespace refinery
