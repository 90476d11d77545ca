// `adept data prepare`: corpus files to token shards and a manifest.
//
// A reader thread cuts the inputs into chunks of records, worker threads validate and
// tokenize them, and the calling thread writes the results in input order — so the
// shards are the same whatever the thread count. Bad input is counted per file and
// reported (see InputIssue), never fatal. When the manifest in the output directory has
// the same fingerprint (options, tokenizer, every input's content hash) and its shards
// are all there, nothing is redone.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "data/input_reader.hpp"
#include "data/manifest.hpp"

namespace adept {

// What preparation needs of a tokenizer. encode is called from several threads at once.
struct PrepareTokenizer {
  std::function<std::vector<int32_t>(std::string_view text)> encode;
  TokenizerIdentity identity;
};

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  InputFormat format = InputFormat::Text;
  TextSplit split = TextSplit::File;
  std::string text_field = "text";
  std::string prompt_field = "prompt";
  std::string response_field = "response";
  // Instruction layout; the part before {response} is masked out of the loss.
  std::string instruct_template = "User: {prompt}\nAssistant: {response}";
  bool add_bos = false;  // when the tokenizer has one
  bool add_eos = true;   // when the tokenizer has one: lets the model learn where text ends
  bool skip_invalid_utf8 = false;  // false: repair (U+FFFD), true: skip the record
  int64_t max_record_bytes = int64_t(64) << 20;
  int64_t shard_tokens = int64_t(16) << 20;
  int64_t chunk_bytes = int64_t(1) << 20;  // work unit handed to a thread
  // Execution only (not part of the fingerprint):
  int threads = 0;  // 0: every hardware thread
  bool show_progress = true;
  bool force = false;  // redo even when up to date
};

struct PrepareResult {
  bool up_to_date = false;  // nothing was redone
  Manifest manifest;
  double seconds = 0.0;
};

PrepareResult prepare_dataset(const PrepareOptions& options, const PrepareTokenizer& tokenizer);

// The options that shape the output, as stored in the manifest.
nlohmann::json prepare_options_json(const PrepareOptions& options);

// One line per input (documents, tokens, each kind of bad input with its first line)
// and a total line.
std::string prepare_report(const Manifest& manifest);

}  // namespace adept
