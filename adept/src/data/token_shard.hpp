// Token shards: the binary files `adept data prepare` writes and the loader maps.
//
// Layout (little-endian; every array starts 8-byte aligned):
//   header, 64 bytes: magic "ADEPTSHD", u32 version (1), u32 flags (bit 0: a loss mask
//     follows the tokens), u64 documents, u64 tokens, u32 vocab_size, 28 bytes of zero
//   u64 offsets[documents + 1]   where each document starts: 0 = o0 < o1 < ... = tokens
//   u32 tokens[tokens]           token ids, each < vocab_size
//   u8  loss_mask[tokens]        only with flag bit 0: 1 = the token is a training target
//                                (predicting it counts in the loss), 0 = context only
//                                (an instruction's prompt)
// The file size follows from the header, so a truncated shard is caught on opening.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace adept {

inline constexpr char kShardMagic[8] = {'A', 'D', 'E', 'P', 'T', 'S', 'H', 'D'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 64;

// A shard being built in memory: documents appended one by one.
struct ShardContents {
  std::vector<uint64_t> offsets{0};
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> loss_mask;  // empty while every token so far is a target

  int64_t documents() const { return int64_t(offsets.size()) - 1; }
  int64_t token_count() const { return int64_t(tokens.size()); }
  // `mask` empty: every token is a target. Empty documents are not allowed.
  void add_document(std::span<const uint32_t> doc, std::span<const uint8_t> mask = {});
  void clear();
};

// The bytes of a shard file.
std::string encode_shard(const ShardContents& shard, uint32_t vocab_size);

// One document of a mapped shard. mask == nullptr: every token is a target.
struct DocumentView {
  const uint32_t* tokens = nullptr;
  const uint8_t* mask = nullptr;
  int64_t length = 0;
};

// A shard file mapped read-only. The constructor validates everything the loader relies
// on — size, magic, version, offsets, token ids, mask values — and throws adept::Error
// naming the file and what is wrong.
class ShardReader {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&& other) noexcept;
  ShardReader& operator=(ShardReader&& other) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t documents() const { return documents_; }
  int64_t tokens() const { return tokens_; }
  int64_t file_bytes() const { return int64_t(size_); }
  uint32_t vocab_size() const { return vocab_size_; }
  bool has_loss_mask() const { return mask_ != nullptr; }
  DocumentView document(int64_t i) const;

 private:
  void unmap();
  std::string path_;
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
  int64_t documents_ = 0, tokens_ = 0;
  uint32_t vocab_size_ = 0;
  const uint64_t* offsets_ = nullptr;
  const uint32_t* token_ids_ = nullptr;
  const uint8_t* mask_ = nullptr;
};

}  // namespace adept
