// render_svg: plain SVG lines, ticks and a legend (see svg_chart.hpp).
#include "recipe/svg_chart.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace refinery::recipe {

namespace {

constexpr const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                    "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

std::string coordinate(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string render_svg(const Chart& chart, int width, int height) {
  const double left = 64, right = 16, top = 28, bottom = 44;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  auto y_of = [&](double y) { return chart.log_y ? std::log10(std::max(y, 1e-30)) : y; };

  double x_min = std::numeric_limits<double>::infinity(), x_max = -x_min;
  double y_min = x_min, y_max = -x_min;
  for (const auto& s : chart.series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (chart.log_y && y <= 0)) continue;
      x_min = std::min(x_min, x), x_max = std::max(x_max, x);
      y_min = std::min(y_min, y_of(y)), y_max = std::max(y_max, y_of(y));
    }
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) +
                    "\" height=\"" + std::to_string(height) + "\" viewBox=\"0 0 " +
                    std::to_string(width) + " " + std::to_string(height) +
                    "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  svg += "<text x=\"" + coordinate(width / 2.0) + "\" y=\"16\" text-anchor=\"middle\" "
         "font-size=\"13\">" + xml_escape(chart.title) + "</text>\n";
  if (!std::isfinite(x_min)) {
    svg += "<text x=\"" + coordinate(width / 2.0) + "\" y=\"" + coordinate(height / 2.0) +
           "\" text-anchor=\"middle\">no data</text>\n</svg>\n";
    return svg;
  }
  if (x_max == x_min) x_max = x_min + 1;
  if (y_max == y_min) y_max = y_min + 1, y_min -= 1;
  const double pad = 0.05 * (y_max - y_min);
  y_min -= pad, y_max += pad;
  auto px = [&](double x) { return left + (x - x_min) / (x_max - x_min) * plot_w; };
  auto py = [&](double y) { return top + (1 - (y_of(y) - y_min) / (y_max - y_min)) * plot_h; };

  // Frame, ticks and labels.
  svg += "<rect x=\"" + coordinate(left) + "\" y=\"" + coordinate(top) + "\" width=\"" +
         coordinate(plot_w) + "\" height=\"" + coordinate(plot_h) +
         "\" fill=\"none\" stroke=\"#888\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double fx = x_min + (x_max - x_min) * i / 4, fy = y_min + (y_max - y_min) * i / 4;
    const double sx = px(fx), sy = top + (1 - i / 4.0) * plot_h;
    svg += "<text x=\"" + coordinate(sx) + "\" y=\"" + coordinate(top + plot_h + 14) +
           "\" text-anchor=\"middle\">" + number(fx) + "</text>\n";
    svg += "<text x=\"" + coordinate(left - 4) + "\" y=\"" + coordinate(sy + 4) +
           "\" text-anchor=\"end\">" + number(chart.log_y ? std::pow(10.0, fy) : fy) +
           "</text>\n";
    svg += "<line x1=\"" + coordinate(left) + "\" x2=\"" + coordinate(left + plot_w) + "\" y1=\"" +
           coordinate(sy) + "\" y2=\"" + coordinate(sy) + "\" stroke=\"#eee\"/>\n";
  }
  svg += "<text x=\"" + coordinate(left + plot_w / 2) + "\" y=\"" + coordinate(height - 6.0) +
         "\" text-anchor=\"middle\">" + xml_escape(chart.x_label) + "</text>\n";
  svg += "<text x=\"12\" y=\"" + coordinate(top + plot_h / 2) +
         "\" text-anchor=\"middle\" transform=\"rotate(-90 12 " + coordinate(top + plot_h / 2) +
         ")\">" + xml_escape(chart.y_label + (chart.log_y ? " (log)" : "")) + "</text>\n";

  // One polyline per series, legend at the top right.
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const auto& s = chart.series[i];
    const char* colour = kColours[i % std::size(kColours)];
    std::string points;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (chart.log_y && y <= 0)) continue;
      points += coordinate(px(x)) + "," + coordinate(py(y)) + " ";
    }
    svg += "<polyline fill=\"none\" stroke=\"" + std::string(colour) +
           "\" stroke-width=\"1.5\" points=\"" + points + "\"/>\n";
    const double ly = top + 12 + 14.0 * i;
    svg += "<line x1=\"" + coordinate(left + plot_w - 150) + "\" x2=\"" +
           coordinate(left + plot_w - 132) + "\" y1=\"" + coordinate(ly - 4) + "\" y2=\"" +
           coordinate(ly - 4) + "\" stroke=\"" + colour + "\" stroke-width=\"2\"/>\n";
    svg += "<text x=\"" + coordinate(left + plot_w - 128) + "\" y=\"" + coordinate(ly) + "\">" +
           xml_escape(s.name) + "</text>\n";
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace refinery::recipe
