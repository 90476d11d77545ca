// Training batches packed from prepared datasets.
//
// Each source's training documents are read in a seeded random order (a new one every
// epoch) as one stream, which is cut into rows of S tokens. A document that does not
// fit in the rest of a row goes on at the start of the next row of the same source.
// Every document piece in a row is its own entry in TokenBatch::documents, so that no
// token attends across documents and positions restart per document. A token's target
// is the next token of its own document — also across a row break, where that token is
// known — and kIgnoreIndex at the end of a document (the next token belongs to another
// one) and where the next token is masked out of the loss (an instruction's prompt).
//
// Several sources are mixed by weight, row by row: each row goes to the source furthest
// behind its share, so after n rows every source has its share of rows within one row.
//
// A fixed fraction of each dataset's documents is held out, chosen by a hash of the
// document's tokens and the split seed (not the training seed), so every run of a study
// evaluates on the same documents and duplicates of one document fall on one side.
//
// The loader's position is a small struct (LoaderState); restoring it continues with
// exactly the batches an uninterrupted run would have drawn.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/token_batch.hpp"
#include "data/token_dataset.hpp"
#include "model/decoder.hpp"

namespace adept {

struct LoaderConfig {
  int64_t batch_size = 8;         // B rows per batch
  int64_t seq_len = 64;           // S tokens per row
  uint64_t seed = 1234;           // the order of training documents
  double holdout_fraction = 0.0;  // of each dataset's documents, in [0, 1)
  uint64_t split_seed = 0;        // which documents are held out
};

struct LoaderSource {
  std::shared_ptr<const TokenDataset> data;
  double weight = 1.0;  // share of rows, relative to the other sources' weights
};

struct DocumentSplit {
  std::vector<int64_t> train, holdout;  // document indices, ascending
};

// At least one document always stays for training, and at least one is held out when the
// fraction is positive and there are two or more. Throws adept::Error for a dataset
// without documents.
DocumentSplit split_documents(const TokenDataset& data, double holdout_fraction, uint64_t split_seed);

struct SourceCursor {
  int64_t epoch = 0;
  int64_t next = 0;    // position in this epoch's order of the document being read
  int64_t offset = 0;  // tokens of that document already used
  int64_t rows = 0;    // rows this source has filled
};

struct LoaderState {
  int64_t batches = 0;
  std::vector<SourceCursor> sources;
  std::string fingerprint;  // of the data and the settings the state belongs to
};

nlohmann::json loader_state_to_json(const LoaderState& state);
LoaderState loader_state_from_json(const nlohmann::json& j);  // throws adept::Error when malformed

// Views a TokenBatch as the decoder's Batch (documents included when present).
Batch batch_view(const TokenBatch& batch);

class PackedLoader {
 public:
  PackedLoader(std::vector<LoaderSource> sources, const LoaderConfig& config);

  // The next B×S batch. row_sources, if given, receives each row's source index.
  TokenBatch next_batch(std::vector<int32_t>* row_sources = nullptr);

  const LoaderState& state() const { return state_; }
  // Continues from a saved state; throws adept::Error when it belongs to other data or
  // settings.
  void restore(const LoaderState& state);

  int64_t sources() const { return int64_t(streams_.size()); }
  const DocumentSplit& split(int64_t source) const { return streams_.at(source).split; }
  // The training documents of `source` in the order epoch `epoch` reads them.
  std::vector<int64_t> epoch_order(int64_t source, int64_t epoch) const;

 private:
  struct Stream {
    std::shared_ptr<const TokenDataset> data;
    double share = 0.0;  // normalised weight
    DocumentSplit split;
    std::vector<int64_t> order;  // epoch order_epoch's reading order
    int64_t order_epoch = -1;
  };
  int64_t pick_source(int64_t rows_so_far) const;
  void fill_row(int64_t source, int64_t row, TokenBatch& batch);

  LoaderConfig config_;
  std::vector<Stream> streams_;
  LoaderState state_;
};

// A dataset's held-out documents, packed in index order into rows of S tokens (the same
// split as a PackedLoader with the same config). batch(k) for k < batch_count() covers
// every held-out token once; rows past the end are padding whose targets are ignored.
class HeldOutSet {
 public:
  // every_document: all of the dataset's documents, not only the held-out split (a
  // corpus that is evaluation text as a whole).
  HeldOutSet(std::shared_ptr<const TokenDataset> data, const LoaderConfig& config, bool every_document = false);

  int64_t documents() const { return int64_t(documents_.size()); }
  int64_t tokens() const { return first_token_.back(); }
  int64_t batch_count() const;
  TokenBatch batch(int64_t k) const;

 private:
  std::shared_ptr<const TokenDataset> data_;
  LoaderConfig config_;
  std::vector<int64_t> documents_;
  std::vector<int64_t> first_token_;  // prefix sums of the held-out documents' lengths
};

}  // namespace adept
