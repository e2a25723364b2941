// Causal attention vs a naive loop: GQA/MQA/MHA, dk != dv (MLA), new queries behind cached keys.
#include <cmath>

#include "backend_test_util.hpp"

namespace refinery::backend {
namespace {

std::vector<float> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                   double scale) {
  const int64_t t = q.size(0), h = q.size(1), dk = q.size(2), s = k.size(0), kvh = k.size(1),
                dv = v.size(2);
  std::vector<float> out(static_cast<std::size_t>(t * h * dv));
  for (int64_t ti = 0; ti < t; ++ti)
    for (int64_t hi = 0; hi < h; ++hi) {
      const int64_t g = hi / (h / kvh), visible = s - t + ti + 1;
      std::vector<double> p(static_cast<std::size_t>(visible));
      double mx = -1e300, sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < dk; ++c)
          dot += double(q.data<float>()[(ti * h + hi) * dk + c]) *
                 k.data<float>()[(j * kvh + g) * dk + c];
        p[j] = dot * scale;
        mx = std::max(mx, p[j]);
      }
      for (auto& e : p) sum += e = std::exp(e - mx);
      for (int64_t c = 0; c < dv; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < visible; ++j)
          acc += p[j] / sum * v.data<float>()[(j * kvh + g) * dv + c];
        out[(ti * h + hi) * dv + c] = float(acc);
      }
    }
  return out;
}

TEST(CpuAttention, MatchesNaiveOnAwkwardShapes) {
  auto be = make_cpu_backend();
  struct Case {
    int64_t t, s, h, kv, dk, dv;
  };
  for (const Case c :
       {Case{1, 1, 4, 2, 24, 24}, Case{23, 23, 6, 2, 8, 8}, Case{7, 7, 3, 1, 20, 20},
        Case{5, 19, 4, 4, 24, 16}, Case{1, 30, 5, 5, 24, 12}, Case{131, 140, 2, 1, 9, 5}}) {
    const Tensor q = test::random_f32({c.t, c.h, c.dk}, 1, 2.0f);
    const Tensor k = test::random_f32({c.s, c.kv, c.dk}, 2, 2.0f);
    const Tensor v = test::random_f32({c.s, c.kv, c.dv}, 3);
    const double scale = 1.0 / std::sqrt(double(c.dk)) * 1.3;
    Tensor out = test::poisoned({c.t, c.h, c.dv});
    be->attention(q, k, v, float(scale), out);
    EXPECT_LT(test::max_abs_diff(test::values(out), naive_attention(q, k, v, scale)), 2e-5)
        << c.t << " " << c.s << " " << c.h << " " << c.kv << " " << c.dk << " " << c.dv;
  }
}

}  // namespace
}  // namespace refinery::backend
