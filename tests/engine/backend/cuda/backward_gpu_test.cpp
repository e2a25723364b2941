// CUDA training ops vs the CPU reference backend (the backward ops, kd_loss, sum_squares,
// adamw_update, convert) on the same random inputs of awkward shapes. Gradient outputs are
// pre-filled with the same random values on both backends (every backward op ADDS), outputs
// written fresh are poisoned (NaN) on the device.
// Bounds (absolute, relative to the largest reference value, f32 activations unless named):
//   element-wise ops, rope, copies, embedding      1e-6  (expf vs std::exp, FMA contraction)
//   row reductions (rms_norm, gates, route, rows)  1e-5  (f32 trees vs the CPU's order)
//   linear (f32 weights), attention                1e-4  (GEMM summation orders over T <= 1030)
//   bf16 activations or weights                    2e-2 (linear) / 3e-2 (attention) / 1e-2
//                                                  (element-wise): operands rounded to bf16
//                                                  (2^-9 relative each) and bf16 outputs
//   kd_loss   row terms relative 1e-4, gradients absolute 1e-5
//   sum_squares  relative 1e-12 to a host double sum, and bitwise equal across calls
//   adamw_update, convert  bitwise equal
#include <array>
#include <cmath>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::KdLossOptions;

// A host f32 copy of `t` rounded through `dtype` (the values a bf16 device tensor holds).
Tensor rounded(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  const std::vector<float> v = values(convert(t, dtype));
  return Tensor::copy_of(DType::kF32, t.shape(), v.data());
}
// The device tensor of host f32 `t` in `dtype`.
Tensor dev(const Tensor& t, DType dtype = DType::kF32) { return gpu(convert(t, dtype)); }

struct CudaBackwardOps : ::testing::Test {
  std::shared_ptr<backend::Backend> cpu = backend::make_cpu_backend(1);
  double tol(double rel, const Tensor& want) { return rel * std::max(1.0, max_abs(want)); }
};

// ---- linear ----

TEST_F(CudaBackwardOps, LinearBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t t, in, out;
    DType wt, act;
    double rel;
  };
  const Case cases[] = {{37, 40, 24, DType::kF32, DType::kF32, 1e-5},
                        {5, 129, 67, DType::kF32, DType::kF32, 1e-5},
                        {37, 40, 24, DType::kF16, DType::kF32, 1e-5},
                        {37, 72, 40, DType::kBF16, DType::kF32, 2e-2},
                        {37, 72, 40, DType::kBF16, DType::kBF16, 2e-2},
                        {130, 64, 96, DType::kF32, DType::kBF16, 2e-2}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    auto be = backend::make_cuda_backend(0, c.act);
    const Tensor x = rounded(random_f32({c.t, c.in}, ++seed), c.act);
    const Tensor dy = rounded(random_f32({c.t, c.out}, ++seed), c.act);
    backend::LinearWeight w{backend::DenseWeight{convert(random_f32({c.out, c.in}, ++seed, 0.2f), c.wt)},
                            random_f32({c.out}, ++seed), "model.layers.0.mlp.up_proj"};
    const Tensor dx0 = rounded(random_f32({c.t, c.in}, ++seed), c.act);
    const Tensor dw0 = random_f32({c.out, c.in}, ++seed), db0 = random_f32({c.out}, ++seed);
    Tensor dx = dx0.clone(), dw = dw0.clone(), db = db0.clone();
    cpu->linear_backward(x, w, dy, dx, dw, db);
    Tensor gdx = dev(dx0, c.act), gdw = gpu(dw0), gdb = gpu(db0);
    be->linear_backward(dev(x, c.act), w, dev(dy, c.act), gdx, gdw, gdb);
    const std::string what = str("linear_backward ", dtype_name(c.wt), " weight, ",
                                 dtype_name(c.act), " [", c.t, ", ", c.in, "] -> ", c.out);
    EXPECT_TRUE(close(what + " dx", gdx, dx, tol(c.rel, dx)));
    EXPECT_TRUE(close(what + " dw", gdw, dw, tol(c.rel, dw)));
    EXPECT_TRUE(close(what + " db", gdb, db, tol(1e-5, db)));
    // Undefined gradients are skipped: only dw.
    Tensor none1, none2, gdw2 = gpu(dw0);
    be->linear_backward(dev(x, c.act), w, dev(dy, c.act), none1, gdw2, none2);
    EXPECT_TRUE(close(what + " dw alone", gdw2, dw, tol(c.rel, dw)));
    // GradWrite::kOverwrite: poisoned dx and dw are written, not read; db still adds.
    Tensor zdx = Tensor::zeros(DType::kF32, {c.t, c.in}), zdw = Tensor::zeros(DType::kF32, {c.out, c.in});
    Tensor zdb = db0.clone();
    cpu->linear_backward(x, w, dy, zdx, zdw, zdb);
    Tensor pdx = poisoned_gpu({c.t, c.in}, c.act), pdw = poisoned_gpu({c.out, c.in}),
           pdb = gpu(db0);
    be->linear_backward(dev(x, c.act), w, dev(dy, c.act), pdx, pdw, pdb,
                        backend::GradWrite::kOverwrite, backend::GradWrite::kOverwrite);
    EXPECT_TRUE(close(what + " dx overwritten", pdx, zdx, tol(c.rel, zdx)));
    EXPECT_TRUE(close(what + " dw overwritten", pdw, zdw, tol(c.rel, zdw)));
    EXPECT_TRUE(close(what + " db with overwritten dw", pdb, zdb, tol(1e-5, zdb)));
  }
}

// ---- rms_norm ----

TEST_F(CudaBackwardOps, RmsNormBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t rows, d;
    DType wt, x_dtype, dy_dtype;
    double rel;
  };
  const Case cases[] = {{37, 200, DType::kF32, DType::kF32, DType::kF32, 1e-5},
                        {300, 1000, DType::kBF16, DType::kF32, DType::kF32, 1e-5},
                        {2, 5000, DType::kF32, DType::kF32, DType::kF32, 1e-5},
                        {37, 200, DType::kF32, DType::kF32, DType::kBF16, 1e-5},  // residual
                        {37, 200, DType::kBF16, DType::kBF16, DType::kBF16, 1e-2}};
  uint64_t seed = 200;
  for (const Case& c : cases) {
    auto be = backend::make_cuda_backend(0, c.x_dtype);
    const Tensor x = rounded(random_f32({c.rows, c.d}, ++seed, 3.0f), c.x_dtype);
    const Tensor dy = rounded(random_f32({c.rows, c.d}, ++seed), c.dy_dtype);
    const Tensor w = convert(random_f32({c.d}, ++seed), c.wt);
    const Tensor dx0 = rounded(random_f32({c.rows, c.d}, ++seed), c.x_dtype);
    const Tensor dw0 = random_f32({c.d}, ++seed);
    Tensor dx = dx0.clone(), dw = dw0.clone();
    cpu->rms_norm_backward(x, w, 1e-6f, dy, dx, dw);
    Tensor gdx = dev(dx0, c.x_dtype), gdw = gpu(dw0);
    be->rms_norm_backward(dev(x, c.x_dtype), w, 1e-6f, dev(dy, c.dy_dtype), gdx, gdw);
    const std::string what = str("rms_norm_backward [", c.rows, ", ", c.d, "] x ",
                                 dtype_name(c.x_dtype), " dy ", dtype_name(c.dy_dtype));
    EXPECT_TRUE(close(what + " dx", gdx, dx, tol(c.rel, dx)));
    EXPECT_TRUE(close(what + " dweight", gdw, dw, tol(c.rel, dw)));
    Tensor none, gdw2 = gpu(dw0);
    be->rms_norm_backward(dev(x, c.x_dtype), w, 1e-6f, dev(dy, c.dy_dtype), none, gdw2);
    EXPECT_TRUE(close(what + " dweight alone", gdw2, dw, tol(c.rel, dw)));
    // rms_norm_backward_and_convert: the same dx and dweight, bit for bit, plus dx in bf16 equal
    // to convert's rounding of that dx (fused on the fast path, convert elsewhere).
    Tensor fdx = dev(dx0, c.x_dtype), fdw = gpu(dw0), fcopy = poisoned_gpu({c.rows, c.d}, DType::kBF16);
    be->rms_norm_backward_and_convert(dev(x, c.x_dtype), w, 1e-6f, dev(dy, c.dy_dtype), fdx, fdw,
                                      fcopy);
    const Tensor hdx = fdx.to(Device::kCPU), hgdx = gdx.to(Device::kCPU);
    EXPECT_EQ(std::memcmp(hdx.data(), hgdx.data(), hdx.nbytes()), 0) << what << " dx (and convert)";
    const Tensor hdw = fdw.to(Device::kCPU), hgdw = gdw.to(Device::kCPU);
    EXPECT_EQ(std::memcmp(hdw.data(), hgdw.data(), hdw.nbytes()), 0) << what << " dweight (and convert)";
    Tensor want_copy = poisoned_gpu({c.rows, c.d}, DType::kBF16);
    be->convert(gdx, want_copy);
    const Tensor hc = fcopy.to(Device::kCPU), hw = want_copy.to(Device::kCPU);
    EXPECT_EQ(std::memcmp(hc.data(), hw.data(), hc.nbytes()), 0) << what << " the bf16 copy of dx";
  }
}

// ---- embedding, element-wise, copies ----

TEST_F(CudaBackwardOps, EmbeddingBackwardMatchesCpuAndRejectsBadIds) {
  SKIP_WITHOUT_GPU();
  for (DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    const int64_t vocab = 1001, hidden = 72, t = 37;
    std::vector<int32_t> id_values(t);
    for (int64_t i = 0; i < t; ++i) id_values[i] = static_cast<int32_t>((i * 7919) % 13 * 77);
    id_values[5] = 1000;
    const Tensor ids = Tensor::copy_of(DType::kI32, {t}, id_values.data());
    const Tensor dy = rounded(random_f32({t, hidden}, 300), act);
    const Tensor table0 = random_f32({vocab, hidden}, 301);
    Tensor want = table0.clone();
    cpu->embedding_backward(ids, dy, want);
    Tensor got = gpu(table0);
    be->embedding_backward(gpu(ids), dev(dy, act), got);
    EXPECT_TRUE(close(str("embedding_backward ", dtype_name(act)), got, want, tol(1e-6, want)));
  }
  auto be = backend::make_cuda_backend(0, DType::kF32);
  const std::vector<int32_t> bad{1, 50};
  Tensor table = gpu(random_f32({50, 8}, 302));
  try {
    be->embedding_backward(gpu(Tensor::copy_of(DType::kI32, {2}, bad.data())),
                           gpu(random_f32({2, 8}, 303)), table);
    ADD_FAILURE() << "embedding_backward accepted id 50 of 50";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser) << e.what();
  }
}

TEST_F(CudaBackwardOps, ElementwiseBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    const double rel = act == DType::kF32 ? 1e-6 : 1e-2, rel_sum = act == DType::kF32 ? 1e-5 : 1e-2;
    const int64_t rows = 37, d = 129;
    auto r = [&](std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f) {
      return rounded(random_f32(std::move(shape), seed, scale), act);
    };
    const std::string tag = str(" ", dtype_name(act));
    {  // swiglu
      const Tensor gate = r({rows, d}, 400, 3.0f), up = r({rows, d}, 401), dy = r({rows, d}, 402);
      const Tensor dg0 = r({rows, d}, 403), du0 = r({rows, d}, 404);
      Tensor dg = dg0.clone(), du = du0.clone();
      cpu->swiglu_backward(gate, up, dy, dg, du);
      Tensor gdg = dev(dg0, act), gdu = dev(du0, act);
      be->swiglu_backward(dev(gate, act), dev(up, act), dev(dy, act), gdg, gdu);
      EXPECT_TRUE(close("swiglu_backward dgate" + tag, gdg, dg, tol(rel, dg)));
      EXPECT_TRUE(close("swiglu_backward dup" + tag, gdu, du, tol(rel, du)));
      // kOverwrite into poisoned outputs = adding into zeros; both the vectorized and the
      // scalar kernel (a misaligned view: one element in).
      Tensor zg = Tensor::zeros(DType::kF32, {rows, d}), zu = Tensor::zeros(DType::kF32, {rows, d});
      cpu->swiglu_backward(gate, up, dy, zg, zu);
      Tensor pg = poisoned_gpu({rows, d}, act), pu = poisoned_gpu({rows, d}, act);
      be->swiglu_backward(dev(gate, act), dev(up, act), dev(dy, act), pg, pu,
                          backend::GradWrite::kOverwrite);
      EXPECT_TRUE(close("swiglu_backward dgate overwritten" + tag, pg, zg, tol(rel, zg)));
      EXPECT_TRUE(close("swiglu_backward dup overwritten" + tag, pu, zu, tol(rel, zu)));
      const int64_t n = rows * d - 1;
      Tensor pg1 = poisoned_gpu({n + 1}, act), pu1 = poisoned_gpu({n + 1}, act);
      Tensor pg1v = pg1.slice(1, n + 1), pu1v = pu1.slice(1, n + 1);
      const Tensor flat_g = dev(gate, act).view({rows * d}).slice(1, n + 1),
                   flat_u = dev(up, act).view({rows * d}).slice(1, n + 1),
                   flat_dy = dev(dy, act).view({rows * d}).slice(1, n + 1);
      be->swiglu_backward(flat_g, flat_u, flat_dy, pg1v, pu1v, backend::GradWrite::kOverwrite);
      EXPECT_TRUE(close("swiglu_backward misaligned overwrite" + tag, pg1v,
                        zg.view({rows * d}).slice(1, n + 1), tol(rel, zg)));
    }
    {  // sigmoid_gate
      const Tensor x = r({rows, d}, 410), g = r({rows, 1}, 411, 2.0f), dy = r({rows, d}, 412);
      const Tensor dx0 = r({rows, d}, 413), dg0 = r({rows, 1}, 414);
      Tensor dx = dx0.clone(), dg = dg0.clone();
      cpu->sigmoid_gate_backward(x, g, dy, dx, dg);
      Tensor gdx = dev(dx0, act), gdg = dev(dg0, act);
      be->sigmoid_gate_backward(dev(x, act), dev(g, act), dev(dy, act), gdx, gdg);
      EXPECT_TRUE(close("sigmoid_gate_backward dx" + tag, gdx, dx, tol(rel, dx)));
      EXPECT_TRUE(close("sigmoid_gate_backward dg" + tag, gdg, dg, tol(rel_sum, dg)));
    }
    for (int64_t repeat : {1, 3}) {  // copy_columns: src [37, 50] -> dst [37·n, 80]
      const Tensor ddst = r({rows * repeat, 80}, 420 + repeat), ds0 = r({rows, 50}, 430);
      Tensor ds = ds0.clone();
      cpu->copy_columns_backward(ddst, 11, ds, 5, 30);
      Tensor gds = dev(ds0, act);
      be->copy_columns_backward(dev(ddst, act), 11, gds, 5, 30);
      EXPECT_TRUE(close(str("copy_columns_backward n=", repeat, tag), gds, ds, tol(rel, ds)));
    }
  }
}

TEST_F(CudaBackwardOps, RopeBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto be = backend::make_cuda_backend(0, DType::kF32);
  struct Case {
    int64_t t, heads, d, offset;
    int rotary;
    model::RopePairing pairing;
    int64_t first;
  };
  const Case cases[] = {{37, 6, 40, 0, 40, model::RopePairing::kHalfSplit, 0},
                        {37, 6, 40, 0, 40, model::RopePairing::kInterleaved, 3},
                        {13, 3, 192, 128, 64, model::RopePairing::kInterleaved, 10},
                        {13, 4, 100, 16, 50, model::RopePairing::kHalfSplit, 2}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    backend::RopeTable table;
    table.rotary_dim = c.rotary;
    table.pairing = c.pairing;
    table.cos = random_f32({c.first + c.t + 4, c.rotary / 2}, ++seed);
    table.sin = random_f32({c.first + c.t + 4, c.rotary / 2}, ++seed);
    const Tensor dy = random_f32({c.t, c.heads, c.d}, ++seed);
    const Tensor dx0 = random_f32({c.t, c.heads, c.d}, ++seed);
    Tensor dx = dx0.clone();
    cpu->rope_backward(dy, table, c.first, c.offset, dx);
    Tensor got = gpu(dx0);
    be->rope_backward(gpu(dy), table, c.first, c.offset, got);
    EXPECT_TRUE(close(str("rope_backward d=", c.d, " offset ", c.offset), got, dx, tol(1e-6, dx)));
  }
}

// ---- attention ----

TEST_F(CudaBackwardOps, AttentionBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t t, heads, kv, dk, dv;
    DType act;
    double rel;
  };
  const Case cases[] = {{37, 6, 2, 40, 24, DType::kF32, 1e-4},
                        {130, 6, 2, 40, 24, DType::kF32, 1e-4},
                        {37, 2, 2, 192, 128, DType::kF32, 1e-4},  // MLA widths
                        {1030, 2, 1, 64, 64, DType::kF32, 1e-4},
                        {130, 6, 2, 40, 24, DType::kBF16, 3e-2},
                        {130, 4, 4, 128, 128, DType::kBF16, 3e-2}};
  uint64_t seed = 600;
  for (const Case& c : cases) {
    auto be = backend::make_cuda_backend(0, c.act);
    const Tensor q = rounded(random_f32({c.t, c.heads, c.dk}, ++seed), c.act);
    const Tensor k = rounded(random_f32({c.t, c.kv, c.dk}, ++seed), c.act);
    const Tensor v = rounded(random_f32({c.t, c.kv, c.dv}, ++seed), c.act);
    const Tensor dout = rounded(random_f32({c.t, c.heads, c.dv}, ++seed), c.act);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
    Tensor out = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
    cpu->attention(q, k, v, scale, out);
    out = rounded(out, c.act);
    const Tensor dq0 = rounded(random_f32({c.t, c.heads, c.dk}, ++seed), c.act);
    const Tensor dk0 = rounded(random_f32({c.t, c.kv, c.dk}, ++seed), c.act);
    const Tensor dv0 = rounded(random_f32({c.t, c.kv, c.dv}, ++seed), c.act);
    Tensor dq = dq0.clone(), dk = dk0.clone(), dv = dv0.clone();
    cpu->attention_backward(q, k, v, out, dout, scale, dq, dk, dv);
    Tensor gdq = dev(dq0, c.act), gdk = dev(dk0, c.act), gdv = dev(dv0, c.act);
    be->attention_backward(dev(q, c.act), dev(k, c.act), dev(v, c.act), dev(out, c.act),
                           dev(dout, c.act), scale, gdq, gdk, gdv);
    const std::string what = str("attention_backward T=", c.t, " H=", c.heads, " KV=", c.kv,
                                 " dk=", c.dk, " dv=", c.dv, " ", dtype_name(c.act));
    // The gradient's scale is that of the accumulated part, not of the pre-filled values.
    auto bound = [&](const Tensor& want, const Tensor& pre) {
      const std::vector<float> a = values(want), b = values(pre);
      double m = 0.0;
      for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
      return c.rel * std::max(m, 1e-3) + (c.act == DType::kBF16 ? 1e-2 * max_abs(want) : 0.0);
    };
    EXPECT_TRUE(close(what + " dq", gdq, dq, bound(dq, dq0)));
    EXPECT_TRUE(close(what + " dk", gdk, dk, bound(dk, dk0)));
    EXPECT_TRUE(close(what + " dv", gdv, dv, bound(dv, dv0)));
    Tensor none1, none2, gdv2 = dev(dv0, c.act);
    be->attention_backward(dev(q, c.act), dev(k, c.act), dev(v, c.act), dev(out, c.act),
                           dev(dout, c.act), scale, none1, none2, gdv2);
    EXPECT_TRUE(close(what + " dv alone", gdv2, dv, bound(dv, dv0)));
  }
}

// ---- MoE routing ----

TEST_F(CudaBackwardOps, RouteAndScatterBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  auto be = backend::make_cuda_backend(0, DType::kF32);
  const int64_t t = 37;
  uint64_t seed = 700;
  for (auto [scoring, norm, scaling] :
       {std::tuple{backend::RouterScoring::kSoftmax, false, 1.0},
        std::tuple{backend::RouterScoring::kSoftmax, true, 1.0},
        std::tuple{backend::RouterScoring::kSigmoid, true, 2.5}}) {
    backend::RouterSpec spec;
    spec.num_experts = 60;
    spec.top_k = 6;
    spec.scoring = scoring;
    spec.norm_topk_prob = norm;
    spec.routed_scaling_factor = scaling;
    const Tensor logits = random_f32({t, 60}, ++seed, 2.0f);
    Tensor experts = Tensor::empty(DType::kI32, {t, 6}), weights = Tensor::empty(DType::kF32, {t, 6});
    cpu->route(logits, Tensor{}, spec, experts, weights);
    const Tensor dw = random_f32({t, 6}, ++seed), dl0 = random_f32({t, 60}, ++seed);
    Tensor dl = dl0.clone();
    cpu->route_backward(logits, spec, experts, dw, dl);
    Tensor got = gpu(dl0);
    be->route_backward(gpu(logits), spec, gpu(experts), gpu(dw), got);
    EXPECT_TRUE(close(str("route_backward norm ", norm, " scaling ", scaling), got, dl,
                      tol(1e-5, dl)));
  }
  // scatter_add_rows: x [50, 72] into y [37, 72].
  std::vector<int32_t> row_values(50);
  for (int i = 0; i < 50; ++i) row_values[i] = (i * 17) % 37;
  const Tensor rows = Tensor::copy_of(DType::kI32, {50}, row_values.data());
  const Tensor x = random_f32({50, 72}, 710), scale = random_f32({50}, 711), dy = random_f32({t, 72}, 712);
  const Tensor dx0 = random_f32({50, 72}, 713), ds0 = random_f32({50}, 714);
  Tensor dx = dx0.clone(), ds = ds0.clone();
  cpu->scatter_add_rows_backward(x, rows, scale, dy, dx, ds);
  Tensor gdx = gpu(dx0), gds = gpu(ds0);
  be->scatter_add_rows_backward(gpu(x), gpu(rows), gpu(scale), gpu(dy), gdx, gds);
  EXPECT_TRUE(close("scatter_add_rows_backward dx", gdx, dx, tol(1e-6, dx)));
  EXPECT_TRUE(close("scatter_add_rows_backward dscale", gds, ds, tol(1e-5, ds)));
}

// ---- kd_loss ----

struct KdCase {
  KdLossOptions options;
  int64_t rows, vocab, k;  // k: 0 dense teacher, -1 no teacher, else sparse top-k
};

void expect_kd_matches(backend::Backend& cpu, backend::Backend& be, const KdCase& c,
                       uint64_t seed) {
  const int64_t rows = c.rows, vocab = c.vocab;
  const Tensor student = random_f32({rows, vocab}, seed, 3.0f);
  const Tensor teacher = random_f32({rows, vocab}, seed + 1, 3.0f);
  std::vector<int32_t> label_values(rows);
  for (int64_t r = 0; r < rows; ++r) label_values[r] = static_cast<int32_t>((r * 131 + 7) % vocab);
  if (rows > 2) label_values[1] = -1;  // an uncounted row
  const Tensor labels = Tensor::copy_of(DType::kI32, {rows}, label_values.data());
  Tensor ids, lps, dense;
  if (c.k == 0) dense = teacher;
  if (c.k > 0) {
    // The teacher's top-k (by a fixed permutation, distinct ids) and log-softmax at T = 1.
    std::vector<int32_t> id_values(rows * c.k);
    std::vector<float> lp_values(rows * c.k);
    const std::vector<float> tv = values(teacher);
    for (int64_t r = 0; r < rows; ++r) {
      double hi = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j < vocab; ++j) hi = std::max(hi, double(tv[r * vocab + j]));
      for (int64_t j = 0; j < vocab; ++j) sum += std::exp(double(tv[r * vocab + j]) - hi);
      for (int64_t i = 0; i < c.k; ++i) {
        const int64_t j = (i * 7 + r) % vocab;  // distinct while k <= vocab and gcd(7, vocab) = 1
        id_values[r * c.k + i] = static_cast<int32_t>(j);
        lp_values[r * c.k + i] = static_cast<float>(double(tv[r * vocab + j]) - hi - std::log(sum));
      }
    }
    ids = Tensor::copy_of(DType::kI32, {rows, c.k}, id_values.data());
    lps = Tensor::copy_of(DType::kF32, {rows, c.k}, lp_values.data());
  }
  const float grad_scale = 1.0f / static_cast<float>(rows);
  Tensor terms = Tensor::empty(DType::kF32, {rows, 2}), grad = Tensor::empty(DType::kF32, {rows, vocab});
  cpu.kd_loss(student, dense, ids, lps, labels, c.options, grad_scale, terms, grad);
  auto up = [](const Tensor& t) { return t.defined() ? gpu(t) : Tensor{}; };
  Tensor gterms = poisoned_gpu({rows, 2});
  Tensor ggrad = gpu(student);  // grad aliases the student logits
  be.kd_loss(ggrad, up(dense), up(ids), up(lps), gpu(labels), c.options, grad_scale, gterms, ggrad);
  const std::string what =
      str("kd_loss ", static_cast<int>(c.options.divergence), " T=", c.options.temperature,
          " ce=", c.options.ce_weight, " k=", c.k, " [", rows, ", ", vocab, "]");
  std::vector<float> bound;
  for (float v : values(terms)) bound.push_back(1e-4f * std::abs(v));
  EXPECT_TRUE(close(what + " row terms", gterms, terms, 1e-7, bound));
  EXPECT_TRUE(close(what + " grad", ggrad, grad, 1e-5));
  // A separate gradient output gives the same values.
  Tensor gterms2 = poisoned_gpu({rows, 2}), ggrad2 = poisoned_gpu({rows, vocab});
  be.kd_loss(gpu(student), up(dense), up(ids), up(lps), gpu(labels), c.options, grad_scale,
             gterms2, ggrad2);
  EXPECT_TRUE(close(what + " grad (no alias)", ggrad2, grad, 1e-5));
  // A bf16 gradient (what training on bf16 activations asks for): the same values rounded once
  // (relative 2^-8 for round-to-nearest), terms unchanged.
  Tensor gterms3 = poisoned_gpu({rows, 2}), ggrad3 = poisoned_gpu({rows, vocab}, DType::kBF16);
  be.kd_loss(gpu(student), up(dense), up(ids), up(lps), gpu(labels), c.options, grad_scale,
             gterms3, ggrad3);
  std::vector<float> bf16_bound;
  for (float v : values(grad)) bf16_bound.push_back(std::ldexp(std::abs(v), -8));
  EXPECT_TRUE(close(what + " row terms (bf16 grad)", gterms3, terms, 1e-7, bound));
  EXPECT_TRUE(close(what + " grad (bf16)", ggrad3, grad, 1e-5, bf16_bound));
}

TEST(CudaBackwardLoss, KdLossMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kF32);
  uint64_t seed = 800;
  for (auto divergence : {backend::Divergence::kForwardKl, backend::Divergence::kReverseKl,
                          backend::Divergence::kJsd, backend::Divergence::kSkewKl})
    for (double temperature : {1.0, 2.0})
      for (int64_t k : {int64_t{0}, int64_t{20}, int64_t{1003}}) {
        KdLossOptions o;
        o.divergence = divergence;
        o.temperature = temperature;
        o.beta = 0.3;
        o.alpha = 0.2;
        o.ce_weight = 0.5;
        expect_kd_matches(*cpu, *be, {o, 9, 1003, k}, seed += 2);
      }
  KdLossOptions ce_only;
  ce_only.kd_weight = 0.0;
  ce_only.ce_weight = 1.0;
  expect_kd_matches(*cpu, *be, {ce_only, 9, 1003, -1}, seed += 2);
  // Rows of a multiple of 4 take the 16-byte-load path: CE alone, CE at T = 2 with a dense
  // teacher, sparse. CE alone on compute 9.0 takes the cluster kernel (the row in registers):
  // a short row (the last block of the cluster has no quads), the 1.4B student's vocabulary, the
  // largest row it takes, and one quad more (the general kernel again).
  expect_kd_matches(*cpu, *be, {ce_only, 7, 4096, -1}, seed += 2);
  expect_kd_matches(*cpu, *be, {ce_only, 5, 12, -1}, seed += 2);
  expect_kd_matches(*cpu, *be, {ce_only, 3, 102400, -1}, seed += 2);
  expect_kd_matches(*cpu, *be, {ce_only, 3, 131072, -1}, seed += 2);
  expect_kd_matches(*cpu, *be, {ce_only, 3, 131076, -1}, seed += 2);
  KdLossOptions half_ce;
  half_ce.kd_weight = 0.0;
  half_ce.ce_weight = 0.5;
  expect_kd_matches(*cpu, *be, {half_ce, 4, 1000, -1}, seed += 2);
  KdLossOptions tempered;
  tempered.temperature = 2.0;
  tempered.ce_weight = 0.5;
  expect_kd_matches(*cpu, *be, {tempered, 7, 1004, 0}, seed += 2);
  expect_kd_matches(*cpu, *be, {tempered, 7, 1004, 33}, seed += 2);
  // A vocabulary whose sparse bitmap needs opt-in shared memory (> 48 KiB).
  KdLossOptions big;
  expect_kd_matches(*cpu, *be, {big, 2, 400003, 64}, seed += 2);
}

TEST(CudaBackwardLoss, ExpandTopKMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kF32);
  for (const auto& [rows, vocab, k] : std::vector<std::array<int64_t, 3>>{
           {5, 1003, 64}, {3, 517, 517}, {2, 100003, 7}}) {
    std::vector<int32_t> id_values(rows * k);
    std::vector<float> lp_values(rows * k);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < k; ++i) {
        id_values[r * k + i] = static_cast<int32_t>((i * 7 + r) % vocab);
        lp_values[r * k + i] = static_cast<float>(-3.0 - 0.01 * i - 0.1 * r - std::log(double(k)));
      }
    std::vector<float> prior(vocab);
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += 1.0 + double(j % 13);
    for (int64_t j = 0; j < vocab; ++j) prior[j] = static_cast<float>(std::log((1.0 + double(j % 13)) / sum));
    const Tensor ids = Tensor::copy_of(DType::kI32, {rows, k}, id_values.data());
    const Tensor lps = Tensor::copy_of(DType::kF32, {rows, k}, lp_values.data());
    const Tensor log_prior = Tensor::copy_of(DType::kF32, {vocab}, prior.data());
    Tensor want = Tensor::empty(DType::kF32, {rows, vocab});
    cpu->expand_top_k(ids, lps, log_prior, want);
    Tensor got = poisoned_gpu({rows, vocab});
    be->expand_top_k(gpu(ids), gpu(lps), gpu(log_prior), got);
    EXPECT_TRUE(close(str("expand_top_k [", rows, ", ", vocab, "] k=", k), got, want, 1e-6));
  }
  // A duplicated id is the cache's fault: a user error, as on the CPU.
  const std::vector<int32_t> dup = {1, 1};
  const std::vector<float> lp2 = {-1.0f, -2.0f}, prior3 = {-1.0f, -1.5f, -1.0f};
  Tensor out = poisoned_gpu({1, 3});
  EXPECT_THROW(be->expand_top_k(gpu(Tensor::copy_of(DType::kI32, {1, 2}, dup.data())),
                                gpu(Tensor::copy_of(DType::kF32, {1, 2}, lp2.data())),
                                gpu(Tensor::copy_of(DType::kF32, {3}, prior3.data())), out),
               Error);
}

// ---- sum_squares, adamw_update, convert ----

TEST(CudaBackwardOptimizer, SumSquaresIsExactAndDeterministic) {
  SKIP_WITHOUT_GPU();
  auto be = backend::make_cuda_backend(0, DType::kF32);
  for (DType dt : {DType::kF32, DType::kBF16})
    for (int64_t n : {int64_t{1}, int64_t{1000003}}) {
      const Tensor x = convert(random_f32({n}, 900 + n), dt);
      double want = 0.0;
      for (float v : values(x)) want += double(v) * double(v);
      const Tensor gx = gpu(x);
      const double got = be->sum_squares(gx);
      EXPECT_NEAR(got, want, 1e-12 * want) << dtype_name(dt) << " n=" << n;
      EXPECT_EQ(got, be->sum_squares(gx)) << "not deterministic";
    }
}

TEST(CudaBackwardOptimizer, AdamwUpdateIsBitwiseEqualToCpu) {
  SKIP_WITHOUT_GPU();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  const int64_t n = 100003;
  backend::AdamWScalars s;
  const double lr = 1e-3, wd = 0.1, beta1 = 0.9, beta2 = 0.95, step = 3;
  s.decay = true;
  s.decay_factor = static_cast<float>(1.0 - lr * wd);
  s.lerp_weight = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step)));
  s.eps = 1e-8f;
  s.neg_step_size = static_cast<float>(-(lr / (1.0 - std::pow(beta1, step))));
  s.grad_scale = 0.7f;
  for (DType compute_dtype : {DType::kBF16, DType::kF32, DType::kF64 /* = none */}) {
    Tensor master = random_f32({n}, 1000), grad = random_f32({n}, 1001, 0.01f);
    Tensor m = random_f32({n}, 1002, 0.01f), v = random_f32({n}, 1003, 1e-4f);
    for (float& x : std::span(v.mutable_data<float>(), n)) x = std::abs(x);
    Tensor gmaster = gpu(master), gm = gpu(m), gv = gpu(v);
    const bool with_compute = compute_dtype != DType::kF64;
    Tensor compute = with_compute ? Tensor::empty(compute_dtype, {n}) : Tensor{};
    Tensor gcompute = with_compute ? poisoned_gpu({n}, compute_dtype) : Tensor{};
    cpu->adamw_update(master, grad, m, v, s, compute);
    be->adamw_update(gmaster, gpu(grad), gm, gv, s, gcompute);
    for (auto [got, want, what] : {std::tuple{&gmaster, &master, "master"},
                                   std::tuple{&gm, &m, "exp_avg"}, std::tuple{&gv, &v, "exp_avg_sq"},
                                   std::tuple{&gcompute, &compute, "compute"}}) {
      if (!want->defined()) continue;
      const Tensor h = got->to(Device::kCPU);
      EXPECT_EQ(std::memcmp(h.data(), want->data(), want->nbytes()), 0)
          << "adamw_update " << what << " differs from the CPU (compute "
          << dtype_name(compute_dtype) << ")";
    }
  }
}

TEST(CudaBackwardOptimizer, ConvertIsExact) {
  SKIP_WITHOUT_GPU();
  auto be = backend::make_cuda_backend(0, DType::kF32);
  const Tensor x = random_f32({37, 129}, 1100, 100.0f);
  for (DType from : {DType::kF32, DType::kBF16, DType::kF16})
    for (DType to : {DType::kF32, DType::kBF16, DType::kF16}) {
      const Tensor src = convert(x, from);
      const Tensor want = convert(Tensor::copy_of(DType::kF32, {37, 129}, values(src).data()), to);
      Tensor got = poisoned_gpu({37, 129}, to);
      be->convert(gpu(src), got);
      const Tensor h = got.to(Device::kCPU);
      EXPECT_EQ(std::memcmp(h.data(), want.data(), want.nbytes()), 0)
          << "convert " << dtype_name(from) << " -> " << dtype_name(to);
    }
}

}  // namespace
}  // namespace refinery
