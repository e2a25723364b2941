// Packing codes into AutoAWQ GEMM int32 words (transposed: the packed axis is `out`).
#include "quantize/awq_pack.hpp"

#include <cstring>

#include "engine/backend/awq_dequant.hpp"
#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery::quantize {

backend::AwqWeight pack_awq(const QuantizedMatrix& q) {
  const int bits = q.spec.bits;
  const int64_t pack = backend::awq_pack_factor(bits);
  const int64_t g = q.spec.group_size;
  REFINERY_CHECK(q.out > 0 && q.in > 0 && q.out % pack == 0 && q.in % g == 0, "pack_awq: a [",
                 q.out, ", ", q.in, "] matrix cannot be packed with group size ", g, " and ", pack,
                 " codes per word");
  const int64_t words = q.out / pack, groups = q.in / g;
  backend::AwqWeight w;
  w.bits = bits;
  w.group_size = static_cast<int>(g);
  w.out = q.out;
  w.in = q.in;
  w.qweight = Tensor::zeros(DType::kI32, {q.in, words});
  w.qzeros = Tensor::zeros(DType::kI32, {groups, words});
  w.scales = Tensor::empty(DType::kF16, {groups, q.out});
  auto* qw = w.qweight.mutable_data<int32_t>();
  auto* qz = w.qzeros.mutable_data<int32_t>();
  auto* sc = static_cast<uint16_t*>(w.scales.mutable_data());
  for (int64_t r = 0; r < q.out; ++r) {
    const int shift = backend::awq_lane_shift(bits, static_cast<int>(r % pack));
    const int64_t word = r / pack;
    for (int64_t c = 0; c < q.in; ++c) {
      const uint32_t code = q.codes[static_cast<std::size_t>(r * q.in + c)];
      auto& dst = reinterpret_cast<uint32_t&>(qw[c * words + word]);
      dst |= code << shift;
    }
    for (int64_t k = 0; k < groups; ++k) {
      const uint32_t zero = q.zeros[static_cast<std::size_t>(r * groups + k)];
      auto& dst = reinterpret_cast<uint32_t&>(qz[k * words + word]);
      dst |= zero << shift;
      sc[k * q.out + r] = f32_to_f16(q.scales[static_cast<std::size_t>(r * groups + k)]);
    }
  }
  return w;
}

QuantizedMatrix unpack_awq(const backend::AwqWeight& w) {
  backend::validate_awq(w, "unpack_awq");
  const int64_t pack = backend::awq_pack_factor(w.bits);
  const int64_t g = w.group_size, words = w.out / pack, groups = w.in / g;
  const uint32_t mask = backend::awq_container_mask(w.bits);
  QuantizedMatrix q;
  q.out = w.out;
  q.in = w.in;
  q.spec = GroupQuantSpec{w.bits, w.group_size, true};
  q.codes.resize(static_cast<std::size_t>(w.out * w.in));
  q.zeros.resize(static_cast<std::size_t>(w.out * groups));
  q.scales.resize(static_cast<std::size_t>(w.out * groups));
  const Tensor qw = w.qweight.to(Device::kCPU), qz = w.qzeros.to(Device::kCPU),
               sc = w.scales.to(Device::kCPU);
  const auto word_at = [](const Tensor& t, int64_t i) {
    uint32_t v;
    std::memcpy(&v, static_cast<const std::byte*>(t.data()) + 4 * i, 4);
    return v;
  };
  for (int64_t r = 0; r < w.out; ++r) {
    const int shift = backend::awq_lane_shift(w.bits, static_cast<int>(r % pack));
    for (int64_t c = 0; c < w.in; ++c)
      q.codes[static_cast<std::size_t>(r * w.in + c)] =
          static_cast<uint8_t>((word_at(qw, c * words + r / pack) >> shift) & mask);
    for (int64_t k = 0; k < groups; ++k) {
      q.zeros[static_cast<std::size_t>(r * groups + k)] =
          static_cast<uint8_t>((word_at(qz, k * words + r / pack) >> shift) & mask);
      uint16_t h;
      std::memcpy(&h, static_cast<const std::byte*>(sc.data()) + 2 * (k * w.out + r), 2);
      q.scales[static_cast<std::size_t>(r * groups + k)] = f16_to_f32(h);
    }
  }
  return q;
}

}  // namespace refinery::quantize
