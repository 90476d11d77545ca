#include "core/embedded.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace adept {

std::string read_text_source(const std::string& source) {
  constexpr std::string_view prefix = "embedded:";
  if (source.starts_with(prefix)) {
    std::string name = source.substr(prefix.size());
    auto data = embedded_file(name);
    if (!data) fail("{}: no such embedded file", source);
    return std::string(*data);
  }
  std::ifstream in(source, std::ios::binary);
  if (!in) fail("{}: cannot open ({})", source, std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("{}: read error", source);
  return buffer.str();
}

}  // namespace adept
