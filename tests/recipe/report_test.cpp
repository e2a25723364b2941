// Report rendering (src/recipe/report.hpp, svg_chart.hpp).
#include <gtest/gtest.h>

#include <fstream>

#include "recipe/report.hpp"
#include "recipe/svg_chart.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::recipe {
namespace {

Report sample_report() {
  Report r;
  r.recipe = "demo";
  r.run_dir = "runs/demo";
  r.device = "cpu";
  r.created = "2026-11-27 04:00 UTC";
  r.eval_data = "valid.jsonl";
  ArtifactRow teacher{"teacher", "input", "m", "deepseek_v3", 10650000, 7550000, 21800000,
                      25.97, 0.0, 1.0, 265.0, 60.6};
  ArtifactRow student{"student<b>", "distill", "s", "llama", 1840000, 1840000, 3900000,
                      std::nullopt, std::nullopt, std::nullopt, 1091.0, 140.9};
  r.artifacts = {teacher, student};
  r.steps = {{"student<b>", "distill", "runs/demo/01-student/model", 12.5, true}};
  r.charts = {{"loss", "step", "loss", false, {{"train loss", {{1, 9.0}, {2, 8.0}}}}}};
  return r;
}

TEST(Report, MarkdownHasOneRowPerArtifact) {
  const std::string md = render_markdown(sample_report());
  EXPECT_NE(md.find("| teacher | input | deepseek_v3 | 10.65M | 7.55M | 20.8 MiB | 25.97 | 0.0000 | "
                    "100.0% | 265 | 60.6 |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| student<b> | distill | llama | 1.84M | 1.84M | 3.7 MiB | — | — | — |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("12.5 s (finished in an earlier run)"), std::string::npos);
}

TEST(Report, JsonUsesNullForWhatWasNotMeasured) {
  const auto j = report_to_json(sample_report());
  ASSERT_EQ(j["artifacts"].size(), 2u);
  EXPECT_EQ(j["artifacts"][0]["params_active"], 7550000);
  EXPECT_DOUBLE_EQ(j["artifacts"][0]["perplexity"].get<double>(), 25.97);
  EXPECT_TRUE(j["artifacts"][1]["perplexity"].is_null());
  EXPECT_EQ(j["steps"][0]["reused"], true);
}

TEST(Report, HtmlIsSelfContainedAndEscaped) {
  const std::string html = render_html(sample_report());
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("student&lt;b&gt;"), std::string::npos);
  EXPECT_EQ(html.find("student<b>"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://") == std::string::npos ||
                html.find("http://") == html.find("http://www.w3.org/2000/svg"),
            true);  // the SVG namespace is the only URL, and it is not fetched
}

TEST(SvgChart, ScalesPointsIntoThePlotArea) {
  Chart c{"t", "x", "y", false, {{"a", {{0, 0}, {10, 5}}}}};
  const std::string svg = render_svg(c, 640, 320);
  // left 64, right 16, top 28, bottom 44: x 0 -> 64, x 10 -> 624; y spans [-0.25, 5.25].
  EXPECT_NE(svg.find("points=\"64.0,"), std::string::npos) << svg;
  EXPECT_NE(svg.find(" 624.0,"), std::string::npos) << svg;
  const Chart empty{"t", "x", "y", true, {{"a", {{1, -1}}}}};  // log scale drops y <= 0
  EXPECT_NE(render_svg(empty).find("no data"), std::string::npos);
  EXPECT_EQ(xml_escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&#39;");
}

TEST(Report, DistillChartsFromAMetricsLog) {
  test::ScratchDir dir;
  const auto path = dir.write("metrics.jsonl",
                              "{\"step\":1,\"loss\":5,\"kd\":4,\"ce\":1}\n"
                              "not json\n"
                              "{\"step\":2,\"loss\":4,\"kd\":3,\"ce\":1}\n"
                              "{\"step\":2,\"eval\":{\"perplexity\":50}}\n");
  const auto charts = distill_charts("s", path);
  ASSERT_EQ(charts.size(), 2u);
  ASSERT_EQ(charts[0].series.size(), 3u);  // loss, kd, ce (both parts used)
  EXPECT_EQ(charts[0].series[0].points.size(), 2u);
  EXPECT_TRUE(charts[1].log_y);
  EXPECT_EQ(charts[1].series[0].points.at(0).second, 50.0);
  EXPECT_TRUE(distill_charts("s", dir.file("missing.jsonl")).empty());
}

TEST(Report, BytesOnDiskSkipTrainingState) {
  test::ScratchDir dir;
  dir.write("model.safetensors", std::string(1000, 'x'));
  std::filesystem::create_directories(dir.path() / "train" / "checkpoint");
  dir.write("train/checkpoint/optimizer.safetensors", std::string(5000, 'y'));
  EXPECT_EQ(model_bytes_on_disk(dir.path()), 1000);
  EXPECT_EQ(model_bytes_on_disk(dir.file("model.safetensors")), 1000);
}

}  // namespace
}  // namespace refinery::recipe
