// Writes documents into numbered shard files (shard-00000.bin, ...) of about
// shard_tokens tokens each, cut at document boundaries; each file is written atomically.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "data/manifest.hpp"
#include "data/token_shard.hpp"

namespace adept {

class ShardWriter {
 public:
  // A document longer than shard_tokens gets a shard of its own.
  ShardWriter(std::string dir, uint32_t vocab_size, int64_t shard_tokens);

  // `mask` empty: every token is a target.
  void add_document(std::span<const uint32_t> tokens, std::span<const uint8_t> mask = {});
  // Writes the last, partial shard; returns every shard written, in order.
  std::vector<ShardEntry> finish();

 private:
  void flush();
  std::string dir_;
  uint32_t vocab_size_;
  int64_t shard_tokens_;
  ShardContents current_;
  std::vector<ShardEntry> written_;
};

std::string shard_file_name(int64_t index);

}  // namespace adept
