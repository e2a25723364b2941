#include "engine/backend/linear_weight.hpp"

namespace refinery::backend {

namespace {
const Tensor& matrix_of(const LinearStorage& s) {
  return std::visit([](const auto& w) -> const Tensor& { return w.weight; }, s);
}
}  // namespace

bool LinearWeight::defined() const { return matrix_of(storage).defined(); }
int64_t LinearWeight::out_features() const { return matrix_of(storage).size(0); }
int64_t LinearWeight::in_features() const { return matrix_of(storage).size(1); }

std::string LinearWeight::describe() const {
  if (const auto* f = std::get_if<Fp8BlockWeight>(&storage))
    return str("fp8-block", f->block_out, "x", f->block_in, shape_to_string(f->weight.shape()));
  return matrix_of(storage).describe();
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
