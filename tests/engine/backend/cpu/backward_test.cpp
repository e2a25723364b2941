// CPU backward ops against central differences of double-precision reference forwards (the bounds
// are documented in gradient_check.hpp), plus the conventions of backend.hpp: gradients accumulate
// (every output is pre-filled), undefined outputs are skipped, results do not depend on the
// thread count. Each reference forward is also compared with the backend's own forward op, so
// the gradients are checked against the semantics the model actually runs.
#include <omp.h>

#include <cmath>

#include "backend_test_util.hpp"
#include "gradient_check.hpp"

namespace refinery::backend {
namespace {

using test::doubles;
using test::expect_fd_gradient;
using test::f32_tensor;
using test::GradOut;
using test::random_values;

std::vector<double> as_doubles(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Runs `body` with a CPU backend of `threads` threads; restores the thread count afterwards.
template <typename F>
void with_threads(int threads, F body) {
  const int saved = omp_get_max_threads();
  auto be = make_cpu_backend(threads);
  body(*be);
  omp_set_num_threads(saved);
}

// ---------------------------------------------------------------------------------- linear

TEST(CpuBackwardLinear, MatchesFiniteDifferencesForEveryDenseDtype) {
  auto be = make_cpu_backend();
  const int64_t T = 7, in = 13, out = 11;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<double> x = random_values(T * in, 1), b = random_values(out, 3);
    const Tensor wt = test::convert(f32_tensor(random_values(out * in, 2, 0.3), {out, in}), dtype);
    std::vector<double> w = as_doubles(test::values(wt));  // the values the op multiplies by
    const std::vector<double> dy = random_values(T * out, 4);
    const LinearWeight lw{DenseWeight{wt}, f32_tensor(b, {out}), "test.linear"};
    GradOut dx({T, in}, 5), dw({out, in}, 6), db({out}, 7);
    be->linear_backward(f32_tensor(x, {T, in}), lw, f32_tensor(dy, {T, out}), dx.t, dw.t, db.t);
    const auto loss = [&] {
      double l = 0.0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t o = 0; o < out; ++o) {
          double y = b[o];
          for (int64_t i = 0; i < in; ++i) y += x[t * in + i] * w[o * in + i];
          l += dy[t * out + o] * y;
        }
      return l;
    };
    const std::string name = std::string(dtype_name(dtype));
    expect_fd_gradient(name + " dx", x, dx.added(), loss);
    expect_fd_gradient(name + " dw", w, dw.added(), loss);
    expect_fd_gradient(name + " db", b, db.added(), loss);
  }
}

// Shapes that span several tiles in both phases, run in parallel; against the closed form, and
// the same bits on 1 and 4 threads.
TEST(CpuBackwardLinear, TiledAndThreadCountIndependent) {
  const int64_t T = 37, in = 600, out = 700;
  const Tensor x = test::random_f32({T, in}, 11), dy = test::random_f32({T, out}, 12);
  const Tensor wt = test::convert(test::random_f32({out, in}, 13, 0.1f), DType::kBF16);
  const LinearWeight lw{DenseWeight{wt}, Tensor{}, "test.big"};
  Tensor dx[2], dw[2], db[2];
  for (int run = 0; run < 2; ++run)
    with_threads(run == 0 ? 1 : 4, [&](Backend& be) {
      dx[run] = Tensor::zeros(DType::kF32, {T, in});
      dw[run] = Tensor::zeros(DType::kF32, {out, in});
      db[run] = Tensor::zeros(DType::kF32, {out});
      be.linear_backward(x, lw, dy, dx[run], dw[run], db[run]);
    });
  EXPECT_TRUE(test::bitwise_equal(dx[0], dx[1]));
  EXPECT_TRUE(test::bitwise_equal(dw[0], dw[1]));
  EXPECT_TRUE(test::bitwise_equal(db[0], db[1]));
  const auto xv = test::values(x), dyv = test::values(dy), wv = test::values(wt);
  std::vector<double> rdx(T * in, 0.0), rdw(out * in, 0.0), rdb(out, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      const double g = dyv[t * out + o];
      rdb[o] += g;
      for (int64_t i = 0; i < in; ++i) {
        rdx[t * in + i] += g * wv[o * in + i];
        rdw[o * in + i] += g * xv[t * in + i];
      }
    }
  EXPECT_LT(test::max_abs_diff(doubles(dx[0]), rdx), 1e-5 * test::max_abs(test::values(dx[0])));
  EXPECT_LT(test::max_abs_diff(doubles(dw[0]), rdw), 1e-5 * test::max_abs(test::values(dw[0])));
  EXPECT_LT(test::max_abs_diff(doubles(db[0]), rdb), 1e-5 * test::max_abs(test::values(db[0])));
}

TEST(CpuBackwardLinear, RejectsFp8Weights) {
  auto be = make_cpu_backend();
  Fp8BlockWeight fw{Tensor::zeros(DType::kF8E4M3, {4, 4}), Tensor::zeros(DType::kF32, {1, 1})};
  const LinearWeight lw{fw, Tensor{}, "model.layers.0.mlp.up_proj"};
  Tensor dx = Tensor::zeros(DType::kF32, {2, 4}), none;
  try {
    be->linear_backward(Tensor::zeros(DType::kF32, {2, 4}), lw, Tensor::zeros(DType::kF32, {2, 4}),
                        dx, none, none);
    FAIL() << "an fp8 weight was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("linear_backward needs a dense weight"),
              std::string::npos);
  }
}

// ---------------------------------------------------------------------------------- rms_norm

TEST(CpuBackwardRmsNorm, MatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  // D = 1000 spans several column blocks of dweight and runs in parallel.
  for (auto [R, D] : {std::pair<int64_t, int64_t>{5, 13}, {40, 1000}}) {
    const float eps = 1e-5f;
    std::vector<double> x = random_values(R * D, 21, 2.0);
    const Tensor wt = test::convert(f32_tensor(random_values(D, 22), {D}), DType::kBF16);
    std::vector<double> w = as_doubles(test::values(wt));
    const std::vector<double> dy = random_values(R * D, 23);
    const auto forward = [&](int64_t r, int64_t i, double inv) { return x[r * D + i] * inv * w[i]; };
    const auto inv_rms = [&](int64_t r) {
      double ss = 0.0;
      for (int64_t i = 0; i < D; ++i) ss += x[r * D + i] * x[r * D + i];
      return 1.0 / std::sqrt(ss / D + eps);
    };
    const auto loss = [&] {
      double l = 0.0;
      for (int64_t r = 0; r < R; ++r) {
        const double inv = inv_rms(r);
        for (int64_t i = 0; i < D; ++i) l += dy[r * D + i] * forward(r, i, inv);
      }
      return l;
    };
    // The reference is the op the model runs.
    Tensor y = test::poisoned({R, D});
    be->rms_norm(f32_tensor(x, {R, D}), wt, eps, y);
    double worst = 0.0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < D; ++i)
        worst = std::max(worst, std::abs(y.data<float>()[r * D + i] - forward(r, i, inv_rms(r))));
    EXPECT_LT(worst, 1e-5);

    GradOut dx({R, D}, 24), dw({D}, 25);
    be->rms_norm_backward(f32_tensor(x, {R, D}), wt, eps, f32_tensor(dy, {R, D}), dx.t, dw.t);
    expect_fd_gradient("rms_norm dx", x, dx.added(), loss);
    expect_fd_gradient("rms_norm dweight", w, dw.added(), loss);
  }
}

// ---------------------------------------------------------------------------------- element-wise

TEST(CpuBackwardElementwise, SwigluMatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  const int64_t T = 5, I = 9;
  std::vector<double> g = random_values(T * I, 31, 2.0), u = random_values(T * I, 32);
  const std::vector<double> dy = random_values(T * I, 33);
  const auto loss = [&] {
    double l = 0.0;
    for (int64_t i = 0; i < T * I; ++i) l += dy[i] * g[i] / (1.0 + std::exp(-g[i])) * u[i];
    return l;
  };
  GradOut dg({T, I}, 34), du({T, I}, 35);
  be->swiglu_backward(f32_tensor(g, {T, I}), f32_tensor(u, {T, I}), f32_tensor(dy, {T, I}), dg.t,
                      du.t);
  expect_fd_gradient("swiglu dgate", g, dg.added(), loss);
  expect_fd_gradient("swiglu dup", u, du.added(), loss);
}

TEST(CpuBackwardElementwise, SigmoidGateMatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  const int64_t T = 6, D = 7;
  std::vector<double> x = random_values(T * D, 41), g = random_values(T, 42, 1.5);
  const std::vector<double> dy = random_values(T * D, 43);
  const auto loss = [&] {
    double l = 0.0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < D; ++i) l += dy[t * D + i] * x[t * D + i] / (1.0 + std::exp(-g[t]));
    return l;
  };
  GradOut dx({T, D}, 44), dg({T, 1}, 45);
  be->sigmoid_gate_backward(f32_tensor(x, {T, D}), f32_tensor(g, {T, 1}), f32_tensor(dy, {T, D}),
                            dx.t, dg.t);
  expect_fd_gradient("sigmoid_gate dx", x, dx.added(), loss);
  expect_fd_gradient("sigmoid_gate dg", g, dg.added(), loss);
}

TEST(CpuBackwardElementwise, CopyColumnsSumsTheBroadcastRows) {
  auto be = make_cpu_backend();
  // src [3, 10] broadcast to dst [12, 9] (n = 4), columns [2, 7) -> [3, 8).
  const int64_t R = 3, n = 4, cs = 10, cd = 9, src_col = 2, dst_col = 3, width = 5;
  std::vector<double> src = random_values(R * cs, 51);
  const std::vector<double> ddst = random_values(R * n * cd, 52);
  const auto loss = [&] {
    double l = 0.0;
    for (int64_t r = 0; r < R * n; ++r)
      for (int64_t j = 0; j < width; ++j)
        l += ddst[r * cd + dst_col + j] * src[(r / n) * cs + src_col + j];
    return l;
  };
  GradOut dsrc({R, cs}, 53);
  be->copy_columns_backward(f32_tensor(ddst, {R * n, cd}), dst_col, dsrc.t, src_col, width);
  // Every element, so the columns outside the copied span are checked to stay unchanged.
  expect_fd_gradient("copy_columns dsrc", src, dsrc.added(), loss, 1000);
}

TEST(CpuBackwardElementwise, ScatterAddRowsMatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  const int64_t N = 6, D = 5, T = 4;
  const std::vector<int32_t> rows = {2, 0, 2, 3, 1, 2};
  std::vector<double> x = random_values(N * D, 61), scale = random_values(N, 62);
  const std::vector<double> dy = random_values(T * D, 63);
  const auto loss = [&] {
    double l = 0.0;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t d = 0; d < D; ++d) l += dy[rows[i] * D + d] * scale[i] * x[i * D + d];
    return l;
  };
  GradOut dx({N, D}, 64), dscale({N}, 65);
  be->scatter_add_rows_backward(f32_tensor(x, {N, D}), Tensor::copy_of(DType::kI32, {N}, rows.data()),
                                f32_tensor(scale, {N}), f32_tensor(dy, {T, D}), dx.t, dscale.t);
  expect_fd_gradient("scatter_add_rows dx", x, dx.added(), loss);
  expect_fd_gradient("scatter_add_rows dscale", scale, dscale.added(), loss);
}

TEST(CpuBackwardElementwise, EmbeddingSumsRepeatedIdsDeterministically) {
  auto be = make_cpu_backend();
  const int64_t V = 9, H = 11;
  const std::vector<int32_t> ids = {3, 0, 8, 3, 3, 5, 0};
  const int64_t T = static_cast<int64_t>(ids.size());
  const std::vector<double> dy = random_values(T * H, 71);
  GradOut dtable({V, H}, 72);
  be->embedding_backward(Tensor::copy_of(DType::kI32, {T}, ids.data()), f32_tensor(dy, {T, H}),
                         dtable.t);
  // L = Σ_t dy[t]·table[ids[t]] is linear in the table: ∂L/∂table[v] = Σ_{t: ids[t] = v} dy[t].
  std::vector<double> expected(V * H, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < H; ++i) expected[ids[t] * H + i] += dy[t * H + i];
  EXPECT_LT(test::max_abs_diff(dtable.added(), expected), 1e-6);

  // Many repeats, parallel over columns: the same bits on 1 and 4 threads.
  const int64_t big_t = 400, big_h = 300, big_v = 50;
  std::vector<int32_t> big_ids(big_t);
  for (int64_t t = 0; t < big_t; ++t) big_ids[t] = static_cast<int32_t>((t * 7919) % big_v);
  const Tensor big_dy = test::random_f32({big_t, big_h}, 73);
  Tensor out[2];
  for (int run = 0; run < 2; ++run)
    with_threads(run == 0 ? 1 : 4, [&](Backend& b) {
      out[run] = Tensor::zeros(DType::kF32, {big_v, big_h});
      b.embedding_backward(Tensor::copy_of(DType::kI32, {big_t}, big_ids.data()), big_dy, out[run]);
    });
  EXPECT_TRUE(test::bitwise_equal(out[0], out[1]));

  const int32_t bad = 9;
  Tensor dt = Tensor::zeros(DType::kF32, {V, H});
  try {
    be->embedding_backward(Tensor::copy_of(DType::kI32, {1}, &bad),
                           Tensor::zeros(DType::kF32, {1, H}), dt);
    FAIL() << "id 9 of a 9-row table was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
  }
}

// ---------------------------------------------------------------------------------- rope

TEST(CpuBackwardRope, MatchesFiniteDifferencesForBothPairings) {
  auto be = make_cpu_backend();
  // Head width 14: dims [0, 4) are a nope part (offset 4), [4, 10) rotate, [10, 14) are past the
  // partial rotary span. Positions 3..7; the attention factor makes R not orthogonal, so an
  // inverse rotation in place of Rᵀ would fail.
  const int64_t T = 5, heads = 3, D = 14, offset = 4, first = 3;
  for (model::RopePairing pairing : {model::RopePairing::kHalfSplit, model::RopePairing::kInterleaved}) {
    model::RopeConfig cfg;
    cfg.rotary_dim = 6;
    cfg.pairing = pairing;
    cfg.attention_factor = 1.2;
    const RopeTable table = make_rope_table(cfg, 16);
    const int64_t half = 3;
    const bool inter = pairing == model::RopePairing::kInterleaved;
    std::vector<double> x = random_values(T * heads * D, 81);
    const std::vector<double> dy = random_values(T * heads * D, 82);
    const auto forward = [&] {
      std::vector<double> y = x;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t i = 0; i < half; ++i) {
            const double c = table.cos.data<float>()[(first + t) * half + i];
            const double s = table.sin.data<float>()[(first + t) * half + i];
            const int64_t base = (t * heads + h) * D + offset;
            const int64_t a = base + (inter ? 2 * i : i), b = base + (inter ? 2 * i + 1 : i + half);
            y[a] = x[a] * c - x[b] * s;
            y[b] = x[b] * c + x[a] * s;
          }
      return y;
    };
    Tensor y = test::poisoned({T, heads, D});
    be->rope(f32_tensor(x, {T, heads, D}), table, first, offset, y);
    EXPECT_LT(test::max_abs_diff(doubles(y), forward()), 1e-5);

    GradOut dx({T, heads, D}, 83);
    be->rope_backward(f32_tensor(dy, {T, heads, D}), table, first, offset, dx.t);
    expect_fd_gradient(inter ? "rope interleaved dx" : "rope half-split dx", x, dx.added(),
                       [&] { return test::dot(dy, forward()); }, 1000);

    // kOverwrite into a poisoned dx = what was added above (the same f32 formulas).
    Tensor written = test::poisoned({T, heads, D});
    be->rope_backward(f32_tensor(dy, {T, heads, D}), table, first, offset, written,
                      GradWrite::kOverwrite);
    EXPECT_LT(test::max_abs_diff(doubles(written), dx.added()), 1e-6);
  }
}

}  // namespace
}  // namespace refinery::backend
