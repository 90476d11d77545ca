// tokenize-bench: tokenization throughput of adept's tokenizers on a JSONL corpus (one
// {"text": ...} per line), the way `adept data prepare` uses them: documents spread over
// T threads. Two numbers:
//   encode   in-memory texts -> ids on T threads (what tokenizers' encode_batch does)
//   prepare  the whole `adept data prepare` run on the file: reading, UTF-8 checks, JSON,
//            tokenizing, shards and manifest written
// With --expect-ids/--expect-lengths (written by bench/tokenize_peer.py from Hugging
// Face tokenizers) it also checks that every document gets exactly the same ids.
// The last line of output is one JSON object for tokenize_peer.py.
//
//   tokenize-bench --tokenizer PATH --corpus FILE.jsonl [--threads T] [--repeat N]
//                  [--expect-ids FILE --expect-lengths FILE] [--prepare-out DIR]
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "data/prepare.hpp"
#include "data/tokenizer_source.hpp"

namespace {

using namespace adept;
using Clock = std::chrono::steady_clock;

struct Args {
  std::string tokenizer, corpus, expect_ids, expect_lengths, prepare_out;
  int threads = 2, repeat = 3;
};

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: tokenize-bench --tokenizer PATH --corpus FILE.jsonl [--threads T] [--repeat N]\n"
               "                      [--expect-ids FILE --expect-lengths FILE] [--prepare-out DIR]\n");
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (s == "--tokenizer") a.tokenizer = next();
    else if (s == "--corpus") a.corpus = next();
    else if (s == "--threads") a.threads = std::stoi(next());
    else if (s == "--repeat") a.repeat = std::stoi(next());
    else if (s == "--expect-ids") a.expect_ids = next();
    else if (s == "--expect-lengths") a.expect_lengths = next();
    else if (s == "--prepare-out") a.prepare_out = next();
    else usage();
  }
  if (a.tokenizer.empty() || a.corpus.empty() || a.threads < 1 || a.repeat < 1) usage();
  return a;
}

std::vector<std::string> read_texts(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::vector<std::string> texts;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  }
  return texts;
}

std::vector<uint32_t> read_u32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<uint32_t> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

// Encodes every text on `threads` threads (documents handed out one at a time, so long
// ones do not leave a thread idle); returns the seconds taken.
double encode_all(const Tokenizer& tok, const std::vector<std::string>& texts, int threads,
                  std::vector<std::vector<int32_t>>& ids) {
  ids.assign(texts.size(), {});
  std::atomic<size_t> next{0};
  auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < texts.size();) ids[i] = tok.encode(texts[i]);
    });
  for (std::thread& t : pool) t.join();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse(argc, argv);
    NamedTokenizer named = load_named_tokenizer(a.tokenizer);
    std::vector<std::string> texts = read_texts(a.corpus);
    int64_t bytes = 0;
    for (const std::string& t : texts) bytes += int64_t(t.size());
    fmt::print("corpus    {}: {} documents, {:.1f} MB\n", a.corpus, texts.size(), double(bytes) / 1e6);
    fmt::print("tokenizer {} ({}), vocab {}\n", a.tokenizer, named.identity.kind, named.identity.vocab_size);

    std::vector<std::vector<int32_t>> ids;
    double best = 1e30;
    for (int r = 0; r < a.repeat; ++r) best = std::min(best, encode_all(*named.tokenizer, texts, a.threads, ids));
    int64_t tokens = 0;
    for (const auto& v : ids) tokens += int64_t(v.size());
    fmt::print("encode    {} threads: {} tokens in {:.3f}s (best of {}): {:.0f} tokens/s, {:.1f} MB/s\n", a.threads,
               tokens, best, a.repeat, double(tokens) / best, double(bytes) / 1e6 / best);

    nlohmann::json out = {{"documents", texts.size()},  {"bytes", bytes},
                          {"tokens", tokens},           {"threads", a.threads},
                          {"encode_seconds", best},     {"encode_tokens_per_s", double(tokens) / best}};

    if (!a.expect_ids.empty()) {
      std::vector<uint32_t> expect = read_u32(a.expect_ids), lengths = read_u32(a.expect_lengths);
      int64_t mismatched = 0, first = -1;
      size_t at = 0;
      if (lengths.size() != ids.size()) fail("{} documents in {}, {} in the corpus", lengths.size(), a.expect_lengths, ids.size());
      for (size_t d = 0; d < ids.size(); ++d) {
        bool same = lengths[d] == ids[d].size() && at + lengths[d] <= expect.size() &&
                    std::equal(ids[d].begin(), ids[d].end(), expect.begin() + int64_t(at),
                               [](int32_t x, uint32_t y) { return uint32_t(x) == y; });
        if (!same && first < 0) first = int64_t(d);
        mismatched += !same;
        at += lengths[d];
      }
      fmt::print("ids       {} of {} documents differ from the reference{}\n", mismatched, ids.size(),
                 first >= 0 ? fmt::format(" (first: document {})", first) : "");
      out["mismatched_documents"] = mismatched;
    }

    if (!a.prepare_out.empty()) {
      PrepareOptions o;
      o.inputs = {a.corpus};
      o.out_dir = a.prepare_out;
      o.format = InputFormat::Jsonl;
      o.add_eos = false;
      o.threads = a.threads;
      o.force = true;
      o.show_progress = false;
      double best_prepare = 1e30;
      int64_t prepared = 0;
      for (int r = 0; r < a.repeat; ++r) {
        PrepareResult pr = prepare_dataset(o, prepare_tokenizer(named));
        best_prepare = std::min(best_prepare, pr.seconds);
        prepared = pr.manifest.tokens;
      }
      fmt::print("prepare   {} threads: {} tokens in {:.3f}s (best of {}): {:.0f} tokens/s, file to shards\n",
                 a.threads, prepared, best_prepare, a.repeat, double(prepared) / best_prepare);
      out["prepare_seconds"] = best_prepare;
      out["prepare_tokens_per_s"] = double(prepared) / best_prepare;
    }
    fmt::print("{}\n", out.dump());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenize-bench: %s\n", e.what());
    return 1;
  }
}
