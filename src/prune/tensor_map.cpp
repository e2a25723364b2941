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

// Rows of the kept `blocks` of `width` consecutive rows each (heads: [heads x head_dim] outputs).
std::vector<int64_t> block_rows(const std::vector<int>& blocks, int width) {
  std::vector<int64_t> rows;
  for (int b : blocks)
    for (int i = 0; i < width; ++i) rows.push_back(static_cast<int64_t>(b) * width + i);
  return rows;
}

// A tensor `param` of a linear layer (weight [out, in], bias [out]) keeping output `rows` and input
// `cols` (empty: all). Quantized weights and their companions (scales, zeros) cannot be sliced.
TensorAction linear_action(const std::string& source, const std::string& target, const io::TensorEntry& e,
                           const std::string& param, const std::vector<int64_t>& rows,
                           const std::vector<int64_t>& cols) {
  if (rows.empty() && cols.empty()) return copy_action(source, target, e.shape);
  if (param == "bias") return select_action(source, target, e.shape, {rows});
  if (param != "weight" || is_quantized(e, source) || e.shape.size() != 2)
    throw_user_error("tensor ", source, " is quantized (", dtype_name(e.dtype), "); pruning MLP channels, heads "
                     "or hidden channels of quantized weights is not supported: prune the unquantized model, "
                     "then quantize");
  return select_action(source, target, e.shape, {rows, cols});
}

// A 1-D weight over the residual stream (RMSNorm) keeping `hidden`.
TensorAction norm_action(const std::string& source, const std::string& target, const io::TensorEntry& e,
                         const std::vector<int64_t>& hidden) {
  return select_action(source, target, e.shape, {hidden});
}

// A tensor the pruner cannot slice: fine to copy unless the plan changes the widths it could depend on.
TensorAction unknown_action(const std::string& source, const std::string& target, const io::TensorEntry& e,
                            bool width_changes, const std::string& model) {
  if (width_changes)
    throw_user_error("tensor ", source, " of ", model, " is not one the pruner knows how to slice for heads or "
                     "hidden channels; prune without --heads / --kv-heads / --hidden");
  return copy_action(source, target, e.shape);
}

// Heads of one kept layer, as row lists over the projections (empty: unchanged).
struct AttentionSelection {
  std::vector<int64_t> q_rows;   // q_proj / q_b_proj: [heads x qk_head_dim]
  std::vector<int64_t> kv_rows;  // GQA k_proj / v_proj: [kv_heads x head_dim]
  std::vector<int64_t> kvb_rows; // MLA kv_b_proj: [heads x (qk_nope + v)]
  std::vector<int64_t> o_cols;   // o_proj input: [heads x v_head_dim]
  bool changes() const { return !q_rows.empty() || !kv_rows.empty(); }
};

AttentionSelection attention_selection(const model::ModelConfig& c, const LayerPlan& lp) {
  AttentionSelection s;
  const model::AttentionConfig& a = c.attention;
  const std::vector<int> heads = kept_heads(c, lp);
  if (static_cast<int>(heads.size()) != a.num_heads) {
    s.q_rows = block_rows(heads, a.head_dim);
    s.o_cols = block_rows(heads, a.value_head_dim());
    if (a.kind == model::AttentionKind::kMla) s.kvb_rows = block_rows(heads, a.qk_nope_head_dim + a.v_head_dim);
  }
  const std::vector<int> kv = kept_kv_heads(c, lp);
  if (a.kind != model::AttentionKind::kMla && static_cast<int>(kv.size()) != a.num_kv_heads)
    s.kv_rows = block_rows(kv, a.head_dim);
  return s;
}

// self_attn.<proj>.<param> of a kept layer.
TensorAction attention_action(const std::string& source, const std::string& target, const io::TensorEntry& e,
                              const std::string& proj, const std::string& param, const AttentionSelection& s,
                              const std::vector<int64_t>& hidden, const std::string& model) {
  const std::vector<int64_t> none;
  if (proj == "q_proj") return linear_action(source, target, e, param, s.q_rows, hidden);
  if (proj == "k_proj" || proj == "v_proj") return linear_action(source, target, e, param, s.kv_rows, hidden);
  if (proj == "o_proj") {
    if (param == "bias") return linear_action(source, target, e, param, hidden, none);
    return linear_action(source, target, e, param, hidden, s.o_cols);
  }
  if (proj == "q_a_proj" || proj == "kv_a_proj_with_mqa") return linear_action(source, target, e, param, none, hidden);
  if (proj == "q_b_proj") return linear_action(source, target, e, param, s.q_rows, none);
  if (proj == "kv_b_proj") return linear_action(source, target, e, param, s.kvb_rows, none);
  // Norms over one head's width or a LoRA rank (qwen3 q_norm / k_norm [head_dim], deepseek
  // q_a_layernorm / kv_a_layernorm) and rotary buffers: independent of heads and hidden.
  if (proj == "q_norm" || proj == "k_norm" || proj == "q_a_layernorm" || proj == "kv_a_layernorm" ||
      proj == "rotary_emb")
    return copy_action(source, target, e.shape);
  return unknown_action(source, target, e, s.changes() || !hidden.empty(), model);
}

// A projection `proj`.`param` of an MLP whose intermediate channels `channels` are kept
// (empty: all): gate/up keep rows (weight [I, H], bias [I]) and the kept hidden columns, down keeps
// columns (weight [H, I]) and the kept hidden rows (weight and bias [H]).
TensorAction projection_action(const std::string& source, const std::string& target,
                               const io::TensorEntry& e, const std::string& proj,
                               const std::string& param, const std::vector<int>& channels,
                               const std::vector<int64_t>& hidden, const std::string& model) {
  const std::vector<int64_t> none;
  if (is_gate_or_up(proj)) return linear_action(source, target, e, param, to_i64(channels), hidden);
  if (is_down(proj)) {
    if (param == "bias") return linear_action(source, target, e, param, hidden, none);
    return linear_action(source, target, e, param, hidden, to_i64(channels));
  }
  return unknown_action(source, target, e, !channels.empty() || !hidden.empty(), model);
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
  const std::vector<int64_t> hidden = to_i64(plan.hidden_channels);
  const std::string model = checkpoint.source().string();
  TensorMap map;
  std::set<int64_t> mtp;
  const std::string layers_prefix = "model.layers.";
  // Outside the layers: embed_tokens / lm_head [vocab, H] keep hidden columns, the final norm [H].
  auto outside_layers = [&](const std::string& name, const io::TensorEntry& e) {
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight")
      return select_action(name, name, e.shape, {{}, hidden});
    if (name == "model.norm.weight") return norm_action(name, name, e, hidden);
    return unknown_action(name, name, e, !hidden.empty(), model);
  };
  for (const std::string& name : checkpoint.names()) {
    const io::TensorEntry& e = *checkpoint.at(name).entry;
    if (!starts_with(name, layers_prefix)) {
      map.actions.push_back(outside_layers(name, e));
      continue;
    }
    const std::size_t dot = name.find('.', layers_prefix.size());
    const std::string index_text = name.substr(layers_prefix.size(), dot - layers_prefix.size());
    if (dot == std::string::npos || index_text.empty() ||
        !std::all_of(index_text.begin(), index_text.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      map.actions.push_back(outside_layers(name, e));
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
    auto split_proj = [](const std::string& s) {
      const std::size_t d = s.find('.');
      return std::pair<std::string, std::string>(s.substr(0, d), d == std::string::npos ? "" : s.substr(d + 1));
    };
    if (rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight") {
      map.actions.push_back(norm_action(name, target, e, hidden));
      continue;
    }
    if (starts_with(rest, "self_attn.")) {
      const auto [proj, param] = split_proj(rest.substr(std::strlen("self_attn.")));
      map.actions.push_back(attention_action(name, target, e, proj, param, attention_selection(c, lp), hidden, model));
      continue;
    }
    std::string mlp;
    for (const char* m : {"mlp.", "block_sparse_moe."})
      if (starts_with(rest, m)) mlp = m;
    if (mlp.empty()) {
      map.actions.push_back(unknown_action(name, target, e, !hidden.empty(), model));
      continue;
    }
    const std::string sub = rest.substr(mlp.size());  // e.g. "experts.5.w2.weight"
    const std::size_t first_dot = sub.find('.');
    const std::string head = sub.substr(0, first_dot);
    const std::string tail = first_dot == std::string::npos ? std::string() : sub.substr(first_dot + 1);
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
            param, channels, hidden, model));
        continue;
      }
      // transformers 5 fused layout: gate_up_proj [E, 2I, H], down_proj [E, H, I].
      if ((tail == "gate_up_proj" || tail == "down_proj") && e.shape.size() == 3) {
        if ((!lp.experts.empty() || !lp.expert_channels.empty() || !hidden.empty()) && is_quantized(e, name))
          throw_user_error("tensor ", name, " is quantized (", dtype_name(e.dtype),
                           "); pruning fused quantized experts is not supported");
        std::vector<int> experts = lp.experts;
        if (experts.empty())
          for (int i = 0; i < e.shape[0]; ++i) experts.push_back(i);
        TensorAction a{name, target, e.shape, {}};
        a.shape[0] = static_cast<int64_t>(experts.size());
        const bool gate_up = tail == "gate_up_proj";
        const int64_t inter = gate_up ? e.shape[1] / 2 : e.shape[2];
        if (!hidden.empty()) a.shape[gate_up ? 2 : 1] = static_cast<int64_t>(hidden.size());
        for (std::size_t k = 0; k < experts.size(); ++k) {
          TensorPiece p{experts[k], {{}, {}}};
          if (gate_up) p.select[1] = hidden;
          else p.select[0] = hidden;
          if (!lp.expert_channels.empty() && !lp.expert_channels[k].empty()) {
            const std::vector<int>& ch = lp.expert_channels[k];
            if (gate_up) {
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
      throw_user_error("tensor ", name, " of ", model,
                       " has an expert layout the pruner does not know; expected experts.E.<proj>.weight "
                       "or fused experts.gate_up_proj / experts.down_proj");
    }
    if (head == "gate" && tail == "weight") {  // router [E, H]
      map.actions.push_back(linear_action(name, target, e, tail, to_i64(lp.experts), hidden));
      continue;
    }
    if (head == "gate" && tail == "e_score_correction_bias") {  // [E]
      map.actions.push_back(select_action(name, target, e.shape, {to_i64(lp.experts)}));
      continue;
    }
    if (head == "shared_experts" || head == "shared_expert") {
      const auto [proj, param] = split_proj(tail);
      map.actions.push_back(projection_action(name, target, e, proj, param, lp.shared_channels, hidden, model));
      continue;
    }
    if (head == "shared_expert_gate") {  // qwen2_moe: [1, H]
      map.actions.push_back(linear_action(name, target, e, tail, {}, hidden));
      continue;
    }
    if (is_gate_or_up(head) || is_down(head)) {
      map.actions.push_back(projection_action(name, target, e, head, tail, lp.mlp_channels, hidden, model));
      continue;
    }
    map.actions.push_back(unknown_action(name, target, e, !hidden.empty(), model));
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
