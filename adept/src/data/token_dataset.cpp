#include "data/token_dataset.hpp"

#include <algorithm>
#include <filesystem>

#include "core/error.hpp"
#include "data/content_hash.hpp"

namespace adept {

TokenDataset::TokenDataset(const std::string& dir, bool verify_hashes)
    : dir_(dir), manifest_(read_manifest(dir)), first_document_{0} {
  const std::string manifest_path = (std::filesystem::path(dir) / kManifestFile).string();
  int64_t documents = 0, tokens = 0;
  for (const ShardEntry& e : manifest_.shards) {
    std::string path = (std::filesystem::path(dir) / e.file).string();
    if (!std::filesystem::exists(path)) fail("{}: shard listed in {} is missing", path, manifest_path);
    ShardReader shard(path);
    if (shard.file_bytes() != e.bytes)
      fail("{}: shard has {} bytes, the manifest {} says {}", path, shard.file_bytes(), manifest_path, e.bytes);
    if (shard.documents() != e.documents || shard.tokens() != e.tokens)
      fail("{}: shard holds {} documents and {} tokens, the manifest {} says {} and {}", path, shard.documents(),
           shard.tokens(), manifest_path, e.documents, e.tokens);
    if (int64_t(shard.vocab_size()) != manifest_.tokenizer.vocab_size)
      fail("{}: shard was written for a vocabulary of {}, the manifest {} names a tokenizer of {}", path,
           shard.vocab_size(), manifest_path, manifest_.tokenizer.vocab_size);
    if (verify_hashes) {
      std::string h = hash_file(path);
      if (h != e.hash) fail("{}: content hash {} differs from the manifest's {} ({})", path, h, e.hash, manifest_path);
    }
    documents += shard.documents();
    tokens += shard.tokens();
    first_document_.push_back(documents);
    shards_.push_back(std::move(shard));
  }
  if (documents != manifest_.documents || tokens != manifest_.tokens)
    fail("{}: the manifest totals {} documents and {} tokens, its shards hold {} and {}", manifest_path,
         manifest_.documents, manifest_.tokens, documents, tokens);
}

DocumentView TokenDataset::document(int64_t i) const {
  auto it = std::upper_bound(first_document_.begin(), first_document_.end(), i);
  size_t shard = size_t(it - first_document_.begin()) - 1;
  return shards_[shard].document(i - first_document_[shard]);
}

}  // namespace adept
