#include "data/prepare.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/content_hash.hpp"
#include "data/shard_writer.hpp"
#include "data/utf8.hpp"
#include "train/progress.hpp"

namespace adept {

namespace fs = std::filesystem;
using Issues = std::array<IssueTally, kInputIssueCount>;

namespace {

// A run of records of one input file: the unit of work of one thread.
struct Chunk {
  int64_t seq = 0;
  int source = 0;
  std::vector<std::pair<int64_t, std::string>> records;  // (line, text)
  Issues issues{};      // found while reading (oversized records)
  int64_t skipped = 0;  // records dropped while reading
  int64_t bytes = 0;    // input bytes this chunk accounts for (progress)
  std::optional<FileScan> end_of_file;
};

struct ChunkResult {
  int64_t seq = 0;
  int source = 0;
  std::vector<uint32_t> tokens;
  bool has_mask = false;          // false: every token is a target, mask stays empty
  std::vector<uint8_t> mask;      // with has_mask, one entry per token
  std::vector<int64_t> doc_ends;  // offsets into tokens
  Issues issues{};
  int64_t records = 0;
  int64_t bytes = 0;
  std::optional<FileScan> end_of_file;
};

struct InstructTemplate {
  std::string before_prompt, between, after_response;
};

InstructTemplate parse_template(const std::string& t) {
  const std::string P = "{prompt}", R = "{response}";
  size_t p = t.find(P), r = t.find(R);
  if (r == std::string::npos || t.find(R, r + 1) != std::string::npos)
    fail("instruction template \"{}\" must contain {{response}} exactly once", t);
  if (p == std::string::npos || t.find(P, p + 1) != std::string::npos || p > r)
    fail("instruction template \"{}\" must contain {{prompt}} exactly once, before {{response}}", t);
  return {t.substr(0, p), t.substr(p + P.size(), r - p - P.size()), t.substr(r + R.size())};
}

bool is_white_space_only(std::string_view text) {
  for (char c : text)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}

// Turns one chunk of records into token documents (runs on a worker thread).
class ChunkTokenizer {
 public:
  ChunkTokenizer(const PrepareOptions& o, const PrepareTokenizer& t)
      : options_(o), tokenizer_(t), template_(o.format == InputFormat::Instruct ? parse_template(o.instruct_template)
                                                                                : InstructTemplate{}) {}

  ChunkResult run(Chunk& chunk) const {
    ChunkResult r;
    r.seq = chunk.seq;
    r.source = chunk.source;
    r.issues = chunk.issues;
    r.records = int64_t(chunk.records.size()) + chunk.skipped;
    r.bytes = chunk.bytes;
    r.end_of_file = chunk.end_of_file;
    try {
      for (auto& [line, text] : chunk.records) one_record(line, text, r);
    } catch (const Error& e) {
      fail("{}: {}", options_.inputs[chunk.source], e.what());
    }
    return r;
  }

 private:
  void one_record(int64_t line, std::string& text, ChunkResult& r) const {
    if (!is_valid_utf8(text)) {
      r.issues[int(InputIssue::InvalidUtf8)].add(line);
      if (options_.skip_invalid_utf8) return;
      text = repair_utf8(text);
    }
    if (options_.format == InputFormat::Text) {
      if (is_white_space_only(text)) return r.issues[int(InputIssue::EmptyDocument)].add(line);
      return add_document(r, line, "", text);
    }
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return r.issues[int(InputIssue::BadJson)].add(line);
    auto field = [&](const std::string& name, std::string& out) {
      auto it = j.find(name);
      if (it == j.end()) return r.issues[int(InputIssue::MissingField)].add(line), false;
      if (!it->is_string()) return r.issues[int(InputIssue::FieldNotString)].add(line), false;
      out = it->get<std::string>();
      return true;
    };
    if (options_.format == InputFormat::Jsonl) {
      std::string body;
      if (!field(options_.text_field, body)) return;
      if (is_white_space_only(body)) return r.issues[int(InputIssue::EmptyDocument)].add(line);
      return add_document(r, line, "", body);
    }
    std::string prompt, response;
    if (!field(options_.prompt_field, prompt) || !field(options_.response_field, response)) return;
    if (is_white_space_only(response)) return r.issues[int(InputIssue::EmptyDocument)].add(line);
    add_document(r, line, template_.before_prompt + prompt + template_.between, response + template_.after_response);
  }

  // context: tokens that are not targets (an instruction's prompt); body: targets.
  void add_document(ChunkResult& r, int64_t line, const std::string& context, const std::string& body) const {
    const TokenizerIdentity& id = tokenizer_.identity;
    const size_t start = r.tokens.size();
    auto append = [&](int32_t token, uint8_t target) {
      if (token < 0 || token >= id.vocab_size)
        fail("tokenizer returned id {} outside its vocabulary of {} (line {})", token, id.vocab_size, line);
      if (!target && !r.has_mask) r.mask.assign(r.tokens.size(), 1), r.has_mask = true;
      r.tokens.push_back(uint32_t(token));
      if (r.has_mask) r.mask.push_back(target);
    };
    // BOS is never predicted (nothing precedes it), so its mask entry does not matter;
    // 1 keeps plain-text shards free of a mask.
    if (options_.add_bos && id.bos_id >= 0) append(id.bos_id, 1);
    if (!context.empty())
      for (int32_t t : tokenizer_.encode(context)) append(t, 0);
    const size_t body_start = r.tokens.size();
    for (int32_t t : tokenizer_.encode(body)) append(t, 1);
    if (r.tokens.size() == body_start) {  // nothing to learn from
      r.tokens.resize(start);
      if (r.has_mask) r.mask.resize(start);
      return r.issues[int(InputIssue::EmptyDocument)].add(line);
    }
    if (options_.add_eos && id.eos_id >= 0) append(id.eos_id, 1);
    r.doc_ends.push_back(int64_t(r.tokens.size()));
  }

  const PrepareOptions& options_;
  const PrepareTokenizer& tokenizer_;
  InstructTemplate template_;
};

std::string normal_path(const std::string& p) { return fs::absolute(fs::path(p)).lexically_normal().string(); }

std::string fingerprint_of(const nlohmann::json& options, const TokenizerIdentity& t,
                           const std::vector<std::string>& paths, const std::vector<std::string>& hashes) {
  Fnv1a64 h;
  h.update(options.dump());
  h.update(fmt::format("|{}|{}|{}|{}|{}|{}|", t.kind, t.path, t.hash, t.vocab_size, t.bos_id, t.eos_id));
  for (size_t i = 0; i < paths.size(); ++i) h.update(paths[i] + "|" + hashes[i] + "|");
  return hash_string(h.value());
}

bool shards_present(const std::string& dir, const Manifest& m) {
  for (const ShardEntry& e : m.shards) {
    std::error_code ec;
    auto size = fs::file_size(fs::path(dir) / e.file, ec);
    if (ec || int64_t(size) != e.bytes) return false;
  }
  return true;
}

// The pipeline proper: reader thread -> worker threads -> this thread writing in order.
class Pipeline {
 public:
  Pipeline(const PrepareOptions& o, const PrepareTokenizer& t, Manifest& m, const std::vector<std::string>& hashes)
      : options_(o), manifest_(m), hashes_(hashes), tokenizer_(o, t) {}

  void run(int threads, int64_t total_bytes) {
    std::optional<ProgressBar> bar;
    if (options_.show_progress) bar.emplace("prepare", total_bytes);
    ShardWriter writer(options_.out_dir, uint32_t(manifest_.tokenizer.vocab_size), options_.shard_tokens);
    std::vector<std::thread> pool;
    pool.emplace_back([this] { guarded([this] { read_all(); }); });
    for (int i = 0; i < threads; ++i) pool.emplace_back([this] { guarded([this] { work(); }); });
    int64_t done_bytes = 0;
    try {
      for (int64_t seq = 0;; ++seq) {
        std::optional<ChunkResult> r = take_result(seq);
        if (!r) break;
        write(*r, writer);
        done_bytes += r->bytes;
        if (bar)
          bar->update(done_bytes, fmt::format("{} docs, {} tokens, {:.1f} MB/s", manifest_.documents, manifest_.tokens,
                                              double(done_bytes) / 1e6 / std::max(bar->elapsed_seconds(), 1e-9)));
      }
    } catch (...) {
      stop_with(std::current_exception());
    }
    for (std::thread& t : pool) t.join();
    if (error_) std::rethrow_exception(error_);
    manifest_.shards = writer.finish();
    if (bar)
      bar->finish(fmt::format("{} docs, {} tokens, {} shards", manifest_.documents, manifest_.tokens,
                              manifest_.shards.size()));
  }

 private:
  template <typename F>
  void guarded(F f) {
    try {
      f();
    } catch (...) {
      stop_with(std::current_exception());
    }
  }

  void stop_with(std::exception_ptr e) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = e;
    stopping_ = true;
    changed_.notify_all();
  }

  // Reader: blocks while too many chunks are read but not yet written.
  void push(Chunk&& c) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stopping_ || in_flight_ < max_in_flight_; });
    if (stopping_) throw Stopped{};
    ++in_flight_;
    todo_.push_back(std::move(c));
    changed_.notify_all();
  }

  void read_all() {
    int64_t seq = 0;
    try {
      for (size_t i = 0; i < options_.inputs.size(); ++i) {
        Chunk cur;
        cur.seq = seq++;
        cur.source = int(i);
        auto flush = [&] {
          Chunk next;
          next.seq = seq++;
          next.source = int(i);
          push(std::exchange(cur, std::move(next)));
        };
        int64_t accounted = 0;
        RecordCallbacks cb;
        cb.record = [&](int64_t line, std::string&& text) {
          cur.bytes += int64_t(text.size()) + 1;
          accounted += int64_t(text.size()) + 1;
          cur.records.emplace_back(line, std::move(text));
          if (cur.bytes >= options_.chunk_bytes) flush();
        };
        cb.issue = [&](InputIssue issue, int64_t line) {
          cur.issues[int(issue)].add(line);
          ++cur.skipped;
        };
        FileScan scan = read_records(options_.inputs[i], options_.format, options_.split, options_.max_record_bytes, cb);
        cur.bytes += std::max<int64_t>(0, scan.bytes - accounted);
        cur.end_of_file = scan;
        push(std::move(cur));
      }
    } catch (const Stopped&) {
      return;
    }
    std::lock_guard lock(mutex_);
    reading_done_ = true;
    total_chunks_ = seq;
    changed_.notify_all();
  }

  void work() {
    for (;;) {
      Chunk c;
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || !todo_.empty() || reading_done_; });
        if (stopping_ || todo_.empty()) return;
        c = std::move(todo_.front());
        todo_.pop_front();
      }
      ChunkResult r = tokenizer_.run(c);
      std::lock_guard lock(mutex_);
      results_.emplace(r.seq, std::move(r));
      changed_.notify_all();
    }
  }

  std::optional<ChunkResult> take_result(int64_t seq) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stopping_ || results_.count(seq) || (reading_done_ && seq >= total_chunks_); });
    if (stopping_) throw Stopped{};
    auto it = results_.find(seq);
    if (it == results_.end()) return std::nullopt;
    ChunkResult r = std::move(it->second);
    results_.erase(it);
    --in_flight_;
    changed_.notify_all();
    return r;
  }

  void write(const ChunkResult& r, ShardWriter& writer) {
    SourceReport& s = manifest_.sources[r.source];
    int64_t begin = 0;
    for (int64_t end : r.doc_ends) {
      std::span<const uint32_t> tokens(r.tokens.data() + begin, size_t(end - begin));
      std::span<const uint8_t> mask;
      // Loss terms: every token but the first is predicted, unless masked out.
      int64_t targets = end - begin - 1;
      if (r.has_mask) {
        mask = std::span<const uint8_t>(r.mask.data() + begin, size_t(end - begin));
        targets = std::count(mask.begin() + 1, mask.end(), uint8_t(1));
      }
      writer.add_document(tokens, mask);
      ++s.documents;
      s.tokens += end - begin;
      s.target_tokens += targets;
      ++manifest_.documents;
      manifest_.tokens += end - begin;
      manifest_.target_tokens += targets;
      begin = end;
    }
    s.records += r.records;
    for (int i = 0; i < kInputIssueCount; ++i) s.issues[i].merge(r.issues[i]);
    if (r.end_of_file) {
      s.bytes = r.end_of_file->bytes;
      s.hash = r.end_of_file->hash;
      if (s.hash != hashes_[r.source]) fail("{}: the file changed while it was being prepared", s.path);
    }
  }

  struct Stopped {};

  const PrepareOptions& options_;
  Manifest& manifest_;
  const std::vector<std::string>& hashes_;
  ChunkTokenizer tokenizer_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Chunk> todo_;
  std::map<int64_t, ChunkResult> results_;
  int64_t in_flight_ = 0;
  const int64_t max_in_flight_ = 16;
  bool reading_done_ = false, stopping_ = false;
  int64_t total_chunks_ = 0;
  std::exception_ptr error_;
};

}  // namespace

nlohmann::json prepare_options_json(const PrepareOptions& o) {
  nlohmann::json j = {{"format", format_name(o.format)},
                      {"add_bos", o.add_bos},
                      {"add_eos", o.add_eos},
                      {"invalid_utf8", o.skip_invalid_utf8 ? "skip" : "replace"},
                      {"max_record_bytes", o.max_record_bytes},
                      {"shard_tokens", o.shard_tokens}};
  switch (o.format) {
    case InputFormat::Text: j["split"] = split_name(o.split); break;
    case InputFormat::Jsonl: j["text_field"] = o.text_field; break;
    case InputFormat::Instruct:
      j["prompt_field"] = o.prompt_field;
      j["response_field"] = o.response_field;
      j["template"] = o.instruct_template;
      break;
  }
  return j;
}

PrepareResult prepare_dataset(const PrepareOptions& options, const PrepareTokenizer& tokenizer) {
  auto t0 = std::chrono::steady_clock::now();
  if (options.inputs.empty()) fail("data prepare: no input files");
  if (options.out_dir.empty()) fail("data prepare: no output directory");
  if (options.max_record_bytes < 1 || options.shard_tokens < 1 || options.chunk_bytes < 1)
    fail("data prepare: max_record_bytes, shard_tokens and chunk_bytes must be positive");
  const TokenizerIdentity& tid = tokenizer.identity;
  if (tid.vocab_size < 1 || tid.vocab_size > int64_t(UINT32_MAX))
    fail("data prepare: tokenizer vocabulary of {} does not fit uint32 token ids", tid.vocab_size);
  if (options.format == InputFormat::Instruct) parse_template(options.instruct_template);

  Manifest m;
  m.tokenizer = tid;
  m.options = prepare_options_json(options);
  std::vector<std::string> paths, hashes;
  int64_t total_bytes = 0;
  for (const std::string& input : options.inputs) {
    std::error_code ec;
    if (!fs::is_regular_file(input, ec)) fail("{}: no such input file", input);
    paths.push_back(normal_path(input));
    hashes.push_back(hash_file(input));
    total_bytes += int64_t(fs::file_size(input));
  }
  m.fingerprint = fingerprint_of(m.options, tid, paths, hashes);

  PrepareResult result;
  std::optional<Manifest> old;
  if (fs::exists(fs::path(options.out_dir) / kManifestFile)) {
    try {
      old = read_manifest(options.out_dir);
    } catch (const Error&) {
      // A damaged manifest is simply replaced.
    }
  }
  if (old && !options.force && old->fingerprint == m.fingerprint && shards_present(options.out_dir, *old)) {
    result.up_to_date = true;
    result.manifest = std::move(*old);
    return result;
  }

  make_directories(options.out_dir);
  // From here on the old shards are overwritten: no manifest may point at them.
  fs::remove(fs::path(options.out_dir) / kManifestFile);
  for (size_t i = 0; i < paths.size(); ++i) {
    SourceReport s;
    s.path = paths[i];
    s.format = format_name(options.format);
    m.sources.push_back(std::move(s));
  }
  int threads = options.threads > 0 ? options.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  Pipeline(options, tokenizer, m, hashes).run(threads, total_bytes);
  write_manifest(options.out_dir, m);
  if (old)
    for (const ShardEntry& e : old->shards)
      if (std::none_of(m.shards.begin(), m.shards.end(), [&](const ShardEntry& n) { return n.file == e.file; }))
        fs::remove(fs::path(options.out_dir) / e.file);

  result.manifest = std::move(m);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

std::string prepare_report(const Manifest& m) {
  std::string out;
  for (const SourceReport& s : m.sources) {
    out += fmt::format("{}: {} documents, {} tokens ({} targets) from {} records, {} bytes\n", s.path, s.documents,
                       s.tokens, s.target_tokens, s.records, s.bytes);
    for (int i = 0; i < kInputIssueCount; ++i) {
      const IssueTally& t = s.issues[i];
      if (t.count == 0) continue;
      InputIssue issue = InputIssue(i);
      const char* action = issue == InputIssue::InvalidUtf8 && m.options.value("invalid_utf8", "") == "replace"
                               ? "repaired with U+FFFD"
                               : "skipped";
      out += fmt::format("  {}: {} {} ({}), first at line {}\n", issue_name(issue), t.count, issue_description(issue),
                         action, t.first_line);
    }
    if (s.documents == 0 && s.issue_total() == 0) out += "  no documents in this file\n";
  }
  int64_t issues = 0;
  for (const SourceReport& s : m.sources) issues += s.issue_total();
  out += fmt::format("total: {} documents, {} tokens ({} targets) in {} shards; {} records with bad input\n",
                     m.documents, m.tokens, m.target_tokens, m.shards.size(), issues);
  return out;
}

}  // namespace adept
