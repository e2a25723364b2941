// Unpacking AutoAWQ GEMM words (see awq_dequant.hpp). The loop walks input columns c and, per
// column, the packed words covering the tile's output rows: each word holds `pack` consecutive
// output rows, so one load serves 8 (or 4) outputs.
#include "engine/backend/awq_dequant.hpp"

#include <array>
#include <cstring>
#include <vector>

#include "engine/core/error.hpp"

namespace refinery::backend {

namespace {

// Inverse of AutoAWQ's order [0,2,4,6,1,3,5,7]: lane j is stored in nibble kNibbleOfLane[j].
constexpr std::array<int, 8> kNibbleOfLane = {0, 4, 1, 5, 2, 6, 3, 7};

std::string shape_text(const Tensor& t) { return t.defined() ? t.describe() : "nothing"; }

}  // namespace

int awq_lane_shift(int bits, int lane) {
  if (bits == 8) return 8 * lane;
  return 4 * kNibbleOfLane[static_cast<std::size_t>(lane)];
}

uint32_t awq_container_mask(int bits) { return bits == 8 ? 0xFFu : 0xFu; }

void validate_awq(const AwqWeight& w, const std::string& name) {
  if (w.bits != 3 && w.bits != 4 && w.bits != 8)
    throw_user_error(name, ": AWQ with ", w.bits, " bits is not supported; expected 3, 4 or 8");
  const int pack = awq_pack_factor(w.bits);
  const auto expect = [&](const Tensor& t, const char* part, DType dtype,
                          std::vector<int64_t> shape) {
    if (!t.defined() || t.dtype() != dtype || t.shape() != shape)
      throw_user_error("tensor ", name, ".", part, ": expected ", dtype_name(dtype),
                       shape_to_string(shape), " (AutoAWQ GEMM layout, ", w.bits, " bits, group size ",
                       w.group_size, ", weight [", w.out, ", ", w.in, "]), found ", shape_text(t),
                       "; the checkpoint does not match its config.json (hidden sizes, "
                       "quantization_config bits/group_size) or was packed differently (GEMV)");
  };
  if (w.out <= 0 || w.in <= 0 || w.group_size <= 0 || w.in % w.group_size != 0 || w.out % pack != 0)
    throw_user_error(name, ": an AWQ weight [", w.out, ", ", w.in, "] needs in divisible by the group "
                     "size ", w.group_size, " and out divisible by ", pack,
                     "; requantize it or keep it unquantized (modules_to_not_convert)");
  expect(w.qweight, "qweight", DType::kI32, {w.in, w.out / pack});
  expect(w.qzeros, "qzeros", DType::kI32, {w.in / w.group_size, w.out / pack});
  expect(w.scales, "scales", DType::kF16, {w.in / w.group_size, w.out});
}

void awq_dequantize_rows(const AwqWeight& w, int64_t r0, int64_t n, float* dst) {
  const int pack = awq_pack_factor(w.bits);
  const int64_t in = w.in, words = w.out / pack, g = w.group_size;
  REFINERY_CHECK(r0 >= 0 && n >= 0 && r0 + n <= w.out, "awq_dequantize_rows: rows [", r0, ", ",
                 r0 + n, ") outside [0, ", w.out, ")");
  const auto* qw = static_cast<const uint8_t*>(w.qweight.data());
  const auto* qz = static_cast<const uint8_t*>(w.qzeros.data());
  const auto* sc = static_cast<const uint8_t*>(w.scales.data());
  const uint32_t mask = awq_container_mask(w.bits);
  std::array<int, 8> shift{};
  for (int j = 0; j < pack; ++j) shift[static_cast<std::size_t>(j)] = awq_lane_shift(w.bits, j);
  // Per group: zero and scale of each row of the tile, then (code - zero) * scale per column.
  std::vector<float> zero(static_cast<std::size_t>(n)), scale(static_cast<std::size_t>(n));
  const auto word_at = [](const uint8_t* base, int64_t index) {
    uint32_t v;
    std::memcpy(&v, base + 4 * index, 4);  // mmapped data: no alignment promise
    return v;
  };
  for (int64_t c0 = 0; c0 < in; c0 += g) {
    const int64_t grp = c0 / g;
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = r0 + r;
      const uint32_t zw = word_at(qz, grp * words + row / pack);
      zero[static_cast<std::size_t>(r)] =
          static_cast<float>((zw >> shift[static_cast<std::size_t>(row % pack)]) & mask);
      uint16_t h;
      std::memcpy(&h, sc + 2 * (grp * w.out + row), 2);
      scale[static_cast<std::size_t>(r)] = f16_to_f32(h);
    }
    for (int64_t c = c0; c < c0 + g; ++c) {
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = r0 + r;
        const uint32_t word = word_at(qw, c * words + row / pack);
        const float code =
            static_cast<float>((word >> shift[static_cast<std::size_t>(row % pack)]) & mask);
        dst[r * in + c] = (code - zero[static_cast<std::size_t>(r)]) * scale[static_cast<std::size_t>(r)];
      }
    }
  }
}

}  // namespace refinery::backend
