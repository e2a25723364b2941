// Tensor: shapes, storage kinds, views without copies, bounds checks, explicit copies.
#include "engine/core/tensor.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "engine/core/error.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery {
namespace {

// `f` must throw a refinery::Error of `kind` whose message contains `must_contain`.
template <typename F>
void expect_error(ErrorKind kind, F&& f, const std::string& must_contain = "") {
  const std::string message = refinery::test::error_message_of(std::forward<F>(f), kind);
  EXPECT_NE(message.find(must_contain), std::string::npos) << message;
}

Tensor arange_f32(std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::kF32, std::move(shape));
  float* p = t.mutable_data<float>();
  std::iota(p, p + t.numel(), 0.0f);
  return t;
}

TEST(Tensor, PropertiesAndDescribe) {
  Tensor t = Tensor::empty(DType::kBF16, {4096, 11008});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_EQ(t.ndim(), 2);
  EXPECT_EQ(t.size(0), 4096);
  EXPECT_EQ(t.size(1), 11008);
  EXPECT_EQ(t.size(-1), 11008);
  EXPECT_EQ(t.size(-2), 4096);
  EXPECT_EQ(t.numel(), 4096 * 11008);
  EXPECT_EQ(t.nbytes(), 4096u * 11008u * 2u);
  EXPECT_EQ(t.device(), Device::kCPU);
  EXPECT_FALSE(t.is_read_only());
  EXPECT_EQ(t.describe(), "bf16[4096, 11008]");
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()) % 64, 0u);  // owned buffers: 64-aligned
  expect_error(ErrorKind::kInternal, [&] { t.size(2); });
  expect_error(ErrorKind::kInternal, [&] { t.size(-3); });

  EXPECT_EQ(Tensor::empty(DType::kF8E4M3, {3}).describe(), "f8_e4m3[3]");
  Tensor scalar = Tensor::zeros(DType::kF32, {});
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.nbytes(), 4u);
  EXPECT_EQ(scalar.describe(), "f32[]");
  EXPECT_EQ(*scalar.data<float>(), 0.0f);
  Tensor none = Tensor::empty(DType::kI32, {0, 5});
  EXPECT_EQ(none.numel(), 0);
  EXPECT_EQ(none.nbytes(), 0u);
  EXPECT_NE(none.data(), nullptr);
}

TEST(Tensor, ZerosAreZero) {
  Tensor t = Tensor::zeros(DType::kF16, {3, 5});
  const uint16_t* p = t.data<uint16_t>();
  for (int i = 0; i < 15; ++i) EXPECT_EQ(p[i], 0);
}

TEST(Tensor, BadShapesAreUserErrors) {
  expect_error(ErrorKind::kUser, [] { Tensor::empty(DType::kF32, {2, -1}); }, "negative");
  expect_error(ErrorKind::kUser, [] {
    Tensor::empty(DType::kF32, {int64_t{1} << 40, int64_t{1} << 40});
  }, "overflow");
  expect_error(ErrorKind::kUser, [] {
    Tensor::empty(DType::kF32, {int64_t{1} << 61, 2});  // numel fits, bytes do not
  });
  expect_error(ErrorKind::kUser, [] { Tensor::empty(DType::kF4, {3}); }, "whole number of bytes");
  EXPECT_EQ(Tensor::empty(DType::kF4, {2, 3}).nbytes(), 3u);
}

TEST(Tensor, TypedAccessChecksDType) {
  Tensor t = Tensor::zeros(DType::kBF16, {4});
  EXPECT_NO_THROW(t.data<uint16_t>());
  EXPECT_NO_THROW(t.data<std::byte>());
  expect_error(ErrorKind::kInternal, [&] { t.data<float>(); }, "BF16");
  expect_error(ErrorKind::kInternal, [&] { t.mutable_data<int16_t>(); });
  Tensor e = Tensor::zeros(DType::kF8E4M3, {4});
  EXPECT_NO_THROW(e.data<uint8_t>());
  expect_error(ErrorKind::kInternal, [&] { e.data<int8_t>(); });
  Tensor ids = Tensor::zeros(DType::kI64, {2});
  ids.mutable_data<int64_t>()[1] = 42;
  EXPECT_EQ(ids.data<int64_t>()[1], 42);
}

TEST(Tensor, CopiesOfTheHandleShareStorage) {
  Tensor a = arange_f32({2, 3});
  Tensor b = a;
  EXPECT_TRUE(a.shares_storage_with(b));
  b.mutable_data<float>()[4] = -1.0f;
  EXPECT_EQ(a.data<float>()[4], -1.0f);
  EXPECT_FALSE(a.shares_storage_with(arange_f32({2, 3})));
}

TEST(Tensor, SliceIsAViewAtAnOffset) {
  Tensor t = arange_f32({4, 3});
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(rows.shares_storage_with(t));
  EXPECT_EQ(rows.storage_offset(), 3 * sizeof(float));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  EXPECT_EQ(rows.data<float>()[5], 8.0f);
  rows.mutable_data<float>()[0] = 100.0f;  // writes land in the parent
  EXPECT_EQ(t.data<float>()[3], 100.0f);
  EXPECT_EQ(t.slice(4, 4).numel(), 0);
  EXPECT_EQ(t.slice(0, 4).nbytes(), t.nbytes());
  // Slices of slices stay relative.
  EXPECT_EQ(rows.slice(1, 2).data<float>()[0], 6.0f);

  expect_error(ErrorKind::kUser, [&] { t.slice(3, 5); }, "out of range");
  expect_error(ErrorKind::kUser, [&] { t.slice(-1, 2); });
  expect_error(ErrorKind::kUser, [&] { t.slice(3, 2); });
  expect_error(ErrorKind::kUser, [&] { rows.slice(0, 3); });  // bounded by the view, not storage
  expect_error(ErrorKind::kInternal, [&] { Tensor::zeros(DType::kF32, {}).slice(0, 0); });
}

TEST(Tensor, SelectDropsDimensionZero) {
  Tensor t = arange_f32({4, 3});
  Tensor row = t.select(2);
  EXPECT_EQ(row.shape(), (std::vector<int64_t>{3}));
  EXPECT_EQ(row.data<float>()[0], 6.0f);
  Tensor element = row.select(1);
  EXPECT_EQ(element.ndim(), 0);
  EXPECT_EQ(*element.data<float>(), 7.0f);
  expect_error(ErrorKind::kUser, [&] { t.select(4); });
  expect_error(ErrorKind::kUser, [&] { t.select(-1); });
}

TEST(Tensor, SubByteSlicesMustStartOnAByte) {
  Tensor packed = Tensor::zeros(DType::kF4, {4, 1});  // 4 values in 2 bytes
  expect_error(ErrorKind::kUser, [&] { packed.slice(1, 2); }, "whole number of bytes");
  Tensor tail = packed.slice(2, 4);
  EXPECT_EQ(tail.storage_offset(), 1u);
  EXPECT_EQ(tail.nbytes(), 1u);
}

TEST(Tensor, ViewReshapes) {
  Tensor t = arange_f32({2, 3, 4});
  Tensor v = t.view({6, 4});
  EXPECT_TRUE(v.shares_storage_with(t));
  EXPECT_EQ(v.data(), t.data());
  EXPECT_EQ(t.view({-1}).shape(), (std::vector<int64_t>{24}));
  EXPECT_EQ(t.reshape({4, -1, 2}).shape(), (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(t.slice(1, 2).view({3, 4}).data<float>()[0], 12.0f);
  expect_error(ErrorKind::kUser, [&] { t.view({5, 5}); }, "counts must match");
  expect_error(ErrorKind::kUser, [&] { t.view({-1, -1}); });
  expect_error(ErrorKind::kUser, [&] { t.view({5, -1}); });
  expect_error(ErrorKind::kUser, [&] { t.view({-2, -12}); });
  Tensor empty = Tensor::empty(DType::kF32, {0, 4});
  expect_error(ErrorKind::kUser, [&] { empty.view({0, -1}); });  // cannot infer
  EXPECT_EQ(empty.view({4, 0}).numel(), 0);
}

TEST(Tensor, ViewBytesReinterpretsWithinBounds) {
  // A "file": 4 header bytes, then bf16 [2, 2] = {1, 2, -1, 0.5}.
  const uint16_t bf16[] = {0x3F80, 0x4000, 0xBF80, 0x3F00};
  Tensor file = Tensor::zeros(DType::kU8, {12});
  std::memcpy(file.mutable_data<uint8_t>() + 4, bf16, sizeof bf16);
  Tensor w = file.view_bytes(4, DType::kBF16, {2, 2});
  EXPECT_TRUE(w.shares_storage_with(file));
  EXPECT_EQ(w.storage_offset(), 4u);
  EXPECT_EQ(w.data<uint16_t>()[2], 0xBF80);
  Tensor f = w.to_f32();
  EXPECT_FALSE(f.shares_storage_with(file));
  EXPECT_EQ(f.dtype(), DType::kF32);
  EXPECT_EQ(f.shape(), w.shape());
  EXPECT_EQ(f.data<float>()[0], 1.0f);
  EXPECT_EQ(f.data<float>()[1], 2.0f);
  EXPECT_EQ(f.data<float>()[2], -1.0f);
  EXPECT_EQ(f.data<float>()[3], 0.5f);

  EXPECT_EQ(file.view_bytes(12, DType::kF32, {0}).numel(), 0);
  expect_error(ErrorKind::kUser, [&] { file.view_bytes(6, DType::kF32, {2}); }, "outside");
  expect_error(ErrorKind::kUser, [&] { file.view_bytes(13, DType::kU8, {0}); });
  expect_error(ErrorKind::kUser, [&] {
    file.view_bytes(std::numeric_limits<std::size_t>::max() - 1, DType::kU8, {4});
  });
  // Relative to the view, not the storage.
  expect_error(ErrorKind::kUser, [&] { w.view_bytes(2, DType::kBF16, {4}); });
}

TEST(Tensor, ExternalStorageIsKeptAliveByItsOwner) {
  auto buffer = std::make_shared<std::vector<float>>(std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f});
  std::weak_ptr<std::vector<float>> watch = buffer;
  Tensor t = Tensor::from_external(DType::kF32, {2, 2}, buffer->data(), buffer);
  Tensor row = t.select(1);
  buffer.reset();
  t = Tensor();
  EXPECT_FALSE(watch.expired());  // the view still holds the region
  EXPECT_EQ(row.data<float>()[1], 4.0f);
  row = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, ReadOnlyExternalRefusesWrites) {
  static const float kWeights[] = {0.5f, 1.5f};
  Tensor t = Tensor::from_external(DType::kF32, {2}, kWeights, nullptr);
  EXPECT_TRUE(t.is_read_only());
  EXPECT_EQ(t.data<float>()[1], 1.5f);
  EXPECT_EQ(t.data(), static_cast<const void*>(kWeights));  // no copy
  expect_error(ErrorKind::kInternal, [&] { t.mutable_data(); }, "read-only");
  expect_error(ErrorKind::kInternal, [&] { t.mutable_data<float>(); });
  expect_error(ErrorKind::kInternal, [&] { t.copy_from(Tensor::zeros(DType::kF32, {2})); });
  EXPECT_TRUE(t.slice(0, 1).is_read_only());  // views inherit it
  Tensor copy = t.clone();
  EXPECT_FALSE(copy.is_read_only());
  copy.mutable_data<float>()[0] = 9.0f;
  EXPECT_EQ(kWeights[0], 0.5f);

  std::vector<int32_t> writable = {1, 2};
  Tensor w = Tensor::from_external(DType::kI32, {2}, writable.data(), nullptr, /*read_only=*/false);
  w.mutable_data<int32_t>()[0] = 7;
  EXPECT_EQ(writable[0], 7);
}

TEST(Tensor, UnalignedRegionNeedsACopyForTypedAccess) {
  alignas(8) unsigned char bytes[9] = {};
  const uint16_t h[] = {0x3C00, 0xC000, 0x7BFF, 0x0001};  // f16 1, -2, 65504, 2^-24
  std::memcpy(bytes + 1, h, sizeof h);
  Tensor t = Tensor::from_external(DType::kF16, {4}, bytes + 1, nullptr);
  expect_error(ErrorKind::kInternal, [&] { t.data<uint16_t>(); }, "aligned");
  EXPECT_NO_THROW(t.data<std::byte>());
  Tensor f = t.to_f32();  // conversion reads unaligned memory safely
  EXPECT_EQ(f.data<float>()[0], 1.0f);
  EXPECT_EQ(f.data<float>()[1], -2.0f);
  EXPECT_EQ(f.data<float>()[2], 65504.0f);
  EXPECT_EQ(f.data<float>()[3], 0x1p-24f);
  EXPECT_EQ(t.clone().data<uint16_t>()[2], 0x7BFF);
}

TEST(Tensor, ToF32ConvertsEveryStorageFormat) {
  const uint8_t e4m3[] = {0x38, 0xC0, 0x7E, 0x01};
  Tensor e = Tensor::copy_of(DType::kF8E4M3, {2, 2}, e4m3);
  Tensor f = e.to_f32();
  EXPECT_EQ(f.describe(), "f32[2, 2]");
  EXPECT_EQ(f.data<float>()[0], 1.0f);
  EXPECT_EQ(f.data<float>()[1], -2.0f);
  EXPECT_EQ(f.data<float>()[2], 448.0f);
  EXPECT_EQ(f.data<float>()[3], 0x1p-9f);
  const int64_t ids[] = {3, -4};
  EXPECT_EQ(Tensor::copy_of(DType::kI64, {2}, ids).to_f32().data<float>()[1], -4.0f);
  Tensor g = arange_f32({3});
  Tensor g32 = g.to_f32();
  EXPECT_FALSE(g32.shares_storage_with(g));  // always a copy
  expect_error(ErrorKind::kUser, [] { Tensor::zeros(DType::kF4, {2}).to_f32(); });
}

TEST(Tensor, CopyFromChecksDTypeAndShape) {
  Tensor a = arange_f32({2, 3});
  Tensor b = Tensor::zeros(DType::kF32, {2, 3});
  b.copy_from(a);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0);
  EXPECT_FALSE(a.shares_storage_with(b));
  expect_error(ErrorKind::kInternal, [&] { b.copy_from(arange_f32({3, 2})); }, "shape");
  expect_error(ErrorKind::kInternal, [&] { b.copy_from(Tensor::zeros(DType::kBF16, {2, 3})); });
  expect_error(ErrorKind::kInternal, [&] { b.copy_from(Tensor()); });
  // Overlapping views of one storage: memmove semantics.
  Tensor t = arange_f32({4});
  t.slice(1, 4).copy_from(t.slice(0, 3));
  EXPECT_EQ(t.data<float>()[0], 0.0f);
  EXPECT_EQ(t.data<float>()[1], 0.0f);
  EXPECT_EQ(t.data<float>()[2], 1.0f);
  EXPECT_EQ(t.data<float>()[3], 2.0f);
  Tensor c = a.to(Device::kCPU);
  EXPECT_FALSE(c.shares_storage_with(a));
  EXPECT_EQ(c.data<float>()[5], 5.0f);
}

TEST(Tensor, UndefinedTensor) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.describe(), "undefined");
  EXPECT_EQ(t.numel(), 0);
  expect_error(ErrorKind::kInternal, [&] { t.data(); }, "undefined");
  expect_error(ErrorKind::kInternal, [&] { t.slice(0, 0); });
  expect_error(ErrorKind::kInternal, [&] { t.to_f32(); });
  EXPECT_FALSE(t.shares_storage_with(Tensor()));
}

#ifndef REFINERY_WITH_CUDA
TEST(Tensor, CudaTensorInACpuBuildIsAUserError) {
  expect_error(ErrorKind::kUser, [] { Tensor::empty(DType::kF32, {2}, Device::kCUDA); },
               "this build has no CUDA backend; rebuild with nvcc present or use --device cpu");
  expect_error(ErrorKind::kUser, [] { arange_f32({2}).to(Device::kCUDA); }, "no CUDA backend");
}
#endif

}  // namespace
}  // namespace refinery
