#include "report/svg_plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace adept {

namespace {

constexpr double kWidth = 820, kHeight = 400, kLeft = 70, kRight = 260, kTop = 40, kBottom = 50;
const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string frame(const std::string& title, const std::string& x_label, const std::string& y_label, double y0,
                  double y1) {
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{3}</text>\n",
      kWidth, kHeight, (kLeft + kWidth - kRight) / 2, escape(title));
  double plot_h = kHeight - kTop - kBottom;
  for (int i = 0; i <= 4; ++i) {
    double v = y0 + (y1 - y0) * i / 4.0, py = kTop + plot_h * (1 - i / 4.0);
    s += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", kLeft, py,
                     kWidth - kRight, py);
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.3g}</text>\n", kLeft - 6, py + 4, v);
  }
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (kLeft + kWidth - kRight) / 2,
                   kHeight - 10, escape(x_label));
  s += fmt::format("<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
                   kTop + plot_h / 2, kTop + plot_h / 2, escape(y_label));
  return s;
}

}  // namespace

std::string svg_line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i])) {
        x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
        y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
      }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  std::string svg = frame(title, x_label, y_label, y0, y1);
  double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"start\">{:.4g}</text>\n", kLeft, kHeight - kBottom + 16, x0);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.4g}</text>\n", kWidth - kRight,
                     kHeight - kBottom + 16, x1);
  for (size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    const char* color = kColors[k % 8];
    std::string points;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      points += fmt::format("{:.1f},{:.1f} ", kLeft + plot_w * (s.x[i] - x0) / (x1 - x0),
                            kTop + plot_h * (1 - (s.y[i] - y0) / (y1 - y0)));
    }
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", color, points);
    double ly = kTop + 14 + 18 * double(k);
    svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/>\n",
                       kWidth - kRight + 10, ly - 4, kWidth - kRight + 30, ly - 4, color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", kWidth - kRight + 36, ly, escape(s.label));
  }
  return svg + "</svg>\n";
}

std::string svg_bar_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<std::string>& labels, const std::vector<double>& values,
                          const std::vector<bool>& highlighted) {
  double y1 = 0, y0 = 0;
  for (double v : values) y1 = std::max(y1, v), y0 = std::min(y0, v);
  if (y1 == y0) y1 = y0 + 1;
  std::string svg = frame(title, x_label, y_label, y0, y1);
  double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  double slot = plot_w / double(std::max<size_t>(1, values.size()));
  double zero_y = kTop + plot_h * (1 - (0 - y0) / (y1 - y0));
  for (size_t i = 0; i < values.size(); ++i) {
    double top = kTop + plot_h * (1 - (values[i] - y0) / (y1 - y0));
    double x = kLeft + slot * double(i) + slot * 0.15;
    const char* color = i < highlighted.size() && highlighted[i] ? "#d62728" : "#1f77b4";
    svg += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"/>\n", x,
                       std::min(top, zero_y), slot * 0.7, std::abs(zero_y - top), color);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}{}</text>\n",
                       x + slot * 0.35, kHeight - kBottom + 16, color, escape(labels[i]),
                       i < highlighted.size() && highlighted[i] ? " ▲" : "");
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"#d62728\">▲ red: copied (expanded)</text>\n", kWidth - kRight + 10, kTop + 14);
  return svg + "</svg>\n";
}

}  // namespace adept
