#pragma once
// A line chart as a self-contained inline SVG string (the recipe report's HTML page has no
// scripts and loads nothing from the network).

#include <string>
#include <utility>
#include <vector>

namespace refinery::recipe {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
};

struct Chart {
  std::string title, x_label, y_label;
  bool log_y = false;  // for losses/perplexities spanning decades
  std::vector<Series> series;
};

// width x height pixels; axes with ~5 ticks each, one colour per series and a legend. Text is
// XML-escaped. A chart without points renders a "no data" note.
std::string render_svg(const Chart& chart, int width = 640, int height = 320);

std::string xml_escape(const std::string& text);

}  // namespace refinery::recipe
