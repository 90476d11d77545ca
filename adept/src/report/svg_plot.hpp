// Small, dependency-free SVG charts for run reports: line charts (loss curves, learning-
// rate multipliers over time) and bar charts (layer importance).
#pragma once

#include <string>
#include <vector>

namespace adept {

struct Series {
  std::string label;
  std::vector<double> x, y;
};

std::string svg_line_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                           const std::vector<Series>& series);

std::string svg_bar_chart(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<std::string>& labels, const std::vector<double>& values,
                          const std::vector<bool>& highlighted);

}  // namespace adept
