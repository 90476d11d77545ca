#include "data/token_shard.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.hpp"

namespace adept {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

namespace {

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t flags;
  uint64_t documents;
  uint64_t tokens;
  uint32_t vocab_size;
  char reserved[28];
};
static_assert(sizeof(Header) == kShardHeaderBytes);

constexpr uint32_t kFlagLossMask = 1;

// Bytes the arrays after the header take; false if the counts overflow 64 bits.
bool body_bytes(uint64_t documents, uint64_t tokens, bool mask, uint64_t& bytes) {
  if (documents > (uint64_t(1) << 56) || tokens > (uint64_t(1) << 56)) return false;
  bytes = 8 * (documents + 1) + 4 * tokens + (mask ? tokens : 0);
  return true;
}

}  // namespace

void ShardContents::add_document(std::span<const uint32_t> doc, std::span<const uint8_t> mask) {
  if (doc.empty()) fail("internal: an empty document was added to a shard");
  if (!mask.empty() && mask.size() != doc.size())
    fail("internal: a loss mask of {} entries for a document of {} tokens", mask.size(), doc.size());
  bool all_targets = true;
  for (uint8_t m : mask) all_targets &= m == 1;
  // The mask is materialised from the first document that needs one on.
  const bool keep_mask = !all_targets || !loss_mask.empty();
  if (keep_mask) loss_mask.resize(tokens.size(), 1);
  tokens.insert(tokens.end(), doc.begin(), doc.end());
  if (keep_mask) {
    if (all_targets) loss_mask.resize(tokens.size(), 1);
    else loss_mask.insert(loss_mask.end(), mask.begin(), mask.end());
  }
  offsets.push_back(tokens.size());
}

void ShardContents::clear() {
  offsets.assign(1, 0);
  tokens.clear();
  loss_mask.clear();
}

std::string encode_shard(const ShardContents& shard, uint32_t vocab_size) {
  Header h{};
  std::memcpy(h.magic, kShardMagic, 8);
  h.version = kShardVersion;
  h.flags = shard.loss_mask.empty() ? 0 : kFlagLossMask;
  h.documents = uint64_t(shard.documents());
  h.tokens = uint64_t(shard.token_count());
  h.vocab_size = vocab_size;
  std::string out;
  uint64_t body = 0;
  body_bytes(h.documents, h.tokens, h.flags & kFlagLossMask, body);
  out.reserve(sizeof(Header) + body);
  out.append(reinterpret_cast<const char*>(&h), sizeof(h));
  out.append(reinterpret_cast<const char*>(shard.offsets.data()), 8 * shard.offsets.size());
  out.append(reinterpret_cast<const char*>(shard.tokens.data()), 4 * shard.tokens.size());
  out.append(reinterpret_cast<const char*>(shard.loss_mask.data()), shard.loss_mask.size());
  return out;
}

ShardReader::ShardReader(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open shard ({})", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("{}: cannot stat shard ({})", path, std::strerror(err));
  }
  size_ = size_t(st.st_size);
  if (size_ < sizeof(Header)) {
    ::close(fd);
    fail("{}: truncated shard: {} bytes, less than the {}-byte header", path, size_, sizeof(Header));
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("{}: cannot map shard ({})", path, std::strerror(errno));
  data_ = static_cast<const unsigned char*>(p);

  try {
    Header h;
    std::memcpy(&h, data_, sizeof(h));
    if (std::memcmp(h.magic, kShardMagic, 8) != 0) fail("{}: not an adept token shard (bad magic)", path);
    if (h.version != kShardVersion) fail("{}: shard version {}, this build reads {}", path, h.version, kShardVersion);
    if (h.flags & ~kFlagLossMask) fail("{}: unknown shard flags {:#x}", path, h.flags);
    const bool mask = h.flags & kFlagLossMask;
    uint64_t body = 0;
    if (!body_bytes(h.documents, h.tokens, mask, body))
      fail("{}: corrupt shard header ({} documents, {} tokens)", path, h.documents, h.tokens);
    uint64_t expected = sizeof(Header) + body;
    if (size_ < expected)
      fail("{}: truncated shard: the header promises {} documents and {} tokens ({} bytes), the file has {} bytes",
           path, h.documents, h.tokens, expected, size_);
    if (size_ > expected)
      fail("{}: shard has {} bytes, {} more than its header accounts for ({} documents, {} tokens)", path, size_,
           size_ - expected, h.documents, h.tokens);
    documents_ = int64_t(h.documents);
    tokens_ = int64_t(h.tokens);
    vocab_size_ = h.vocab_size;
    offsets_ = reinterpret_cast<const uint64_t*>(data_ + sizeof(Header));
    token_ids_ = reinterpret_cast<const uint32_t*>(offsets_ + documents_ + 1);
    mask_ = mask ? reinterpret_cast<const uint8_t*>(token_ids_ + tokens_) : nullptr;

    if (offsets_[0] != 0) fail("{}: document offsets start at {}, not 0", path, offsets_[0]);
    for (int64_t d = 0; d < documents_; ++d)
      if (offsets_[d + 1] <= offsets_[d])
        fail("{}: document {} is empty or out of order (offsets {} then {})", path, d, offsets_[d], offsets_[d + 1]);
    if (offsets_[documents_] != h.tokens)
      fail("{}: the last document ends at token {}, but the shard has {} tokens", path, offsets_[documents_], h.tokens);
    if (vocab_size_ > 0) {
      uint32_t max_id = 0;
      for (int64_t i = 0; i < tokens_; ++i) max_id = std::max(max_id, token_ids_[i]);
      if (tokens_ > 0 && max_id >= vocab_size_) {
        int64_t at = 0;
        while (token_ids_[at] < vocab_size_) ++at;
        fail("{}: token {} has id {}, outside the vocabulary of {}", path, at, token_ids_[at], vocab_size_);
      }
    }
    if (mask_) {
      uint8_t bits = 0;
      for (int64_t i = 0; i < tokens_; ++i) bits |= mask_[i];
      if (bits & ~uint8_t(1)) fail("{}: loss mask holds values other than 0 and 1", path);
    }
  } catch (...) {
    unmap();
    throw;
  }
}

ShardReader::~ShardReader() { unmap(); }

ShardReader::ShardReader(ShardReader&& other) noexcept { *this = std::move(other); }

ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    documents_ = other.documents_;
    tokens_ = other.tokens_;
    vocab_size_ = other.vocab_size_;
    offsets_ = other.offsets_;
    token_ids_ = other.token_ids_;
    mask_ = other.mask_;
  }
  return *this;
}

void ShardReader::unmap() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  data_ = nullptr;
}

DocumentView ShardReader::document(int64_t i) const {
  DocumentView v;
  v.tokens = token_ids_ + offsets_[i];
  v.length = int64_t(offsets_[i + 1] - offsets_[i]);
  v.mask = mask_ ? mask_ + offsets_[i] : nullptr;
  return v;
}

}  // namespace adept
