// Building, checking and (de)serializing prune plans (plan.hpp).
#include "prune/plan.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/core/error.hpp"

namespace refinery::prune {

namespace {

bool grouped_routing(const model::MoeConfig& m) {
  return m.n_group > 1 && m.topk_method != model::TopkMethod::kGreedy;
}

// Whether N experts per layer keep `m`'s routing well defined (see plan.hpp).
bool valid_expert_count(const model::MoeConfig& m, int n) {
  if (n < m.experts_per_token || n > m.num_experts) return false;
  if (!grouped_routing(m)) return true;
  if (n % m.n_group != 0) return false;
  const int per = n / m.n_group;
  const int min_per = m.topk_method == model::TopkMethod::kNoauxTc ? 2 : 1;
  return per >= min_per && per * m.topk_group >= m.experts_per_token;
}

std::string valid_expert_counts(const model::MoeConfig& m) {
  std::string list;
  for (int n = 1; n <= m.num_experts; ++n)
    if (valid_expert_count(m, n)) list += (list.empty() ? "" : ", ") + std::to_string(n);
  return list.empty() ? "none" : list;
}

// The `keep` best indices of `scores` (highest first; ties: lower index), returned ascending.
std::vector<int> top_indices(const std::vector<double>& scores, int keep) {
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return scores[static_cast<std::size_t>(a)] > scores[static_cast<std::size_t>(b)];
  });
  order.resize(static_cast<std::size_t>(std::min<int>(keep, static_cast<int>(order.size()))));
  std::sort(order.begin(), order.end());
  return order;
}

int ratio_count(double ratio, int width) {
  return std::max(1, static_cast<int>(std::lround(ratio * width)));
}

std::vector<double> expert_scores(const model::ModelConfig& c, const ImportanceReport* report,
                                  const PruneOptions& o, int layer) {
  const int e_count = c.moe->num_experts;
  if (o.expert_metric == ExpertMetric::kRandom) {
    // A random permutation per layer from (seed, layer): reproducible, independent of the data.
    std::mt19937_64 rng(o.seed * 1000003ULL + static_cast<uint64_t>(layer));
    std::vector<double> s(static_cast<std::size_t>(e_count));
    std::iota(s.begin(), s.end(), 0.0);
    std::shuffle(s.begin(), s.end(), rng);
    return s;
  }
  const auto& l = report->layers.at(static_cast<std::size_t>(layer));
  if (!l.experts || static_cast<int>(l.experts->frequency.size()) != e_count)
    throw_user_error("the importance report has no expert scores for layer ", layer,
                     "; it was made for another model");
  return o.expert_metric == ExpertMetric::kFrequency ? l.experts->frequency : l.experts->gate_norm;
}

const std::vector<double>& channel_scores(const ChannelScores& c, int width, int layer,
                                          const char* what) {
  if (static_cast<int>(c.rms.size()) != width)
    throw_user_error("the importance report has ", c.rms.size(), " ", what, " channel scores for layer ",
                     layer, " but the model has ", width, "; it was made for another model");
  return c.rms;
}

void check_indices(const std::vector<int>& idx, int limit, int layer, const char* what) {
  for (std::size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= limit)
      throw_user_error("prune plan, layer ", layer, ": ", what, " index ", idx[i],
                       " is outside 0..", limit - 1);
    if (i > 0 && idx[i] <= idx[i - 1])
      throw_user_error("prune plan, layer ", layer, ": ", what,
                       " indices must be ascending and unique (", idx[i - 1], " then ", idx[i], ")");
  }
}

// The one count every structure of a kind must share; -1 while none was seen.
void same_count(int& seen, int count, int layer, const char* what) {
  if (seen >= 0 && seen != count)
    throw_user_error("prune plan, layer ", layer, ": keeps ", count, " ", what, " but another layer keeps ",
                     seen, "; config.json holds one number for all, so every layer must keep the same");
  seen = count;
}

bool is_mla(const model::ModelConfig& c) { return c.attention.kind == model::AttentionKind::kMla; }

// MHA (not MLA): every query head has its own KV head, so they are kept together.
bool is_mha(const model::ModelConfig& c) {
  return !is_mla(c) && c.attention.num_kv_heads == c.attention.num_heads;
}

// The KV groups --heads N keeps when --kv-heads is not given (see plan.hpp).
int default_kv_groups(const model::ModelConfig& c, int heads) {
  return is_mha(c) ? heads : c.attention.num_kv_heads;
}

// Query head counts valid with `groups` kept KV groups of `per_group` heads each.
std::string valid_head_counts(const model::ModelConfig& c, std::optional<int> kv_heads) {
  if (is_mla(c) || (is_mha(c) && !kv_heads)) return str("1..", c.attention.num_heads);
  const int groups = kv_heads ? *kv_heads : c.attention.num_kv_heads;
  const int per_group = c.attention.num_heads / c.attention.num_kv_heads;
  std::string list;
  for (int k = 1; k <= per_group; ++k) list += (list.empty() ? "" : ", ") + std::to_string(k * groups);
  return list;
}

const std::vector<double>& head_scores(const std::vector<double>& s, int count, int layer, const char* what) {
  if (static_cast<int>(s.size()) != count)
    throw_user_error("the importance report has ", s.size(), " ", what, " scores for layer ", layer,
                     " but the model has ", count, "; it was made for another model");
  return s;
}

// A layer's heads: in range, ascending; GQA: every kept head in a kept group, every kept group
// with the same number of heads (the config repeats each KV head for num_heads / num_kv_heads).
void validate_heads(const model::ModelConfig& c, const LayerPlan& l) {
  const int nh = c.attention.num_heads, nkv = c.attention.num_kv_heads;
  check_indices(l.heads, nh, l.source, "attention head");
  if (is_mla(c)) {
    if (!l.kv_heads.empty())
      throw_user_error("prune plan, layer ", l.source, ": ", c.model_type, " uses multi-head latent attention, "
                       "which has no KV groups; give only \"heads\" (the K/V heads follow them)");
    return;
  }
  check_indices(l.kv_heads, nkv, l.source, "KV head");
  if (l.heads.empty()) return;  // every head of the kept groups
  const int group = nh / nkv;
  std::vector<int> per(static_cast<std::size_t>(nkv), 0);
  for (int h : l.heads) ++per[static_cast<std::size_t>(h / group)];
  int want = -1;
  for (int g = 0; g < nkv; ++g) {
    const bool kept = l.kv_heads.empty() ||
                      std::binary_search(l.kv_heads.begin(), l.kv_heads.end(), g);
    const int n = per[static_cast<std::size_t>(g)];
    if (!kept && n > 0)
      throw_user_error("prune plan, layer ", l.source, ": keeps query heads of KV group ", g,
                       " (heads ", g * group, "..", (g + 1) * group - 1, ") but drops that group; keep the group "
                       "in \"kv_heads\" or drop its heads");
    if (!kept) continue;
    if (n == 0 || (want >= 0 && n != want))
      throw_user_error("prune plan, layer ", l.source, ": KV group ", g, " keeps ", n, " query heads but ",
                       want >= 0 ? str("another kept group keeps ", want) : std::string("every kept group needs some"),
                       "; config.json repeats every KV head for the same number of query heads, so keep the "
                       "same number (>= 1) in every kept group");
    want = n;
  }
}

// transformers 5's LlamaConfig and DeepseekV2Config refuse a config whose hidden_size is not a
// multiple of num_attention_heads (even with an explicit head_dim), so such a pruned model would
// not load there.
void check_heads_divide_hidden(const model::ModelConfig& c, int heads, int hidden, const std::string& what) {
  if (c.model_type != "llama" && c.model_type != "deepseek_v2") return;
  if (hidden % heads == 0) return;
  throw_user_error(what, " keeps ", hidden, " hidden channels and ", heads, " attention heads, but transformers' ",
                   c.model_type, " config requires hidden_size to be a multiple of num_attention_heads; keep "
                   "a multiple of ", heads, " hidden channels (e.g. --hidden ", std::max(heads, hidden / heads * heads),
                   ") or another head count");
}

// Kept query heads and KV groups of one layer for --heads / --kv-heads (see plan.hpp).
void plan_heads(const model::ModelConfig& c, const LayerImportance& li, const PruneOptions& o, LayerPlan& lp) {
  const int nh = c.attention.num_heads, nkv = c.attention.num_kv_heads;
  const std::vector<double>& hs = head_scores(li.head_norm, nh, li.layer, "head");
  if (is_mla(c)) {
    if (*o.heads < nh) lp.heads = top_indices(hs, *o.heads);
    return;
  }
  const std::vector<double>& gs = head_scores(li.kv_group_norm, nkv, li.layer, "KV group");
  const int groups = o.kv_heads ? *o.kv_heads : default_kv_groups(c, *o.heads);
  const int group = nh / nkv;
  const int per = o.heads ? *o.heads / groups : group;
  const std::vector<int> kept_groups = top_indices(gs, groups);
  if (groups < nkv) lp.kv_heads = kept_groups;
  if (per * groups == nh) return;  // every head
  for (int g : kept_groups) {
    const std::vector<double> in_group(hs.begin() + g * group, hs.begin() + (g + 1) * group);
    for (int h : top_indices(in_group, per)) lp.heads.push_back(g * group + h);
  }
}

}  // namespace

std::vector<int> kept_kv_heads(const model::ModelConfig& c, const LayerPlan& l) {
  if (is_mla(c)) return kept_heads(c, l);
  if (!l.kv_heads.empty()) return l.kv_heads;
  std::vector<int> all(static_cast<std::size_t>(c.attention.num_kv_heads));
  std::iota(all.begin(), all.end(), 0);
  return all;
}

std::vector<int> kept_heads(const model::ModelConfig& c, const LayerPlan& l) {
  if (!l.heads.empty()) return l.heads;
  std::vector<int> all;
  if (is_mla(c) || l.kv_heads.empty()) {
    all.resize(static_cast<std::size_t>(c.attention.num_heads));
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  const int group = c.attention.num_heads / c.attention.num_kv_heads;
  for (int g : l.kv_heads)
    for (int h = 0; h < group; ++h) all.push_back(g * group + h);
  return all;
}

ExpertMetric parse_expert_metric(const std::string& name) {
  if (name == "frequency") return ExpertMetric::kFrequency;
  if (name == "gate_norm") return ExpertMetric::kGateNorm;
  if (name == "random") return ExpertMetric::kRandom;
  throw_user_error("--expert-metric ", name, ": expected frequency, gate_norm or random (or exact with --experts)");
}

const char* expert_metric_name(ExpertMetric metric) {
  switch (metric) {
    case ExpertMetric::kFrequency: return "frequency";
    case ExpertMetric::kGateNorm: return "gate_norm";
    case ExpertMetric::kRandom: return "random";
  }
  return "?";
}

PrunePlan PrunePlan::identity(const model::ModelConfig& config) {
  PrunePlan p;
  for (int l = 0; l < config.num_layers; ++l) {
    LayerPlan lp;
    lp.source = l;
    p.layers.push_back(std::move(lp));
  }
  return p;
}

void check_options(const model::ModelConfig& c, const PruneOptions& o) {
  if (o.experts) {
    if (!c.moe)
      throw_user_error("--experts: ", c.source, " is a dense ", c.model_type,
                       " model without routed experts; drop --experts");
    const model::MoeConfig& m = *c.moe;
    const int n = *o.experts;
    if (n > m.num_experts)
      throw_user_error("--experts ", n, " exceeds the ", m.num_experts, " routed experts per layer of ", c.source);
    if (!valid_expert_count(m, n))
      throw_user_error("--experts ", n, " is not valid for this model (top-k ", m.experts_per_token,
                       grouped_routing(m) ? str(", ", m.n_group, " expert groups, topk_group ", m.topk_group)
                                          : std::string(),
                       "); valid values: ", valid_expert_counts(m));
  }
  if (o.layers && (*o.layers < 1 || *o.layers > c.num_layers))
    throw_user_error("--layers ", *o.layers, ": the model has ", c.num_layers,
                     " layers; keep between 1 and ", c.num_layers);
  if (o.ffn_ratio && !(*o.ffn_ratio > 0.0 && *o.ffn_ratio <= 1.0))
    throw_user_error("--ffn-ratio ", *o.ffn_ratio, " is outside (0, 1]; give the fraction of MLP "
                     "channels to keep, e.g. 0.5");
  const model::AttentionConfig& a = c.attention;
  if (o.kv_heads) {
    if (is_mla(c))
      throw_user_error("--kv-heads: ", c.source, " is a ", c.model_type, " model with multi-head latent attention, "
                       "which has no KV groups (every head gets its own K/V from the latent); use --heads");
    if (*o.kv_heads < 1 || *o.kv_heads > a.num_kv_heads)
      throw_user_error("--kv-heads ", *o.kv_heads, ": the model has ", a.num_kv_heads,
                       " KV heads per layer; keep between 1 and ", a.num_kv_heads);
  }
  if (o.heads) {
    const int n = *o.heads;
    if (n < 1 || n > a.num_heads)
      throw_user_error("--heads ", n, ": the model has ", a.num_heads, " attention heads per layer; keep between 1 and ",
                       a.num_heads);
    if (!is_mla(c)) {
      const int groups = o.kv_heads ? *o.kv_heads : default_kv_groups(c, n);
      const int group = a.num_heads / a.num_kv_heads;
      if (n % groups != 0 || n / groups > group)
        throw_user_error("--heads ", n, " cannot be split evenly over ", groups, " kept KV groups of ", group,
                         " query heads each (", c.model_type, " repeats every KV head for the same number of "
                         "query heads); valid values", o.kv_heads ? str(" with --kv-heads ", *o.kv_heads) : "",
                         ": ", valid_head_counts(c, o.kv_heads),
                         o.kv_heads ? "" : " (or give --kv-heads to drop KV groups too)");
    }
  }
  if (o.hidden && (*o.hidden < 1 || *o.hidden > c.hidden_size))
    throw_user_error("--hidden ", *o.hidden, ": the model's hidden size is ", c.hidden_size,
                     "; keep between 1 and ", c.hidden_size, " embedding channels");
  if (o.heads || o.kv_heads || o.hidden) {
    const int heads = o.heads ? *o.heads
                      : o.kv_heads ? *o.kv_heads * (a.num_heads / a.num_kv_heads) : a.num_heads;
    check_heads_divide_hidden(c, heads, o.hidden ? *o.hidden : c.hidden_size, "the pruned model");
  }
}

PrunePlan build_plan(const model::ModelConfig& c, const ImportanceReport* report,
                     const PruneOptions& o) {
  check_options(c, o);
  if (o.needs_scores() && report == nullptr)
    throw_internal_error("build_plan: these options need an importance report");
  if (report != nullptr && static_cast<int>(report->layers.size()) != c.num_layers)
    throw_user_error("the importance report covers ", report->layers.size(), " layers but the model has ",
                     c.num_layers, "; it was made for another model");
  std::vector<int> kept_layers(static_cast<std::size_t>(c.num_layers));
  std::iota(kept_layers.begin(), kept_layers.end(), 0);
  if (o.layers) {
    std::vector<double> s;
    for (const auto& l : report->layers) s.push_back(l.block_score);
    kept_layers = top_indices(s, *o.layers);
  }
  PrunePlan plan;
  for (int l : kept_layers) {
    LayerPlan lp;
    lp.source = l;
    const bool moe = c.layer_is_moe(l);
    if (moe && o.experts) {
      const model::MoeConfig& m = *c.moe;
      const std::vector<double> s = expert_scores(c, report, o, l);
      if (grouped_routing(m)) {
        const int group = m.num_experts / m.n_group, per = *o.experts / m.n_group;
        for (int g = 0; g < m.n_group; ++g) {
          std::vector<double> gs(s.begin() + g * group, s.begin() + (g + 1) * group);
          for (int i : top_indices(gs, per)) lp.experts.push_back(g * group + i);
        }
      } else {
        lp.experts = top_indices(s, *o.experts);
      }
    }
    if (o.ffn_ratio) {
      const double r = *o.ffn_ratio;
      const auto& li = report->layers.at(static_cast<std::size_t>(l));
      if (!moe) {
        lp.mlp_channels = top_indices(channel_scores(li.mlp_channels, c.intermediate_size, l, "MLP"),
                                      ratio_count(r, c.intermediate_size));
      } else {
        const model::MoeConfig& m = *c.moe;
        const int keep = ratio_count(r, m.expert_intermediate_size);
        const std::vector<int> experts = lp.experts.empty() ? [&] {
          std::vector<int> all(static_cast<std::size_t>(m.num_experts));
          std::iota(all.begin(), all.end(), 0);
          return all;
        }() : lp.experts;
        for (int e : experts)
          lp.expert_channels.push_back(top_indices(
              channel_scores(li.experts->channels.at(static_cast<std::size_t>(e)),
                             m.expert_intermediate_size, l, "expert"),
              keep));
        if (m.shared_intermediate_size > 0) {
          const bool deepseek = c.family == model::ModelFamily::kDeepseekV2 ||
                                c.family == model::ModelFamily::kDeepseekV3;
          const int shared_keep = deepseek ? keep * m.num_shared_experts
                                           : ratio_count(r, m.shared_intermediate_size);
          lp.shared_channels = top_indices(
              channel_scores(li.shared_channels, m.shared_intermediate_size, l, "shared expert"),
              shared_keep);
        }
      }
    }
    if (o.heads || o.kv_heads) plan_heads(c, report->layers.at(static_cast<std::size_t>(l)), o, lp);
    plan.layers.push_back(std::move(lp));
  }
  if (o.hidden && *o.hidden < c.hidden_size) {
    if (static_cast<int>(report->embedding_channels.size()) != c.hidden_size)
      throw_user_error("the importance report has ", report->embedding_channels.size(),
                       " embedding channel scores but the model's hidden size is ", c.hidden_size,
                       "; it was made for another model");
    plan.hidden_channels = top_indices(report->embedding_channels, *o.hidden);
  }
  validate_plan(c, plan);
  return plan;
}

PlanShape plan_shape(const model::ModelConfig& c, const PrunePlan& plan) {
  PlanShape s;
  s.layers = static_cast<int>(plan.layers.size());
  for (const LayerPlan& l : plan.layers) {
    if (!l.experts.empty()) s.experts = static_cast<int>(l.experts.size());
    if (!l.mlp_channels.empty()) s.mlp_width = static_cast<int>(l.mlp_channels.size());
    if (!l.shared_channels.empty()) s.shared_width = static_cast<int>(l.shared_channels.size());
    for (const auto& ch : l.expert_channels)
      if (!ch.empty()) s.expert_width = static_cast<int>(ch.size());
    if (!l.heads.empty() || !l.kv_heads.empty()) {
      s.heads = static_cast<int>(kept_heads(c, l).size());
      s.kv_heads = static_cast<int>(kept_kv_heads(c, l).size());
    }
  }
  if (!plan.hidden_channels.empty()) s.hidden = static_cast<int>(plan.hidden_channels.size());
  return s;
}

void validate_plan(const model::ModelConfig& c, const PrunePlan& plan) {
  if (plan.layers.empty()) throw_user_error("prune plan: it keeps no layer; keep at least one");
  for (std::size_t i = 0; i < plan.hidden_channels.size(); ++i) {
    const int h = plan.hidden_channels[i];
    if (h < 0 || h >= c.hidden_size)
      throw_user_error("prune plan: hidden channel ", h, " is outside 0..", c.hidden_size - 1);
    if (i > 0 && h <= plan.hidden_channels[i - 1])
      throw_user_error("prune plan: hidden_channels must be ascending and unique (", plan.hidden_channels[i - 1],
                       " then ", h, ")");
  }
  int experts = -1, mlp = -1, shared = -1, expert_width = -1, heads = -1, kv_heads = -1;
  for (const LayerPlan& l : plan.layers) {
    if (l.source < 0 || l.source >= c.num_layers) continue;  // reported below
    validate_heads(c, l);
    same_count(heads, static_cast<int>(kept_heads(c, l).size()), l.source, "attention heads");
    same_count(kv_heads, static_cast<int>(kept_kv_heads(c, l).size()), l.source, "KV heads");
  }
  for (std::size_t i = 0; i < plan.layers.size(); ++i) {
    const LayerPlan& l = plan.layers[i];
    if (l.source < 0 || l.source >= c.num_layers)
      throw_user_error("prune plan: layer ", l.source, " is outside 0..", c.num_layers - 1);
    if (i > 0 && l.source <= plan.layers[i - 1].source)
      throw_user_error("prune plan: layers must be ascending and unique (", plan.layers[i - 1].source,
                       " then ", l.source, ")");
    const bool moe = c.layer_is_moe(l.source);
    if (!moe) {
      if (!l.experts.empty() || !l.shared_channels.empty() || !l.expert_channels.empty())
        throw_user_error("prune plan, layer ", l.source, ": a dense layer has no experts to prune");
      check_indices(l.mlp_channels, c.intermediate_size, l.source, "MLP channel");
      same_count(mlp, l.mlp_channels.empty() ? c.intermediate_size : static_cast<int>(l.mlp_channels.size()),
                 l.source, "MLP channels");
      continue;
    }
    const model::MoeConfig& m = *c.moe;
    if (!l.mlp_channels.empty())
      throw_user_error("prune plan, layer ", l.source, ": an MoE layer has no dense MLP; use "
                       "expert_channels / shared_channels");
    check_indices(l.experts, m.num_experts, l.source, "expert");
    const int n = l.experts.empty() ? m.num_experts : static_cast<int>(l.experts.size());
    same_count(experts, n, l.source, "experts");
    if (!valid_expert_count(m, n))
      throw_user_error("prune plan, layer ", l.source, ": ", n, " experts is not valid for this model; "
                       "valid counts: ", valid_expert_counts(m));
    if (grouped_routing(m) && !l.experts.empty()) {
      // Every new group (n / n_group consecutive kept experts) must lie in one old group.
      const int per = n / m.n_group, old = m.num_experts / m.n_group;
      for (int g = 0; g < m.n_group; ++g)
        for (int j = 0; j < per; ++j)
          if (l.experts[static_cast<std::size_t>(g * per + j)] / old != g)
            throw_user_error("prune plan, layer ", l.source, ": with ", m.n_group,
                             " routing groups, keep ", per, " experts of each group (experts ",
                             g * old, "..", (g + 1) * old - 1, " form group ", g, ")");
    }
    if (!l.expert_channels.empty()) {
      if (static_cast<int>(l.expert_channels.size()) != n)
        throw_user_error("prune plan, layer ", l.source, ": expert_channels has ", l.expert_channels.size(),
                         " lists for ", n, " kept experts");
      for (const auto& ch : l.expert_channels) {
        check_indices(ch, m.expert_intermediate_size, l.source, "expert channel");
        same_count(expert_width, ch.empty() ? m.expert_intermediate_size : static_cast<int>(ch.size()),
                   l.source, "channels per expert");
      }
    } else {
      same_count(expert_width, m.expert_intermediate_size, l.source, "channels per expert");
    }
    if (!l.shared_channels.empty() && m.shared_intermediate_size == 0)
      throw_user_error("prune plan, layer ", l.source, ": the model has no shared expert");
    check_indices(l.shared_channels, m.shared_intermediate_size, l.source, "shared-expert channel");
    if (m.shared_intermediate_size > 0)
      same_count(shared, l.shared_channels.empty() ? m.shared_intermediate_size
                                                   : static_cast<int>(l.shared_channels.size()),
                 l.source, "shared-expert channels");
  }
  if (heads >= 0 && (heads != c.attention.num_heads || !plan.hidden_channels.empty()))
    check_heads_divide_hidden(c, heads, plan.hidden_channels.empty() ? c.hidden_size
                                                                     : static_cast<int>(plan.hidden_channels.size()),
                              "prune plan: it");
  const bool deepseek = c.family == model::ModelFamily::kDeepseekV2 || c.family == model::ModelFamily::kDeepseekV3;
  if (deepseek && shared >= 0 && expert_width >= 0 && shared != expert_width * c.moe->num_shared_experts)
    throw_user_error("prune plan: ", c.model_type, " ties the shared experts' width to moe_intermediate_size x "
                     "n_shared_experts, so keeping ", expert_width, " channels per expert means keeping ",
                     expert_width * c.moe->num_shared_experts, " shared channels, not ", shared);
}

nlohmann::json plan_summary(const ImportanceReport& report, const PrunePlan& plan) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerImportance& l : report.layers) {
    const auto kept = std::find_if(plan.layers.begin(), plan.layers.end(),
                                   [&](const LayerPlan& p) { return p.source == l.layer; });
    nlohmann::json j = {{"layer", l.layer}, {"block_score", l.block_score}, {"kept", kept != plan.layers.end()}};
    if (l.experts && kept != plan.layers.end()) {
      double total = 0.0, routed = 0.0;
      for (std::size_t e = 0; e < l.experts->frequency.size(); ++e) {
        total += l.experts->frequency[e];
        const bool keep = kept->experts.empty() ||
                          std::find(kept->experts.begin(), kept->experts.end(), static_cast<int>(e)) !=
                              kept->experts.end();
        if (keep) routed += l.experts->frequency[e];
      }
      j["kept_expert_routing_share"] = total > 0.0 ? routed / total : 0.0;
    }
    layers.push_back(std::move(j));
  }
  return {{"calibration_tokens", report.tokens}, {"layers", layers}};
}

nlohmann::json plan_to_json(const PrunePlan& plan) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerPlan& l : plan.layers) {
    nlohmann::json j = {{"source", l.source}};
    if (!l.experts.empty()) j["experts"] = l.experts;
    if (!l.mlp_channels.empty()) j["mlp_channels"] = l.mlp_channels;
    if (!l.shared_channels.empty()) j["shared_channels"] = l.shared_channels;
    if (!l.expert_channels.empty()) j["expert_channels"] = l.expert_channels;
    if (!l.heads.empty()) j["heads"] = l.heads;
    if (!l.kv_heads.empty()) j["kv_heads"] = l.kv_heads;
    layers.push_back(std::move(j));
  }
  nlohmann::json j = {{"format", "refinery.prune_plan.v1"}, {"layers", layers}};
  if (!plan.hidden_channels.empty()) j["hidden_channels"] = plan.hidden_channels;
  return j;
}

PrunePlan plan_from_json(const nlohmann::json& j, const std::string& source) {
  try {
    if (j.value("format", std::string()) != "refinery.prune_plan.v1")
      throw_user_error(source, " is not a prune plan (\"format\" is not \"refinery.prune_plan.v1\")");
    PrunePlan p;
    for (const nlohmann::json& lj : j.at("layers")) {
      LayerPlan l;
      l.source = lj.at("source").get<int>();
      l.experts = lj.value("experts", std::vector<int>{});
      l.mlp_channels = lj.value("mlp_channels", std::vector<int>{});
      l.shared_channels = lj.value("shared_channels", std::vector<int>{});
      l.expert_channels = lj.value("expert_channels", std::vector<std::vector<int>>{});
      l.heads = lj.value("heads", std::vector<int>{});
      l.kv_heads = lj.value("kv_heads", std::vector<int>{});
      p.layers.push_back(std::move(l));
    }
    p.hidden_channels = j.value("hidden_channels", std::vector<int>{});
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw_user_error(source, " is not a valid prune plan (", e.what(), ")");
  }
}

}  // namespace refinery::prune
