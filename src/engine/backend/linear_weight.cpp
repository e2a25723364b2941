#include "engine/backend/linear_weight.hpp"

#include <type_traits>
#include <utility>

namespace refinery::backend {

int awq_pack_factor(int bits) { return bits == 8 ? 4 : 8; }

namespace {
// [out, in] of any storage (an AwqWeight's packed tensors do not show it, so it carries it).
std::pair<int64_t, int64_t> shape_of(const LinearStorage& s) {
  return std::visit(
      [](const auto& w) -> std::pair<int64_t, int64_t> {
        using S = std::decay_t<decltype(w)>;
        if constexpr (std::is_same_v<S, AwqWeight>)
          return {w.out, w.in};
        else
          return {w.weight.size(0), w.weight.size(1)};
      },
      s);
}
}  // namespace

bool LinearWeight::defined() const {
  if (const auto* a = std::get_if<AwqWeight>(&storage)) return a->qweight.defined();
  if (const auto* f = std::get_if<Fp8BlockWeight>(&storage)) return f->weight.defined();
  return std::get<DenseWeight>(storage).weight.defined();
}
int64_t LinearWeight::out_features() const { return shape_of(storage).first; }
int64_t LinearWeight::in_features() const { return shape_of(storage).second; }

std::string LinearWeight::describe() const {
  if (const auto* f = std::get_if<Fp8BlockWeight>(&storage))
    return str("fp8-block", f->block_out, "x", f->block_in, shape_to_string(f->weight.shape()));
  if (const auto* a = std::get_if<AwqWeight>(&storage))
    return str("awq-w", a->bits, "g", a->group_size, shape_to_string({a->out, a->in}));
  return std::get<DenseWeight>(storage).weight.describe();
}

void validate_fp8_block(const Fp8BlockWeight& w, const std::string& name) {
  if (w.weight.dtype() != DType::kF8E4M3 || w.weight.ndim() != 2)
    throw_user_error("tensor ", name, ".weight: expected an F8_E4M3 matrix [out, in], found ",
                     w.weight.describe());
  if (w.block_out <= 0 || w.block_in <= 0)
    throw_user_error("tensor ", name, ": FP8 block size must be positive, found ", w.block_out, "x",
                     w.block_in, "; check quantization_config.weight_block_size");
  const int64_t rows = (w.weight.size(0) + w.block_out - 1) / w.block_out;
  const int64_t cols = (w.weight.size(1) + w.block_in - 1) / w.block_in;
  if (w.scale_inv.dtype() != DType::kF32 || w.scale_inv.shape() != std::vector<int64_t>{rows, cols})
    throw_user_error("tensor ", name, ".weight_scale_inv: expected f32[", rows, ", ", cols,
                     "] (one scale per ", w.block_out, "x", w.block_in, " block of ",
                     w.weight.describe(), "), found ", w.scale_inv.describe(),
                     "; the checkpoint does not match its quantization_config");
}

}  // namespace refinery::backend
