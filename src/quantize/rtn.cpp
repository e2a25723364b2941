#include "quantize/rtn.hpp"

#include <variant>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/quantizable_linears.hpp"

namespace refinery::quantize {

namespace {

std::string skip_reason(int64_t out, int64_t in, const GroupQuantSpec& spec) {
  const int pack = backend::awq_pack_factor(spec.bits);
  if (out % pack != 0) return str("out ", out, " is not a multiple of ", pack, " (codes per int32)");
  return str("no group size from ", spec.group_size, " down to 32 divides in ", in);
}

}  // namespace

RtnResult quantize_rtn(const model::ModelWeights& weights, const GroupQuantSpec& spec) {
  validate_spec(spec);
  RtnResult result;
  for (const LinearSite& site : quantizable_linears(weights)) {
    const auto* dense = std::get_if<backend::DenseWeight>(&site.weight->storage);
    if (dense == nullptr)
      throw_user_error(site.prefix, " is stored as ", site.weight->describe(),
                       "; RTN quantizes dense bf16/f16/f32 weights; start from the unquantized model");
    const int g = usable_group_size(site.in, site.out, spec);
    if (g == 0) {
      result.skipped.push_back({site.prefix, site.out, site.in, skip_reason(site.out, site.in, spec)});
      result.parts.not_converted.push_back(site.prefix);
      continue;
    }
    GroupQuantSpec s = spec;
    s.group_size = g;
    const Tensor f32 = dense->weight.to_f32();  // [out, in], one linear at a time
    const QuantizedMatrix q = quantize_groups(f32.data<float>(), site.out, site.in, s, site.prefix);
    backend::AwqWeight packed = pack_awq(q);
    result.dense_bytes += static_cast<int64_t>(dense->weight.nbytes());
    result.packed_bytes += static_cast<int64_t>(packed.qweight.nbytes() + packed.qzeros.nbytes() +
                                                packed.scales.nbytes());
    result.parts.quantized.emplace(site.prefix, std::move(packed));
  }
  return result;
}

}  // namespace refinery::quantize
