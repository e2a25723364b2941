// Report rendering (see report.hpp).
#include "recipe/report.hpp"

#include <cstdio>
#include <fstream>

namespace refinery::recipe {

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string optional_fixed(const std::optional<double>& v, int digits) {
  return v ? fixed(*v, digits) : "—";
}

std::string human_count(int64_t n) {
  if (n >= 1000000000) return fixed(n / 1e9, 2) + "B";
  if (n >= 1000000) return fixed(n / 1e6, 2) + "M";
  if (n >= 1000) return fixed(n / 1e3, 1) + "k";
  return std::to_string(n);
}

std::string human_bytes(int64_t n) {
  if (n >= (int64_t{1} << 30)) return fixed(n / double(int64_t{1} << 30), 2) + " GiB";
  if (n >= (int64_t{1} << 20)) return fixed(n / double(int64_t{1} << 20), 1) + " MiB";
  return fixed(n / 1024.0, 1) + " KiB";
}

struct Column {
  const char* header;
  std::string (*cell)(const ArtifactRow&);
};

const std::vector<Column>& columns() {
  static const std::vector<Column> c = {
      {"artifact", [](const ArtifactRow& r) { return r.name; }},
      {"made by", [](const ArtifactRow& r) { return r.verb; }},
      {"type", [](const ArtifactRow& r) { return r.model_type; }},
      {"params", [](const ArtifactRow& r) { return human_count(r.params_total); }},
      {"active", [](const ArtifactRow& r) { return human_count(r.params_active); }},
      {"on disk", [](const ArtifactRow& r) { return human_bytes(r.bytes_on_disk); }},
      {"perplexity", [](const ArtifactRow& r) { return optional_fixed(r.perplexity, 2); }},
      {"KL to teacher", [](const ArtifactRow& r) { return optional_fixed(r.kl_mean, 4); }},
      {"top-1 agree", [](const ArtifactRow& r) {
         return r.top1_agreement ? fixed(100 * *r.top1_agreement, 1) + "%" : "—";
       }},
      {"prefill tok/s", [](const ArtifactRow& r) { return optional_fixed(r.prefill_tokens_per_s, 0); }},
      {"decode tok/s", [](const ArtifactRow& r) { return optional_fixed(r.decode_tokens_per_s, 1); }},
  };
  return c;
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

std::string render_markdown(const Report& report) {
  std::string md = "## Recipe " + report.recipe + "\n\n";
  if (!report.description.empty()) md += report.description + "\n\n";
  md += "Run directory `" + report.run_dir + "`, device " + report.device + ", " + report.created +
        ". Perplexity, KL (mean, nats/token) and top-1 agreement on `" + report.eval_data +
        "`; speed is batch-1 (`refine bench`).\n\n|";
  for (const auto& c : columns()) md += std::string(" ") + c.header + " |";
  md += "\n|";
  for (size_t i = 0; i < columns().size(); ++i) md += i < 3 ? "---|" : "---:|";
  md += "\n";
  for (const auto& r : report.artifacts) {
    md += "|";
    for (const auto& c : columns()) md += " " + c.cell(r) + " |";
    md += "\n";
  }
  md += "\nSteps:\n\n";
  for (const auto& s : report.steps)
    md += "- " + s.name + " (" + s.verb + ") → `" + s.output + "`, " + fixed(s.seconds, 1) + " s" +
          (s.reused ? " (finished in an earlier run)" : "") + "\n";
  return md;
}

nlohmann::json report_to_json(const Report& report) {
  nlohmann::json j{{"recipe", report.recipe},       {"description", report.description},
                   {"run_dir", report.run_dir},     {"device", report.device},
                   {"created", report.created},     {"eval_data", report.eval_data},
                   {"steps", nlohmann::json::array()}, {"artifacts", nlohmann::json::array()}};
  for (const auto& s : report.steps)
    j["steps"].push_back({{"name", s.name}, {"verb", s.verb}, {"output", s.output},
                          {"seconds", s.seconds}, {"reused", s.reused}});
  for (const auto& r : report.artifacts)
    j["artifacts"].push_back({{"name", r.name},
                              {"verb", r.verb},
                              {"path", r.path},
                              {"model_type", r.model_type},
                              {"params_total", r.params_total},
                              {"params_active", r.params_active},
                              {"bytes_on_disk", r.bytes_on_disk},
                              {"perplexity", optional_json(r.perplexity)},
                              {"kl_mean", optional_json(r.kl_mean)},
                              {"top1_agreement", optional_json(r.top1_agreement)},
                              {"prefill_tokens_per_s", optional_json(r.prefill_tokens_per_s)},
                              {"decode_tokens_per_s", optional_json(r.decode_tokens_per_s)}});
  return j;
}

std::string render_html(const Report& report) {
  std::string h =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>Refinery recipe " +
      xml_escape(report.recipe) +
      "</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
      "td.n{text-align:right}th{background:#f4f4f4}code{background:#f4f4f4;padding:1px 3px}"
      "</style></head><body>\n<h1>Recipe " + xml_escape(report.recipe) + "</h1>\n";
  if (!report.description.empty()) h += "<p>" + xml_escape(report.description) + "</p>\n";
  h += "<p>Run directory <code>" + xml_escape(report.run_dir) + "</code>, device " +
       xml_escape(report.device) + ", " + xml_escape(report.created) +
       ". Perplexity, KL to the teacher (mean, nats/token) and top-1 agreement on <code>" +
       xml_escape(report.eval_data) + "</code>; speed is batch 1.</p>\n<table><tr>";
  for (const auto& c : columns()) h += std::string("<th>") + xml_escape(c.header) + "</th>";
  h += "</tr>\n";
  for (const auto& r : report.artifacts) {
    h += "<tr>";
    for (size_t i = 0; i < columns().size(); ++i)
      h += (i < 3 ? "<td>" : "<td class=\"n\">") + xml_escape(columns()[i].cell(r)) + "</td>";
    h += "</tr>\n";
  }
  h += "</table>\n<h2>Steps</h2>\n<ul>\n";
  for (const auto& s : report.steps)
    h += "<li>" + xml_escape(s.name) + " (" + xml_escape(s.verb) + ") → <code>" +
         xml_escape(s.output) + "</code>, " + fixed(s.seconds, 1) + " s" +
         (s.reused ? " (finished in an earlier run)" : "") + "</li>\n";
  h += "</ul>\n";
  if (!report.charts.empty()) h += "<h2>Curves</h2>\n";
  for (const auto& chart : report.charts) h += "<div>" + render_svg(chart) + "</div>\n";
  h += "</body></html>\n";
  return h;
}

std::vector<Chart> distill_charts(const std::string& step_name,
                                  const std::filesystem::path& metrics_jsonl) {
  std::ifstream in(metrics_jsonl);
  if (!in) return {};
  Series loss{"train loss", {}}, kd{"kd", {}}, ce{"ce", {}}, ppl{"held-out perplexity", {}};
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const double step = j["step"].get<double>();
    auto add = [&](Series& s, const nlohmann::json& o, const char* key) {
      if (o.contains(key) && o[key].is_number()) s.points.emplace_back(step, o[key].get<double>());
    };
    if (j.contains("eval") && j["eval"].is_object()) {
      add(ppl, j["eval"], "perplexity");
    } else {
      add(loss, j, "loss");
      add(kd, j, "kd");
      add(ce, j, "ce");
    }
  }
  std::vector<Chart> charts;
  Chart train{step_name + ": training loss", "step", "loss", false, {loss}};
  // Show the parts only when both are used (a mix of KD and CE).
  auto nonzero = [](const Series& s) {
    for (const auto& p : s.points)
      if (p.second != 0.0) return true;
    return false;
  };
  if (nonzero(kd) && nonzero(ce)) train.series.push_back(kd), train.series.push_back(ce);
  if (!loss.points.empty()) charts.push_back(train);
  if (!ppl.points.empty())
    charts.push_back({step_name + ": held-out perplexity", "step", "perplexity", true, {ppl}});
  return charts;
}

int64_t model_bytes_on_disk(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) return static_cast<int64_t>(fs::file_size(dir, ec));
  int64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_directory() && it->path().filename() == "train" && it.depth() == 0) {
      it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file()) total += static_cast<int64_t>(it->file_size());
  }
  return total;
}

}  // namespace refinery::recipe
