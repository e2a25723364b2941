// Group quantization (see group_quant.hpp for the formulas and why scales are fp16 first).
#include "quantize/group_quant.hpp"

#include <algorithm>
#include <cmath>
#include <exception>

#include "engine/backend/linear_weight.hpp"
#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery::quantize {

namespace {

struct GroupParams {
  float scale;  // fp16-exact
  int zero;     // stored zero point (2^(bits-1) when symmetric)
};

float round_to_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

// Scale and zero of one group of `n` weights.
GroupParams group_params(const float* w, int64_t n, const GroupQuantSpec& spec,
                         std::string_view what, int64_t row, int64_t col) {
  float lo = w[0], hi = w[0];
  bool finite = true;  // min/max skip NaN, so test every value
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
    finite = finite && std::isfinite(w[i]);
  }
  if (!finite)
    throw_user_error(what, ": row ", row, ", inputs ", col, "..", col + n - 1,
                     " hold a non-finite value (NaN or inf); the weight cannot be quantized; "
                     "check the checkpoint");
  GroupParams p;
  if (spec.zero_point) {
    const float max_int = static_cast<float>((1 << spec.bits) - 1);
    p.scale = round_to_f16(std::max(hi - lo, 1e-5f) / max_int);
    p.zero = static_cast<int>(std::clamp(-std::nearbyint(lo / p.scale), 0.0f, max_int));
  } else {
    const float max_int = static_cast<float>((1 << (spec.bits - 1)) - 1);
    p.scale = round_to_f16(std::max(std::max(std::fabs(lo), std::fabs(hi)), 1e-5f) / max_int);
    p.zero = 1 << (spec.bits - 1);
  }
  if (!std::isfinite(p.scale))
    throw_user_error(what, ": row ", row, ", inputs ", col, "..", col + n - 1, " span ", lo, " .. ",
                     hi, "; the group's scale overflows fp16 (max 65504); the weight cannot be "
                     "stored in the AWQ format");
  return p;
}

// The stored code of w (0 .. 2^bits - 1).
int code_of(float w, const GroupParams& p, const GroupQuantSpec& spec) {
  const float q = std::nearbyint(w / p.scale);
  if (spec.zero_point)
    return static_cast<int>(
        std::clamp(q + static_cast<float>(p.zero), 0.0f, static_cast<float>((1 << spec.bits) - 1)));
  const float half = static_cast<float>(1 << (spec.bits - 1));
  return static_cast<int>(std::clamp(q, -half, half - 1.0f)) + p.zero;
}

// fn(r) for every row r in parallel; the first exception thrown by any row is rethrown here
// (an exception must not leave an OpenMP region).
template <typename F>
void for_each_row(int64_t rows, int64_t work, const F& fn) {
  std::exception_ptr error;
#pragma omp parallel for schedule(static) if (work >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    try {
      fn(r);
    } catch (...) {
#pragma omp critical(refinery_group_quant_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void check_shape(int64_t out, int64_t in, const GroupQuantSpec& spec, std::string_view what) {
  validate_spec(spec);
  if (out < 0 || in <= 0 || in % spec.group_size != 0)
    throw_user_error(what, ": a weight [", out, ", ", in, "] cannot be quantized with group size ",
                     spec.group_size, " (the input size must be a positive multiple of it); use "
                     "usable_group_size() or keep the layer unquantized");
}

}  // namespace

void validate_spec(const GroupQuantSpec& spec) {
  if (spec.bits != 3 && spec.bits != 4 && spec.bits != 8)
    throw_user_error("bits is ", spec.bits, "; AWQ/RTN quantization supports 3, 4 or 8 bits");
  if (spec.group_size != 32 && spec.group_size != 64 && spec.group_size != 128)
    throw_user_error("group size is ", spec.group_size, "; use 32, 64 or 128");
}

void fake_quantize(float* w, int64_t out, int64_t in, const GroupQuantSpec& spec,
                   std::string_view what) {
  check_shape(out, in, spec, what);
  const int64_t g = spec.group_size;
  for_each_row(out, out * in, [&](int64_t r) {
    for (int64_t c0 = 0; c0 < in; c0 += g) {
      float* x = w + r * in + c0;
      const GroupParams p = group_params(x, g, spec, what, r, c0);
      for (int64_t i = 0; i < g; ++i)
        x[i] = static_cast<float>(code_of(x[i], p, spec) - p.zero) * p.scale;
    }
  });
}

QuantizedMatrix quantize_groups(const float* w, int64_t out, int64_t in, const GroupQuantSpec& spec,
                                std::string_view what) {
  check_shape(out, in, spec, what);
  const int64_t g = spec.group_size, groups = in / g;
  QuantizedMatrix q;
  q.out = out;
  q.in = in;
  q.spec = spec;
  q.codes.resize(static_cast<std::size_t>(out * in));
  q.zeros.resize(static_cast<std::size_t>(out * groups));
  q.scales.resize(static_cast<std::size_t>(out * groups));
  for_each_row(out, out * in, [&](int64_t r) {
    for (int64_t k = 0; k < groups; ++k) {
      const float* x = w + r * in + k * g;
      const GroupParams p = group_params(x, g, spec, what, r, k * g);
      q.zeros[static_cast<std::size_t>(r * groups + k)] = static_cast<uint8_t>(p.zero);
      q.scales[static_cast<std::size_t>(r * groups + k)] = p.scale;
      uint8_t* codes = q.codes.data() + r * in + k * g;
      for (int64_t i = 0; i < g; ++i) codes[i] = static_cast<uint8_t>(code_of(x[i], p, spec));
    }
  });
  return q;
}

std::vector<float> dequantize(const QuantizedMatrix& q) {
  const int64_t g = q.spec.group_size, groups = q.in / g;
  std::vector<float> w(static_cast<std::size_t>(q.out * q.in));
  for (int64_t r = 0; r < q.out; ++r)
    for (int64_t c = 0; c < q.in; ++c) {
      const std::size_t k = static_cast<std::size_t>(r * groups + c / g);
      w[static_cast<std::size_t>(r * q.in + c)] =
          (static_cast<float>(q.codes[static_cast<std::size_t>(r * q.in + c)]) -
           static_cast<float>(q.zeros[k])) * q.scales[k];
    }
  return w;
}

int usable_group_size(int64_t in, int64_t out, const GroupQuantSpec& spec) {
  validate_spec(spec);
  if (out <= 0 || in <= 0 || out % backend::awq_pack_factor(spec.bits) != 0) return 0;
  for (int g = spec.group_size; g >= 32; g /= 2)
    if (in % g == 0) return g;
  return 0;
}

}  // namespace refinery::quantize
