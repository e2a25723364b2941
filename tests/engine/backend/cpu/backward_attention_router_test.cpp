// attention_backward and route_backward against central differences of double reference forwards
// (bounds in gradient_check.hpp), and the undefined-output convention of every multi-output
// backward op.
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

// ---------------------------------------------------------------------------------- attention

struct AttentionCase {
  int64_t T, H, KV, dk, dv;
};

// out[t, h] = Σ_{j <= t} softmax_j(q[t, h]·k[j, h / (H/KV)]·scale) v[j, h / (H/KV)], in double.
std::vector<double> attention_ref(const AttentionCase& c, const std::vector<double>& q,
                                  const std::vector<double>& k, const std::vector<double>& v,
                                  double scale) {
  std::vector<double> out(c.T * c.H * c.dv, 0.0), p(c.T);
  for (int64_t h = 0; h < c.H; ++h) {
    const int64_t kvh = h / (c.H / c.KV);
    for (int64_t t = 0; t < c.T; ++t) {
      double mx = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        double s = 0.0;
        for (int64_t d = 0; d < c.dk; ++d)
          s += q[(t * c.H + h) * c.dk + d] * k[(j * c.KV + kvh) * c.dk + d];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j <= t; ++j) sum += p[j] = std::exp(p[j] - mx);
      for (int64_t j = 0; j <= t; ++j)
        for (int64_t d = 0; d < c.dv; ++d)
          out[(t * c.H + h) * c.dv + d] += p[j] / sum * v[(j * c.KV + kvh) * c.dv + d];
    }
  }
  return out;
}

TEST(CpuBackwardAttention, MatchesFiniteDifferences) {
  auto be = make_cpu_backend();
  // GQA with MLA-like dk != dv; MHA; and T = 70 > the 64-query block.
  for (const AttentionCase c : {AttentionCase{7, 6, 2, 10, 6}, AttentionCase{7, 3, 3, 5, 5},
                                AttentionCase{70, 4, 2, 9, 7}}) {
    SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " KV=" << c.KV
                                    << " dk=" << c.dk << " dv=" << c.dv);
    const double scale = 0.37;
    std::vector<double> q = random_values(c.T * c.H * c.dk, 91);
    std::vector<double> k = random_values(c.T * c.KV * c.dk, 92);
    std::vector<double> v = random_values(c.T * c.KV * c.dv, 93);
    const std::vector<double> dout = random_values(c.T * c.H * c.dv, 94);
    const Tensor qt = f32_tensor(q, {c.T, c.H, c.dk}), kt = f32_tensor(k, {c.T, c.KV, c.dk});
    const Tensor vt = f32_tensor(v, {c.T, c.KV, c.dv});
    Tensor out = test::poisoned({c.T, c.H, c.dv});
    be->attention(qt, kt, vt, static_cast<float>(scale), out);
    EXPECT_LT(test::max_abs_diff(doubles(out), attention_ref(c, q, k, v, scale)), 1e-5);

    GradOut dq({c.T, c.H, c.dk}, 95), dk({c.T, c.KV, c.dk}, 96), dv({c.T, c.KV, c.dv}, 97);
    be->attention_backward(qt, kt, vt, out, f32_tensor(dout, {c.T, c.H, c.dv}),
                           static_cast<float>(scale), dq.t, dk.t, dv.t);
    const auto loss = [&] { return test::dot(dout, attention_ref(c, q, k, v, scale)); };
    expect_fd_gradient("attention dq", q, dq.added(), loss);
    expect_fd_gradient("attention dk", k, dk.added(), loss);
    expect_fd_gradient("attention dv", v, dv.added(), loss);
  }
}

TEST(CpuBackwardAttention, ThreadCountIndependent) {
  const int64_t T = 70, H = 6, KV = 3, dk = 12, dv = 8;
  const Tensor q = test::random_f32({T, H, dk}, 1), k = test::random_f32({T, KV, dk}, 2);
  const Tensor v = test::random_f32({T, KV, dv}, 3), dout = test::random_f32({T, H, dv}, 4);
  Tensor grads[2][3];
  for (int run = 0; run < 2; ++run) {
    const int saved = omp_get_max_threads();
    auto be = make_cpu_backend(run == 0 ? 1 : 4);
    Tensor out = Tensor::empty(DType::kF32, {T, H, dv});
    be->attention(q, k, v, 0.3f, out);
    grads[run][0] = Tensor::zeros(DType::kF32, {T, H, dk});
    grads[run][1] = Tensor::zeros(DType::kF32, {T, KV, dk});
    grads[run][2] = Tensor::zeros(DType::kF32, {T, KV, dv});
    be->attention_backward(q, k, v, out, dout, 0.3f, grads[run][0], grads[run][1], grads[run][2]);
    omp_set_num_threads(saved);
  }
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(test::bitwise_equal(grads[0][i], grads[1][i])) << i;
}

// kOverwrite into poisoned gradients = adding into zeros; an lse of the promised shape is
// accepted (the CPU recomputes it), another shape is an internal error; the CPU's
// attention_with_lse is attention() with no lse.
TEST(CpuBackwardAttention, OverwritesAndChecksTheLse) {
  const int64_t T = 9, H = 4, KV = 2, dk = 6, dv = 5;
  auto be = make_cpu_backend();
  const Tensor q = test::random_f32({T, H, dk}, 11), k = test::random_f32({T, KV, dk}, 12);
  const Tensor v = test::random_f32({T, KV, dv}, 13), dout = test::random_f32({T, H, dv}, 14);
  Tensor out = test::poisoned({T, H, dv}), lse = Tensor::zeros(DType::kF32, {1});
  be->attention_with_lse(q, k, v, 0.4f, out, lse);
  EXPECT_FALSE(lse.defined());
  Tensor added[3] = {Tensor::zeros(DType::kF32, {T, H, dk}),
                     Tensor::zeros(DType::kF32, {T, KV, dk}),
                     Tensor::zeros(DType::kF32, {T, KV, dv})};
  be->attention_backward(q, k, v, out, dout, 0.4f, added[0], added[1], added[2]);
  Tensor written[3] = {test::poisoned({T, H, dk}), test::poisoned({T, KV, dk}),
                       test::poisoned({T, KV, dv})};
  be->attention_backward(q, k, v, out, dout, 0.4f, written[0], written[1], written[2],
                         GradWrite::kOverwrite, Tensor::zeros(DType::kF32, {H, T}));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(test::bitwise_equal(written[i], added[i])) << i;
  EXPECT_THROW(be->attention_backward(q, k, v, out, dout, 0.4f, written[0], written[1], written[2],
                                      GradWrite::kAdd, Tensor::zeros(DType::kF32, {T, H})),
               Error);
}

TEST(CpuBackwardAttention, RejectsAKvCacheLongerThanTheQueries) {
  auto be = make_cpu_backend();
  const Tensor q = Tensor::zeros(DType::kF32, {3, 2, 4}), k = Tensor::zeros(DType::kF32, {5, 2, 4});
  const Tensor v = Tensor::zeros(DType::kF32, {5, 2, 4}), out = Tensor::zeros(DType::kF32, {3, 2, 4});
  Tensor dq = Tensor::zeros(DType::kF32, {3, 2, 4}), none;
  try {
    be->attention_backward(q, k, v, out, out, 1.0f, dq, none, none);
    FAIL() << "S != T was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("S == T"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------- router

TEST(CpuBackwardRoute, MatchesFiniteDifferencesWithTheSelectionFixed) {
  auto be = make_cpu_backend();
  const int64_t T = 5;
  const int E = 8, K = 3;
  struct Case {
    RouterScoring scoring;
    bool norm;
    RouterGrouping grouping;
  };
  for (const Case c : {Case{RouterScoring::kSoftmax, false, RouterGrouping::kNone},
                       Case{RouterScoring::kSoftmax, true, RouterGrouping::kGroupMax},
                       Case{RouterScoring::kSigmoid, false, RouterGrouping::kNone},
                       Case{RouterScoring::kSigmoid, true, RouterGrouping::kGroupTop2}}) {
    const bool sig = c.scoring == RouterScoring::kSigmoid;
    SCOPED_TRACE(testing::Message() << (sig ? "sigmoid" : "softmax") << " norm=" << c.norm);
    RouterSpec spec;
    spec.num_experts = E;
    spec.top_k = K;
    spec.scoring = c.scoring;
    spec.grouping = c.grouping;
    spec.n_group = 4;
    spec.topk_group = 2;
    spec.norm_topk_prob = c.norm;
    spec.routed_scaling_factor = 2.5;
    std::vector<double> logits = random_values(T * E, 101, 1.5);
    // DeepSeek-V3 style: a correction bias that only changes the selection.
    const Tensor bias = sig ? f32_tensor(random_values(E, 102, 0.3), {E}) : Tensor{};
    Tensor experts = Tensor::empty(DType::kI32, {T, K}), weights = test::poisoned({T, K});
    be->route(f32_tensor(logits, {T, E}), bias, spec, experts, weights);
    const int32_t* chosen = experts.data<int32_t>();
    const auto forward = [&] {  // the weights of the chosen experts [T, K]
      std::vector<double> w(T * K);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(E);
        const double* l = logits.data() + t * E;
        double mx = -INFINITY, sum = 0.0;
        for (int e = 0; e < E; ++e) mx = std::max(mx, l[e]);
        for (int e = 0; e < E; ++e) sum += s[e] = sig ? 1.0 / (1.0 + std::exp(-l[e])) : std::exp(l[e] - mx);
        if (!sig)
          for (double& x : s) x /= sum;
        double z = sig ? 1e-20 : 0.0;
        for (int j = 0; j < K; ++j) z += s[chosen[t * K + j]];
        for (int j = 0; j < K; ++j)
          w[t * K + j] = s[chosen[t * K + j]] / (c.norm ? z : 1.0) * spec.routed_scaling_factor;
      }
      return w;
    };
    EXPECT_LT(test::max_abs_diff(doubles(weights), forward()), 1e-5);

    const std::vector<double> dweights = random_values(T * K, 103);
    GradOut dlogits({T, E}, 104);
    be->route_backward(f32_tensor(logits, {T, E}), spec, experts, f32_tensor(dweights, {T, K}),
                       dlogits.t);
    expect_fd_gradient("route dlogits", logits, dlogits.added(),
                       [&] { return test::dot(dweights, forward()); });
  }
}

// ---------------------------------------------------------------------------------- conventions

// A call with some gradient outputs undefined writes the others exactly as a call with all of
// them; an op with its only output undefined does nothing (and does not throw).
TEST(CpuBackwardConventions, UndefinedOutputsAreSkipped) {
  auto be = make_cpu_backend();
  Tensor none;
  const auto fresh = [](std::vector<int64_t> shape, uint64_t seed) {
    return test::random_f32(std::move(shape), seed, 0.5f);
  };
  const auto same = [](const Tensor& a, const Tensor& b) { return test::bitwise_equal(a, b); };
  {
    const Tensor x = test::random_f32({5, 6}, 1), dy = test::random_f32({5, 4}, 2);
    const LinearWeight lw{DenseWeight{test::random_f32({4, 6}, 3)}, Tensor{}, "w"};
    Tensor dx = fresh({5, 6}, 9), dw = fresh({4, 6}, 10), db = fresh({4}, 11);
    be->linear_backward(x, lw, dy, dx, dw, db);
    Tensor dx1 = fresh({5, 6}, 9), dw1 = fresh({4, 6}, 10), db1 = fresh({4}, 11);
    be->linear_backward(x, lw, dy, dx1, none, none);
    be->linear_backward(x, lw, dy, none, dw1, none);
    be->linear_backward(x, lw, dy, none, none, db1);
    EXPECT_TRUE(same(dx, dx1) && same(dw, dw1) && same(db, db1));
  }
  {
    const Tensor x = test::random_f32({3, 7}, 1), w = test::random_f32({7}, 2);
    const Tensor dy = test::random_f32({3, 7}, 3);
    Tensor dx = fresh({3, 7}, 9), dw = fresh({7}, 10);
    be->rms_norm_backward(x, w, 1e-6f, dy, dx, dw);
    Tensor dx1 = fresh({3, 7}, 9), dw1 = fresh({7}, 10);
    be->rms_norm_backward(x, w, 1e-6f, dy, dx1, none);
    be->rms_norm_backward(x, w, 1e-6f, dy, none, dw1);
    EXPECT_TRUE(same(dx, dx1) && same(dw, dw1));
  }
  {
    const Tensor a = test::random_f32({3, 7}, 1), b = test::random_f32({3, 7}, 2);
    const Tensor g = test::random_f32({3, 1}, 4), dy = test::random_f32({3, 7}, 3);
    Tensor d1 = fresh({3, 7}, 9), d2 = fresh({3, 7}, 10), e1 = fresh({3, 7}, 9), e2 = fresh({3, 7}, 10);
    be->swiglu_backward(a, b, dy, d1, d2);
    be->swiglu_backward(a, b, dy, e1, none);
    be->swiglu_backward(a, b, dy, none, e2);
    EXPECT_TRUE(same(d1, e1) && same(d2, e2));
    Tensor gx = fresh({3, 7}, 9), gg = fresh({3, 1}, 10), hx = fresh({3, 7}, 9), hg = fresh({3, 1}, 10);
    be->sigmoid_gate_backward(a, g, dy, gx, gg);
    be->sigmoid_gate_backward(a, g, dy, hx, none);
    be->sigmoid_gate_backward(a, g, dy, none, hg);
    EXPECT_TRUE(same(gx, hx) && same(gg, hg));
  }
  {
    const std::vector<int32_t> rows = {1, 0, 1};
    const Tensor r = Tensor::copy_of(DType::kI32, {3}, rows.data());
    const Tensor x = test::random_f32({3, 4}, 1), s = test::random_f32({3}, 2);
    const Tensor dy = test::random_f32({2, 4}, 3);
    Tensor dx = fresh({3, 4}, 9), ds = fresh({3}, 10), dx1 = fresh({3, 4}, 9), ds1 = fresh({3}, 10);
    be->scatter_add_rows_backward(x, r, s, dy, dx, ds);
    be->scatter_add_rows_backward(x, r, s, dy, dx1, none);
    be->scatter_add_rows_backward(x, r, s, dy, none, ds1);
    EXPECT_TRUE(same(dx, dx1) && same(ds, ds1));
    EXPECT_NO_THROW(be->embedding_backward(r, x, none));
  }
  {
    const int64_t T = 9, H = 4, KV = 2, dk = 5, dv = 3;
    const Tensor q = test::random_f32({T, H, dk}, 1), k = test::random_f32({T, KV, dk}, 2);
    const Tensor v = test::random_f32({T, KV, dv}, 3), dout = test::random_f32({T, H, dv}, 4);
    Tensor out = Tensor::empty(DType::kF32, {T, H, dv});
    be->attention(q, k, v, 0.5f, out);
    Tensor dq = fresh({T, H, dk}, 9), dkk = fresh({T, KV, dk}, 10), dvv = fresh({T, KV, dv}, 11);
    be->attention_backward(q, k, v, out, dout, 0.5f, dq, dkk, dvv);
    Tensor dq1 = fresh({T, H, dk}, 9), dk1 = fresh({T, KV, dk}, 10), dv1 = fresh({T, KV, dv}, 11);
    be->attention_backward(q, k, v, out, dout, 0.5f, dq1, none, none);
    be->attention_backward(q, k, v, out, dout, 0.5f, none, dk1, none);
    be->attention_backward(q, k, v, out, dout, 0.5f, none, none, dv1);
    EXPECT_TRUE(same(dq, dq1) && same(dkk, dk1) && same(dvv, dv1));
  }
  {
    model::RopeConfig cfg;
    cfg.rotary_dim = 4;
    const RopeTable table = make_rope_table(cfg, 4);
    EXPECT_NO_THROW(be->rope_backward(test::random_f32({2, 1, 4}, 1), table, 0, 0, none));
    EXPECT_NO_THROW(be->copy_columns_backward(test::random_f32({2, 4}, 1), 0, none, 0, 2));
    RouterSpec spec;
    spec.num_experts = 4;
    spec.top_k = 2;
    const std::vector<int32_t> chosen = {0, 1};
    EXPECT_NO_THROW(be->route_backward(test::random_f32({1, 4}, 1), spec,
                                       Tensor::copy_of(DType::kI32, {1, 2}, chosen.data()),
                                       test::random_f32({1, 2}, 2), none));
  }
}

}  // namespace
}  // namespace refinery::backend
