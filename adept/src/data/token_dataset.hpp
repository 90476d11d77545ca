// A prepared dataset opened for reading: its manifest and every shard it lists, mapped
// and checked against each other (counts, sizes, vocabulary; content hashes on request),
// so a truncated shard or a manifest that disagrees with its shards is an adept::Error
// naming the file, never a crash mid-training.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/manifest.hpp"
#include "data/token_shard.hpp"

namespace adept {

class TokenDataset {
 public:
  // verify_hashes also rehashes every shard (a full read) and compares with the manifest.
  explicit TokenDataset(const std::string& dir, bool verify_hashes = false);

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  int64_t documents() const { return first_document_.back(); }
  int64_t tokens() const { return manifest_.tokens; }
  DocumentView document(int64_t i) const;  // 0 <= i < documents(), across shards in order

 private:
  std::string dir_;
  Manifest manifest_;
  std::vector<ShardReader> shards_;
  std::vector<int64_t> first_document_;  // [shards + 1]: prefix sums of documents
};

}  // namespace adept
