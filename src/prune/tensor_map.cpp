// Parent tensor -> pruned tensor (tensor_map.hpp).
#include "prune/tensor_map.hpp"

#include <algorithm>
#include <cstring>
#include <set>

#include "engine/core/error.hpp"

namespace refinery::prune {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

bool is_gate_or_up(const std::string& proj) {
  return proj == "gate_proj" || proj == "up_proj" || proj == "w1" || proj == "w3";
}
bool is_down(const std::string& proj) { return proj == "down_proj" || proj == "w2"; }

std::vector<int64_t> to_i64(const std::vector<int>& v) { return {v.begin(), v.end()}; }

// A tensor copied unchanged under a (possibly) new name.
TensorAction copy_action(const std::string& source, const std::string& target,
                         const std::vector<int64_t>& shape) {
  return {source, target, shape, {TensorPiece{-1, {}}}};
}

// One tensor with index lists on its dimensions (empty list: all).
TensorAction select_action(const std::string& source, const std::string& target,
                           std::vector<int64_t> shape, std::vector<std::vector<int64_t>> select) {
  select.resize(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d)
    if (!select[d].empty()) shape[d] = static_cast<int64_t>(select[d].size());
  return {source, target, shape, {TensorPiece{-1, std::move(select)}}};
}

bool is_quantized(const io::TensorEntry& e, const std::string& name) {
  for (const char* suffix : {".weight_scale_inv", ".qweight", ".qzeros", ".scales"})
    if (name.size() >= std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
      return true;
  return e.dtype == DType::kF8E4M3 || e.dtype == DType::kF8E5M2 || dtype_bits(e.dtype) < 8;
}

// A projection `proj`.`param` of an MLP whose intermediate channels `channels` are kept
// (empty: all): gate/up keep rows (weight [I, H], bias [I]), down keeps columns (weight [H, I]).
TensorAction projection_action(const std::string& source, const std::string& target,
                               const io::TensorEntry& e, const std::string& proj,
                               const std::string& param, const std::vector<int>& channels) {
  if (channels.empty()) return copy_action(source, target, e.shape);
  if (is_quantized(e, source))
    throw_user_error("tensor ", source, " is quantized (", dtype_name(e.dtype), "); pruning MLP channels "
                     "of quantized weights is not supported: prune the unquantized model, then quantize");
  if (is_gate_or_up(proj)) return select_action(source, target, e.shape, {to_i64(channels)});
  if (is_down(proj) && param == "weight") return select_action(source, target, e.shape, {{}, to_i64(channels)});
  return copy_action(source, target, e.shape);  // down's bias [H]
}

}  // namespace

bool TensorAction::is_copy() const {
  if (pieces.size() != 1 || pieces[0].block != -1) return false;
  return std::all_of(pieces[0].select.begin(), pieces[0].select.end(),
                     [](const std::vector<int64_t>& s) { return s.empty(); });
}

TensorMap map_tensors(const io::Checkpoint& checkpoint, const model::ModelConfig& c,
                      const PrunePlan& plan) {
  std::vector<int> new_index(static_cast<std::size_t>(c.num_layers), -1);
  for (std::size_t i = 0; i < plan.layers.size(); ++i)
    new_index[static_cast<std::size_t>(plan.layers[i].source)] = static_cast<int>(i);
  TensorMap map;
  std::set<int64_t> mtp;
  const std::string layers_prefix = "model.layers.";
  for (const std::string& name : checkpoint.names()) {
    const io::TensorEntry& e = *checkpoint.at(name).entry;
    if (!starts_with(name, layers_prefix)) {
      map.actions.push_back(copy_action(name, name, e.shape));
      continue;
    }
    const std::size_t dot = name.find('.', layers_prefix.size());
    const std::string index_text = name.substr(layers_prefix.size(), dot - layers_prefix.size());
    if (dot == std::string::npos || index_text.empty() ||
        !std::all_of(index_text.begin(), index_text.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      map.actions.push_back(copy_action(name, name, e.shape));
      continue;
    }
    const int64_t layer = std::stoll(index_text);
    if (layer >= c.num_layers) {
      mtp.insert(layer);
      map.dropped.push_back(name);
      continue;
    }
    const int kept = new_index[static_cast<std::size_t>(layer)];
    if (kept < 0) {
      map.dropped.push_back(name);
      continue;
    }
    const LayerPlan& lp = plan.layers[static_cast<std::size_t>(kept)];
    const std::string rest = name.substr(dot + 1);
    const std::string out_prefix = layers_prefix + std::to_string(kept) + ".";
    const std::string target = out_prefix + rest;
    std::string mlp;
    for (const char* m : {"mlp.", "block_sparse_moe."})
      if (starts_with(rest, m)) mlp = m;
    if (mlp.empty()) {
      map.actions.push_back(copy_action(name, target, e.shape));
      continue;
    }
    const std::string sub = rest.substr(mlp.size());  // e.g. "experts.5.w2.weight"
    const std::size_t first_dot = sub.find('.');
    const std::string head = sub.substr(0, first_dot);
    const std::string tail = first_dot == std::string::npos ? std::string() : sub.substr(first_dot + 1);
    auto split_proj = [](const std::string& s) {
      const std::size_t d = s.find('.');
      return std::pair<std::string, std::string>(s.substr(0, d), d == std::string::npos ? "" : s.substr(d + 1));
    };
    if (head == "experts") {
      const std::size_t d = tail.find('.');
      const std::string e_text = tail.substr(0, d);
      const bool numbered = !e_text.empty() && std::all_of(e_text.begin(), e_text.end(),
                                                           [](char ch) { return ch >= '0' && ch <= '9'; });
      if (numbered) {
        const int expert = std::stoi(e_text);
        int pos = expert;
        if (!lp.experts.empty()) {
          const auto it = std::find(lp.experts.begin(), lp.experts.end(), expert);
          if (it == lp.experts.end()) {
            map.dropped.push_back(name);
            continue;
          }
          pos = static_cast<int>(it - lp.experts.begin());
        }
        const auto [proj, param] = split_proj(tail.substr(d + 1));
        const std::vector<int> none;
        const std::vector<int>& channels =
            lp.expert_channels.empty() ? none : lp.expert_channels[static_cast<std::size_t>(pos)];
        map.actions.push_back(projection_action(
            name, out_prefix + mlp + "experts." + std::to_string(pos) + "." + tail.substr(d + 1), e, proj,
            param, channels));
        continue;
      }
      // transformers 5 fused layout: gate_up_proj [E, 2I, H], down_proj [E, H, I].
      if ((tail == "gate_up_proj" || tail == "down_proj") && e.shape.size() == 3) {
        if ((!lp.experts.empty() || !lp.expert_channels.empty()) && is_quantized(e, name))
          throw_user_error("tensor ", name, " is quantized (", dtype_name(e.dtype),
                           "); pruning fused quantized experts is not supported");
        std::vector<int> experts = lp.experts;
        if (experts.empty())
          for (int i = 0; i < e.shape[0]; ++i) experts.push_back(i);
        TensorAction a{name, target, e.shape, {}};
        a.shape[0] = static_cast<int64_t>(experts.size());
        const int64_t inter = tail == "gate_up_proj" ? e.shape[1] / 2 : e.shape[2];
        for (std::size_t k = 0; k < experts.size(); ++k) {
          TensorPiece p{experts[k], {{}, {}}};
          if (!lp.expert_channels.empty() && !lp.expert_channels[k].empty()) {
            const std::vector<int>& ch = lp.expert_channels[k];
            if (tail == "gate_up_proj") {
              for (int i : ch) p.select[0].push_back(i);
              for (int i : ch) p.select[0].push_back(inter + i);
              a.shape[1] = static_cast<int64_t>(2 * ch.size());
            } else {
              p.select[1] = to_i64(ch);
              a.shape[2] = static_cast<int64_t>(ch.size());
            }
          }
          a.pieces.push_back(std::move(p));
        }
        map.actions.push_back(std::move(a));
        continue;
      }
      throw_user_error("tensor ", name, " of ", checkpoint.source().string(),
                       " has an expert layout the pruner does not know; expected experts.E.<proj>.weight "
                       "or fused experts.gate_up_proj / experts.down_proj");
    }
    if (head == "gate" && (tail == "weight" || tail == "e_score_correction_bias")) {
      map.actions.push_back(select_action(name, target, e.shape, {to_i64(lp.experts)}));
      continue;
    }
    if (head == "shared_experts" || head == "shared_expert") {
      const auto [proj, param] = split_proj(tail);
      map.actions.push_back(projection_action(name, target, e, proj, param, lp.shared_channels));
      continue;
    }
    if (is_gate_or_up(head) || is_down(head)) {
      map.actions.push_back(projection_action(name, target, e, head, tail, lp.mlp_channels));
      continue;
    }
    map.actions.push_back(copy_action(name, target, e.shape));  // shared_expert_gate, ...
  }
  map.dropped_mtp_layers = static_cast<int>(mtp.size());
  return map;
}

namespace {

// Copies the selection of dimension `dim` onwards; returns the bytes written.
std::size_t gather_dims(const std::byte* src, const std::vector<int64_t>& shape,
                        const std::vector<int64_t>& strides, std::size_t elem,
                        const std::vector<std::vector<int64_t>>& select, std::size_t dim, std::byte* dst) {
  const std::vector<int64_t>& sel = select[dim];
  const int64_t count = sel.empty() ? shape[dim] : static_cast<int64_t>(sel.size());
  const bool last = dim + 1 == shape.size();
  std::size_t written = 0;
  if (last && sel.empty()) {
    const std::size_t n = static_cast<std::size_t>(count) * elem;
    std::memcpy(dst, src, n);
    return n;
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = sel.empty() ? i : sel[static_cast<std::size_t>(i)];
    const std::byte* s = src + static_cast<std::size_t>(index * strides[dim]) * elem;
    if (last) {
      std::memcpy(dst + written, s, elem);
      written += elem;
    } else {
      written += gather_dims(s, shape, strides, elem, select, dim + 1, dst + written);
    }
  }
  return written;
}

}  // namespace

std::size_t gather_piece(const std::byte* src, const std::vector<int64_t>& full_shape,
                         std::size_t elem_bytes, const TensorPiece& piece, std::byte* dst) {
  std::vector<int64_t> shape = full_shape;
  if (piece.block >= 0) {
    shape.erase(shape.begin());
    int64_t block_elems = 1;
    for (int64_t d : shape) block_elems *= d;
    src += static_cast<std::size_t>(piece.block * block_elems) * elem_bytes;
  }
  if (shape.empty()) {
    std::memcpy(dst, src, elem_bytes);
    return elem_bytes;
  }
  std::vector<int64_t> strides(shape.size(), 1);
  for (std::size_t d = shape.size() - 1; d > 0; --d) strides[d - 1] = strides[d] * shape[d];
  std::vector<std::vector<int64_t>> select = piece.select;
  select.resize(shape.size());
  return gather_dims(src, shape, strides, elem_bytes, select, 0, dst);
}

}  // namespace refinery::prune
