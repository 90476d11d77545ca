#include "data/packed_loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "core/error.hpp"
#include "data/content_hash.hpp"

namespace adept {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A generator and bounded draw spelled out here (not std::uniform_int_distribution,
// whose algorithm differs between standard libraries), so an order is the same on every
// platform and a saved position stays valid.
class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_++ * 0x9E3779B97F4A7C15ull); }
  // Uniform in [0, n), by rejection.
  uint64_t below(uint64_t n) {
    uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    for (;;) {
      uint64_t x = next();
      if (x < limit) return x % n;
    }
  }

 private:
  uint64_t state_;
};

uint64_t document_hash(const DocumentView& d) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int64_t i = 0; i < d.length; ++i) h = (h ^ d.tokens[i]) * 0x100000001b3ull;
  return h;
}

// Copies tokens [offset, offset + n) of a document and their targets.
void write_segment(const DocumentView& d, int64_t offset, int64_t n, int32_t* tokens, int32_t* targets) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t j = offset + i;
    tokens[i] = int32_t(d.tokens[j]);
    bool counted = j + 1 < d.length && (d.mask == nullptr || d.mask[j + 1] != 0);
    targets[i] = counted ? int32_t(d.tokens[j + 1]) : kIgnoreIndex;
  }
}

void check_config(const LoaderConfig& c) {
  if (c.batch_size < 1 || c.seq_len < 1) fail("data loader: batch_size and seq_len must be positive");
  if (c.batch_size * c.seq_len > std::numeric_limits<int32_t>::max())
    fail("data loader: batch_size × seq_len = {} does not fit the 32-bit document offsets", c.batch_size * c.seq_len);
  if (!(c.holdout_fraction >= 0.0 && c.holdout_fraction < 1.0))
    fail("data loader: holdout_fraction must be in [0, 1), not {}", c.holdout_fraction);
}

TokenBatch empty_batch(const LoaderConfig& c) {
  TokenBatch b;
  b.B = c.batch_size;
  b.S = c.seq_len;
  b.tokens.assign(b.B * b.S, 0);
  b.targets.assign(b.B * b.S, kIgnoreIndex);
  b.documents.reserve(2 * b.B + 1);
  return b;
}

}  // namespace

DocumentSplit split_documents(const TokenDataset& data, double holdout_fraction, uint64_t split_seed) {
  DocumentSplit split;
  const int64_t n = data.documents();
  if (n == 0) fail("{}: the dataset has no documents", data.dir());
  if (holdout_fraction <= 0.0) {
    split.train.resize(n);
    for (int64_t i = 0; i < n; ++i) split.train[i] = i;
    return split;
  }
  const uint64_t salt = splitmix64(split_seed);
  std::vector<uint64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = splitmix64(document_hash(data.document(i)) ^ salt);
    double u = double(keys[i] >> 11) * 0x1.0p-53;
    (u < holdout_fraction ? split.holdout : split.train).push_back(i);
  }
  // A tiny corpus may draw all of its documents to one side: training needs one, and
  // evaluation needs one when there are two. The document moved is the one whose key is
  // nearest the other side.
  auto move_one = [&](std::vector<int64_t>& from, std::vector<int64_t>& to, bool lowest) {
    auto it = std::min_element(from.begin(), from.end(),
                               [&](int64_t a, int64_t b) { return lowest ? keys[a] < keys[b] : keys[a] > keys[b]; });
    to.insert(std::upper_bound(to.begin(), to.end(), *it), *it);
    from.erase(it);
  };
  if (split.train.empty()) move_one(split.holdout, split.train, false);
  if (split.holdout.empty() && n >= 2) move_one(split.train, split.holdout, true);
  return split;
}

nlohmann::json loader_state_to_json(const LoaderState& state) {
  nlohmann::json sources = nlohmann::json::array();
  for (const SourceCursor& c : state.sources)
    sources.push_back({{"epoch", c.epoch}, {"next", c.next}, {"offset", c.offset}, {"rows", c.rows}});
  return {{"batches", state.batches}, {"fingerprint", state.fingerprint}, {"sources", sources}};
}

LoaderState loader_state_from_json(const nlohmann::json& j) {
  try {
    LoaderState s;
    s.batches = j.at("batches").get<int64_t>();
    s.fingerprint = j.at("fingerprint").get<std::string>();
    for (const nlohmann::json& c : j.at("sources"))
      s.sources.push_back({c.at("epoch").get<int64_t>(), c.at("next").get<int64_t>(), c.at("offset").get<int64_t>(),
                           c.at("rows").get<int64_t>()});
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("malformed data loader state ({})", e.what());
  }
}

Batch batch_view(const TokenBatch& b) {
  return Batch{b.B, b.S, b.tokens.data(), b.targets.data(), b.documents.empty() ? nullptr : &b.documents};
}

PackedLoader::PackedLoader(std::vector<LoaderSource> sources, const LoaderConfig& config) : config_(config) {
  check_config(config);
  if (sources.empty()) fail("data loader: no sources");
  double total = 0.0;
  for (const LoaderSource& s : sources) {
    if (!s.data) fail("data loader: a source has no dataset");
    if (!(s.weight >= 0.0)) fail("{}: mixing weight {} is negative", s.data->dir(), s.weight);
    total += s.weight;
  }
  if (!(total > 0.0)) fail("data loader: the mixing weights add up to 0");
  Fnv1a64 fingerprint;
  for (LoaderSource& s : sources) {
    Stream st;
    st.share = s.weight / total;
    st.split = split_documents(*s.data, config.holdout_fraction, config.split_seed);
    fingerprint.update(s.data->manifest().fingerprint);
    for (const ShardEntry& e : s.data->manifest().shards) fingerprint.update(e.hash);
    fingerprint.update(fmt::format("|{}|", s.weight));
    st.data = std::move(s.data);
    streams_.push_back(std::move(st));
  }
  fingerprint.update(fmt::format("{}|{}|{}|{}|{}", config.batch_size, config.seq_len, config.seed,
                                 config.holdout_fraction, config.split_seed));
  state_.fingerprint = hash_string(fingerprint.value());
  state_.sources.resize(streams_.size());
}

std::vector<int64_t> PackedLoader::epoch_order(int64_t source, int64_t epoch) const {
  const Stream& st = streams_.at(source);
  std::vector<int64_t> order = st.split.train;
  SplitMix rng(splitmix64(config_.seed ^ splitmix64(uint64_t(source) ^ splitmix64(uint64_t(epoch)))));
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  return order;
}

int64_t PackedLoader::pick_source(int64_t rows_so_far) const {
  // The source furthest behind its share of the rows, counting the one being assigned.
  const double rows = double(rows_so_far) + 1.0;
  int64_t best = -1;
  double best_deficit = 0.0;
  for (size_t s = 0; s < streams_.size(); ++s) {
    if (streams_[s].share <= 0.0) continue;
    double deficit = streams_[s].share * rows - double(state_.sources[s].rows);
    if (best < 0 || deficit > best_deficit) best = int64_t(s), best_deficit = deficit;
  }
  return best;
}

void PackedLoader::fill_row(int64_t source, int64_t row, TokenBatch& b) {
  Stream& st = streams_[source];
  SourceCursor& c = state_.sources[source];
  const int64_t S = config_.seq_len;
  int64_t pos = 0;
  while (pos < S) {
    if (st.order_epoch != c.epoch) {
      st.order = epoch_order(source, c.epoch);
      st.order_epoch = c.epoch;
    }
    DocumentView d = st.data->document(st.order[c.next]);
    int64_t n = std::min(d.length - c.offset, S - pos);
    b.documents.push_back(int32_t(row * S + pos));
    write_segment(d, c.offset, n, &b.tokens[row * S + pos], &b.targets[row * S + pos]);
    pos += n;
    c.offset += n;
    if (c.offset == d.length) {
      c.offset = 0;
      if (++c.next == int64_t(st.order.size())) c.next = 0, ++c.epoch;
    }
  }
  ++c.rows;
}

TokenBatch PackedLoader::next_batch(std::vector<int32_t>* row_sources) {
  TokenBatch b = empty_batch(config_);
  if (row_sources) row_sources->assign(b.B, -1);
  const int64_t rows_before = state_.batches * config_.batch_size;
  for (int64_t r = 0; r < b.B; ++r) {
    int64_t best = pick_source(rows_before + r);
    fill_row(best, r, b);
    if (row_sources) (*row_sources)[r] = int32_t(best);
  }
  b.documents.push_back(int32_t(b.B * b.S));
  ++state_.batches;
  return b;
}

void PackedLoader::restore(const LoaderState& state) {
  if (state.fingerprint != state_.fingerprint)
    fail("data loader: the saved position ({}) belongs to other data or settings than these ({})", state.fingerprint,
         state_.fingerprint);
  if (state.sources.size() != streams_.size())
    fail("data loader: the saved position has {} sources, the loader {}", state.sources.size(), streams_.size());
  int64_t rows = 0;
  for (size_t s = 0; s < streams_.size(); ++s) {
    const SourceCursor& c = state.sources[s];
    const int64_t docs = int64_t(streams_[s].split.train.size());
    if (c.epoch < 0 || c.next < 0 || c.next >= docs || c.offset < 0 || c.rows < 0)
      fail("data loader: the saved position of source {} is out of range", s);
    int64_t length = streams_[s].data->document(epoch_order(int64_t(s), c.epoch)[c.next]).length;
    if (c.offset >= length) fail("data loader: the saved position of source {} is past its document's end", s);
    rows += c.rows;
  }
  if (state.batches < 0 || rows != state.batches * config_.batch_size)
    fail("data loader: the saved position counts {} rows in {} batches of {}", rows, state.batches,
         config_.batch_size);
  state_ = state;
  for (Stream& st : streams_) st.order_epoch = -1;
}

HeldOutSet::HeldOutSet(std::shared_ptr<const TokenDataset> data, const LoaderConfig& config, bool every_document)
    : data_(std::move(data)), config_(config), first_token_{0} {
  check_config(config);
  if (every_document) {
    if (data_->documents() == 0) fail("{}: the dataset has no documents", data_->dir());
    for (int64_t d = 0; d < data_->documents(); ++d) documents_.push_back(d);
  } else {
    documents_ = split_documents(*data_, config.holdout_fraction, config.split_seed).holdout;
  }
  for (int64_t d : documents_) first_token_.push_back(first_token_.back() + data_->document(d).length);
}

int64_t HeldOutSet::batch_count() const {
  const int64_t per_batch = config_.batch_size * config_.seq_len;
  return (tokens() + per_batch - 1) / per_batch;
}

TokenBatch HeldOutSet::batch(int64_t k) const {
  TokenBatch b = empty_batch(config_);
  const int64_t S = config_.seq_len;
  for (int64_t r = 0; r < b.B; ++r) {
    int64_t pos = 0, at = (k * b.B + r) * S;  // position in the held-out stream
    while (pos < S) {
      b.documents.push_back(int32_t(r * S + pos));
      if (at >= tokens()) break;  // padding: tokens 0, targets ignored, one segment
      size_t i = size_t(std::upper_bound(first_token_.begin(), first_token_.end(), at) - first_token_.begin()) - 1;
      DocumentView d = data_->document(documents_[i]);
      int64_t offset = at - first_token_[i];
      int64_t n = std::min(d.length - offset, S - pos);
      write_segment(d, offset, n, &b.tokens[r * S + pos], &b.targets[r * S + pos]);
      pos += n;
      at += n;
    }
  }
  b.documents.push_back(int32_t(b.B * b.S));
  return b;
}

}  // namespace adept
