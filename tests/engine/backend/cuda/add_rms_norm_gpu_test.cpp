// CUDA add_rms_norm (x += delta; out = rms_norm(x) * weight) against the CPU op, and against the
// CUDA add followed by the CUDA rms_norm. Outputs are poisoned before each run. Error bounds:
//   x (the f32 residual sum): bit for bit with the CPU (one f32 rounding of the same operands);
//   out, f32: |err| <= 1e-5 · max|ref| (the f32 tree reduction vs the CPU's f64 sum, as rms_norm);
//   out, bf16: additionally one bf16 rounding, 2^-8 |ref| per element;
//   against CUDA add + rms_norm: bit for bit (one shared row walk sums the squares in one order),
//     on the vector path (rows of whole aligned 4-element chunks) and on the element path alike.
#include <cstring>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::kCPU), hb = b.to(Device::kCPU);
  return ha.shape() == hb.shape() && ha.dtype() == hb.dtype() &&
         std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
}

// 2^-8 |ref| per element: one bf16 rounding.
std::vector<float> bf16_rounding_bound(const Tensor& want) {
  std::vector<float> b = values(want);
  for (float& v : b) v = std::abs(v) * (1.0f / 256.0f);
  return b;
}

struct AddRmsNormGpu : ::testing::Test {
  std::shared_ptr<backend::Backend> cpu = backend::make_cpu_backend(1);
};

struct Case {
  int64_t rows, d;
  DType delta_dtype, out_dtype, weight_dtype;
};

TEST_F(AddRmsNormGpu, MatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const DType f32 = DType::kF32, bf16 = DType::kBF16;
  // d = 1, 131, 1025: the element path; 12, 200, 1000, 4096, 5000: the vector path.
  const Case cases[] = {{1, 1, f32, f32, f32},         {7, 131, f32, f32, f32},
                        {7, 131, bf16, bf16, bf16},    {33, 1000, f32, f32, bf16},
                        {2, 5000, bf16, f32, f32},     {5, 4096, bf16, bf16, bf16},
                        {9, 200, f32, bf16, DType::kF16}, {3, 12, bf16, bf16, f32},
                        {5, 1025, bf16, bf16, bf16}};
  for (const Case& c : cases) {
    const std::string what =
        str("add_rms_norm [", c.rows, ", ", c.d, "] delta ", dtype_name(c.delta_dtype), " out ",
            dtype_name(c.out_dtype), " weight ", dtype_name(c.weight_dtype));
    const Tensor x0 = random_f32({c.rows, c.d}, 1 + c.d, 3.0f);
    // The same delta values for both backends: rounded to the CUDA dtype, widened for the CPU.
    const Tensor delta_dev = convert(random_f32({c.rows, c.d}, 2 + c.d, 0.5f), c.delta_dtype);
    const Tensor delta_cpu = Tensor::copy_of(DType::kF32, {c.rows, c.d}, values(delta_dev).data());
    const Tensor w = convert(random_f32({c.d}, 3 + c.d), c.weight_dtype);

    Tensor x_want = x0.clone();
    Tensor out_want = Tensor::empty(DType::kF32, {c.rows, c.d});
    cpu->add_rms_norm(x_want, delta_cpu, w, 1e-6f, out_want);

    Tensor x_got = gpu(x0);
    Tensor out_got = poisoned_gpu({c.rows, c.d}, c.out_dtype);
    be->add_rms_norm(x_got, gpu(delta_dev), w, 1e-6f, out_got);
    EXPECT_TRUE(close(what + " x", x_got, x_want, 0.0));
    const double tol = 1e-5 * max_abs(out_want);
    if (c.out_dtype == DType::kF32)
      EXPECT_TRUE(close(what + " out", out_got, out_want, tol));
    else
      EXPECT_TRUE(close(what + " out", out_got, out_want, tol, bf16_rounding_bound(out_want)));

    // CUDA add + rms_norm: the same bits.
    Tensor x_two = gpu(x0);
    Tensor out_two = poisoned_gpu({c.rows, c.d}, c.out_dtype);
    be->add(x_two, gpu(delta_dev), x_two);
    be->rms_norm(x_two, w, 1e-6f, out_two);
    EXPECT_TRUE(same_bits(x_got, x_two)) << what << ": x vs add";
    EXPECT_TRUE(same_bits(out_got, out_two)) << what << ": out vs add + rms_norm";
  }
}

// Rows of whole 4-element chunks, once aligned (vector loads) and once shifted by one element
// (element loads): the same bits; and out may alias delta.
TEST_F(AddRmsNormGpu, VectorAndElementPathsAgreeAndOutMayAliasDelta) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const int64_t rows = 6, d = 1024;
  const Tensor x0 = random_f32({rows, d}, 11, 2.0f);
  const Tensor delta = convert(random_f32({rows, d}, 12), DType::kBF16);
  const Tensor w = convert(random_f32({d}, 13), DType::kBF16);

  Tensor x_vec = gpu(x0);
  Tensor out_vec = poisoned_gpu({rows, d}, DType::kBF16);
  be->add_rms_norm(x_vec, gpu(delta), w, 1e-5f, out_vec);

  // x shifted by 4 bytes inside a larger allocation: not 16-byte aligned.
  Tensor backing = poisoned_gpu({rows * d + 1});
  Tensor x_shifted = backing.view_bytes(sizeof(float), DType::kF32, {rows, d});
  x_shifted.copy_from(gpu(x0));
  Tensor out_elem = poisoned_gpu({rows, d}, DType::kBF16);
  be->add_rms_norm(x_shifted, gpu(delta), w, 1e-5f, out_elem);
  EXPECT_TRUE(same_bits(x_vec, x_shifted));
  EXPECT_TRUE(same_bits(out_vec, out_elem));

  Tensor x_alias = gpu(x0);
  Tensor delta_out = gpu(delta);  // out aliases delta
  be->add_rms_norm(x_alias, delta_out, w, 1e-5f, delta_out);
  EXPECT_TRUE(same_bits(x_vec, x_alias));
  EXPECT_TRUE(same_bits(out_vec, delta_out));
}

TEST_F(AddRmsNormGpu, RejectsOutOverX) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  Tensor x = gpu(random_f32({3, 8}, 1));
  try {
    be->add_rms_norm(x, gpu(random_f32({3, 8}, 2)), random_f32({8}, 3), 1e-6f, x);
    ADD_FAILURE() << "add_rms_norm accepted out == x";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("overlaps x"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace refinery
