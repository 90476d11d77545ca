// Content hashes for the data pipeline: FNV-1a 64 over bytes. Used to tell whether an
// input file, a tokenizer file or a shard changed since the manifest was written, not
// as a defence against tampering (64 bits, non-cryptographic).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace adept {

class Fnv1a64 {
 public:
  void update(const void* data, size_t size);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  uint64_t value() const { return state_; }

 private:
  uint64_t state_ = 0xcbf29ce484222325ull;
};

uint64_t fnv1a64(std::string_view bytes);

// "fnv1a64:" followed by 16 hex digits: the form stored in manifests.
std::string hash_string(uint64_t hash);

// Hashes a whole file (streamed, any size). Throws adept::Error naming it on failure.
std::string hash_file(const std::string& path);

}  // namespace adept
