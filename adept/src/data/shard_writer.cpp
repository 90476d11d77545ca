#include "data/shard_writer.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/content_hash.hpp"

namespace adept {

std::string shard_file_name(int64_t index) { return fmt::format("shard-{:05d}.bin", index); }

ShardWriter::ShardWriter(std::string dir, uint32_t vocab_size, int64_t shard_tokens)
    : dir_(std::move(dir)), vocab_size_(vocab_size), shard_tokens_(shard_tokens) {
  if (shard_tokens_ < 1) fail("shard_tokens must be positive, not {}", shard_tokens_);
}

void ShardWriter::add_document(std::span<const uint32_t> tokens, std::span<const uint8_t> mask) {
  if (current_.token_count() > 0 && current_.token_count() + int64_t(tokens.size()) > shard_tokens_) flush();
  current_.add_document(tokens, mask);
}

void ShardWriter::flush() {
  if (current_.documents() == 0) return;
  ShardEntry e;
  e.file = shard_file_name(int64_t(written_.size()));
  e.documents = current_.documents();
  e.tokens = current_.token_count();
  std::string bytes = encode_shard(current_, vocab_size_);
  e.bytes = int64_t(bytes.size());
  e.hash = hash_string(fnv1a64(bytes));
  write_file_atomic((std::filesystem::path(dir_) / e.file).string(), bytes);
  written_.push_back(std::move(e));
  current_.clear();
}

std::vector<ShardEntry> ShardWriter::finish() {
  flush();
  return written_;
}

}  // namespace adept
