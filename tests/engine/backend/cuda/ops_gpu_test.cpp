// CUDA backend vs CPU backend: rms_norm, embedding, add, swiglu, sigmoid_gate, copy_columns,
// fill_zero, gather_rows, scatter_add_rows. Error bounds (absolute, relative to the output scale):
// exact copies (embedding, copy_columns, gather_rows) must match bit for bit; element-wise math
// within 1e-6 (expf vs std::exp and FMA contraction differ by an ulp or two); rms_norm within
// 1e-5 (f32 tree reduction vs the CPU's f64 sum).
#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;

struct OpsGpu : ::testing::Test {
  std::shared_ptr<backend::Backend> cpu = backend::make_cpu_backend(1);
  std::shared_ptr<backend::Backend> cuda() { return backend::make_cuda_backend(0); }
};

TEST_F(OpsGpu, RmsNormMatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  for (auto [rows, d] : {std::pair<int64_t, int64_t>{1, 72}, {7, 200}, {33, 1000}, {2, 5000}})
    for (DType wt : {DType::kF32, DType::kBF16}) {
      const Tensor x = random_f32({rows, d}, 1 + rows, 3.0f);
      const Tensor w = convert(random_f32({d}, 2 + d), wt);
      Tensor want = Tensor::empty(DType::kF32, {rows, d});
      cpu->rms_norm(x, w, 1e-6f, want);
      Tensor got = poisoned_gpu({rows, d});
      be->rms_norm(gpu(x), w, 1e-6f, got);
      const std::string what = str("rms_norm ", dtype_name(wt), " [", rows, ", ", d, "]");
      EXPECT_TRUE(close(what, got, want, 1e-5 * max_abs(want)));
      Tensor inplace = gpu(x);  // y aliases x
      be->rms_norm(inplace, w, 1e-6f, inplace);
      EXPECT_TRUE(close(what + " in place", inplace, want, 1e-5 * max_abs(want)));
    }
}

TEST_F(OpsGpu, EmbeddingMatchesCpuAndRejectsBadIds) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Tensor table = convert(random_f32({50, 72}, 3), dt);
    const std::vector<int32_t> id_values{0, 49, 7, 7, 13, 1, 48};
    const Tensor ids = Tensor::copy_of(DType::kI32, {7}, id_values.data());
    Tensor want = Tensor::empty(DType::kF32, {7, 72});
    cpu->embedding(ids, table, want);
    Tensor got = poisoned_gpu({7, 72});
    be->embedding(gpu(ids), table, got);
    EXPECT_TRUE(close(str("embedding ", dtype_name(dt)), got, want, 0.0));
  }
  const Tensor table = random_f32({50, 72}, 3);
  for (int32_t bad : {-1, 50}) {
    const std::vector<int32_t> id_values{1, bad};
    Tensor out = poisoned_gpu({2, 72});
    try {
      be->embedding(gpu(Tensor::copy_of(DType::kI32, {2}, id_values.data())), table, out);
      ADD_FAILURE() << "embedding accepted id " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser) << e.what();
      EXPECT_NE(std::string(e.what()).find("position 1"), std::string::npos) << e.what();
    }
  }
}

TEST_F(OpsGpu, ElementwiseOpsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  for (auto [rows, d] : {std::pair<int64_t, int64_t>{1, 72}, {7, 200}, {33, 129}}) {
    const Tensor a = random_f32({rows, d}, 10 + rows, 2.0f), b = random_f32({rows, d}, 20 + d);
    const Tensor g = random_f32({rows, 1}, 30 + rows, 2.0f);
    const std::string shape = str(" [", rows, ", ", d, "]");
    Tensor want = Tensor::empty(DType::kF32, {rows, d});
    Tensor got = poisoned_gpu({rows, d});

    cpu->add(a, b, want);
    be->add(gpu(a), gpu(b), got);
    EXPECT_TRUE(close("add" + shape, got, want, 0.0));
    Tensor acc = gpu(a);
    be->add(acc, gpu(b), acc);  // the residual add aliases its output
    EXPECT_TRUE(close("add in place" + shape, acc, want, 0.0));

    cpu->swiglu(a, b, want);
    got = poisoned_gpu({rows, d});
    be->swiglu(gpu(a), gpu(b), got);
    EXPECT_TRUE(close("swiglu" + shape, got, want, 1e-6 * max_abs(want)));
    Tensor gate = gpu(a);
    be->swiglu(gate, gpu(b), gate);
    EXPECT_TRUE(close("swiglu in place" + shape, gate, want, 1e-6 * max_abs(want)));
    if (rows * d > 1) {  // views one element in: misaligned for 16-byte vectors (scalar kernel)
      const int64_t n = rows * d;
      Tensor out = poisoned_gpu({n});
      Tensor out_view = out.slice(1, n);
      be->swiglu(gpu(a).view({n}).slice(1, n), gpu(b).view({n}).slice(1, n), out_view);
      EXPECT_TRUE(close("swiglu misaligned" + shape, out_view, want.view({n}).slice(1, n),
                        1e-6 * max_abs(want)));
    }

    cpu->sigmoid_gate(a, g, want);
    got = poisoned_gpu({rows, d});
    be->sigmoid_gate(gpu(a), gpu(g), got);
    EXPECT_TRUE(close("sigmoid_gate" + shape, got, want, 1e-6 * max_abs(want)));
    Tensor x = gpu(a);
    be->sigmoid_gate(x, gpu(g), x);
    EXPECT_TRUE(close("sigmoid_gate in place" + shape, x, want, 1e-6 * max_abs(want)));

    Tensor zero = gpu(a);
    be->fill_zero(zero);
    EXPECT_TRUE(close("fill_zero" + shape, zero, Tensor::zeros(DType::kF32, {rows, d}), 0.0));
  }
}

TEST_F(OpsGpu, CopyColumnsMatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  for (int64_t rows : {1, 7, 33}) {
    const Tensor src = random_f32({rows, 200}, 40 + rows);
    Tensor want = random_f32({rows, 72}, 50 + rows);  // untouched columns must survive
    Tensor got = gpu(want);
    cpu->copy_columns(src, 131, want, 5, 60);
    be->copy_columns(gpu(src), 131, got, 5, 60);
    EXPECT_TRUE(close(str("copy_columns rows ", rows), got, want, 0.0));
    // Each source row broadcast to 16 destination rows (MLA's rope key to every head).
    Tensor want_wide = random_f32({rows * 16, 72}, 60 + rows);
    Tensor got_wide = gpu(want_wide);
    cpu->copy_columns(src, 3, want_wide, 64, 8);
    be->copy_columns(gpu(src), 3, got_wide, 64, 8);
    EXPECT_TRUE(close(str("copy_columns broadcast rows ", rows), got_wide, want_wide, 0.0));
  }
}

TEST_F(OpsGpu, GatherAndScatterRowsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  const Tensor x = random_f32({9, 72}, 60);
  const std::vector<int32_t> r{8, 0, 3, 3, 8, 1, 0};  // repeats: scatter-add accumulates
  const Tensor rows = Tensor::copy_of(DType::kI32, {7}, r.data());
  Tensor want = Tensor::empty(DType::kF32, {7, 72});
  cpu->gather_rows(x, rows, want);
  Tensor got = poisoned_gpu({7, 72});
  be->gather_rows(gpu(x), gpu(rows), got);
  EXPECT_TRUE(close("gather_rows", got, want, 0.0));

  const Tensor src = random_f32({7, 72}, 61), scale = random_f32({7}, 62);
  Tensor y_want = random_f32({9, 72}, 63);
  Tensor y_got = gpu(y_want);
  cpu->scatter_add_rows(src, rows, scale, y_want);
  be->scatter_add_rows(gpu(src), gpu(rows), gpu(scale), y_got);
  EXPECT_TRUE(close("scatter_add_rows", y_got, y_want, 1e-6 * max_abs(y_want)));

  const std::vector<int32_t> bad{0, 9};
  Tensor out = poisoned_gpu({2, 72});
  EXPECT_THROW(be->gather_rows(gpu(x), gpu(Tensor::copy_of(DType::kI32, {2}, bad.data())), out),
               Error);
}

TEST_F(OpsGpu, UploadDownloadRoundTrip) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = cuda();
  EXPECT_EQ(be->device(), Device::kCUDA);
  EXPECT_EQ(be->name(), "cuda");
  const Tensor x = random_f32({3, 5}, 70);
  const Tensor d = be->upload(x);
  EXPECT_EQ(d.device(), Device::kCUDA);
  EXPECT_TRUE(be->upload(d).shares_storage_with(d));  // already there: a view
  const Tensor back = be->download(d);
  EXPECT_EQ(back.device(), Device::kCPU);
  EXPECT_TRUE(close("upload/download", back, x, 0.0));
  const Tensor e = be->empty(DType::kI32, {4});
  EXPECT_EQ(e.device(), Device::kCUDA);
  EXPECT_EQ(e.dtype(), DType::kI32);
}

TEST(CudaBackendFactory, WithoutDeviceIsAUserError) {
  if (!cuda::list_devices().empty()) GTEST_SKIP() << "a CUDA device is present";
  try {
    backend::make_cuda_backend(0);
    ADD_FAILURE() << "make_cuda_backend succeeded without a device";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser) << e.what();
  }
}

}  // namespace
}  // namespace refinery
