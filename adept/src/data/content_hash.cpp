#include "data/content_hash.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "core/error.hpp"

namespace adept {

void Fnv1a64::update(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = state_;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  state_ = h;
}

uint64_t fnv1a64(std::string_view bytes) {
  Fnv1a64 h;
  h.update(bytes);
  return h.value();
}

std::string hash_string(uint64_t hash) { return fmt::format("fnv1a64:{:016x}", hash); }

std::string hash_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail("{}: cannot open ({})", path, std::strerror(errno));
  std::vector<char> buffer(1 << 20);
  Fnv1a64 h;
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), f.get())) h.update(buffer.data(), n);
  if (std::ferror(f.get())) fail("{}: read error while hashing", path);
  return hash_string(h.value());
}

}  // namespace adept
