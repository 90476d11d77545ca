// `adept data prepare` — corpus files to token shards and a manifest (see data/prepare.hpp)
// `adept data verify`  — a prepared dataset checked against its manifest, hashes included
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "data/prepare.hpp"
#include "data/token_dataset.hpp"
#include "data/tokenizer_source.hpp"

namespace adept::cli {

namespace {

struct PrepareArgs {
  PrepareOptions options;
  std::string tokenizer = "bytes";
  std::string format = "text";
  std::string split = "file";
  std::string bos = "auto";
  std::string eos = "yes";
  std::string invalid_utf8 = "replace";
  std::string instruct_template;  // empty: PrepareOptions' default
  bool quiet = false;
  bool strict = false;
};

// "\n", "\t" and "\\" as a shell passes them, typed inside quotes.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

void run_prepare(PrepareArgs& args) {
  PrepareOptions& o = args.options;
  if (!args.instruct_template.empty()) o.instruct_template = unescape(args.instruct_template);
  o.format = parse_input_format(args.format);
  o.split = parse_text_split(args.split);
  NamedTokenizer named = load_named_tokenizer(args.tokenizer);
  if (args.bos == "auto") o.add_bos = named.tokenizer->special_ids().add_bos;
  else if (args.bos == "yes" || args.bos == "no") o.add_bos = args.bos == "yes";
  else fail("--bos must be auto, yes or no, not \"{}\"", args.bos);
  if (args.eos != "yes" && args.eos != "no") fail("--eos must be yes or no, not \"{}\"", args.eos);
  o.add_eos = args.eos == "yes";
  if (args.invalid_utf8 != "replace" && args.invalid_utf8 != "skip")
    fail("--invalid-utf8 must be replace or skip, not \"{}\"", args.invalid_utf8);
  o.skip_invalid_utf8 = args.invalid_utf8 == "skip";
  o.show_progress = !args.quiet;

  const TokenizerIdentity& t = named.identity;
  fmt::print("tokenizer {} ({}), vocab {}, bos {}{}, eos {}{}\n", args.tokenizer, t.kind, t.vocab_size, t.bos_id,
             o.add_bos && t.bos_id >= 0 ? " added" : "", t.eos_id, o.add_eos && t.eos_id >= 0 ? " added" : "");
  std::fflush(stdout);
  PrepareResult r = prepare_dataset(o, prepare_tokenizer(named));
  int64_t bytes = 0, issues = 0;
  for (const SourceReport& s : r.manifest.sources) bytes += s.bytes, issues += s.issue_total();
  if (r.up_to_date) {
    fmt::print("{}: up to date ({} documents, {} tokens in {} shards, {} records with bad input); nothing to do\n",
               o.out_dir, r.manifest.documents, r.manifest.tokens, r.manifest.shards.size(), issues);
  } else {
    fmt::print("{}", prepare_report(r.manifest));
    fmt::print("wrote {}/{} and {} shards in {:.1f}s ({:.1f} MB/s, {:.0f} tokens/s)\n", o.out_dir, kManifestFile,
               r.manifest.shards.size(), r.seconds, double(bytes) / 1e6 / std::max(r.seconds, 1e-9),
               double(r.manifest.tokens) / std::max(r.seconds, 1e-9));
  }
  if (args.strict && issues > 0) fail("{} records with bad input (--strict)", issues);
}

void run_verify(const std::string& dir) {
  TokenDataset data(dir, /*verify_hashes=*/true);
  const Manifest& m = data.manifest();
  fmt::print("{}: ok — {} documents, {} tokens ({} targets) in {} shards; tokenizer {} ({}), vocab {}\n", dir,
             m.documents, m.tokens, m.target_tokens, m.shards.size(), m.tokenizer.path.empty() ? "built-in" : m.tokenizer.path,
             m.tokenizer.kind, m.tokenizer.vocab_size);
  fmt::print("{}", prepare_report(m));
}

}  // namespace

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Prepare and check token datasets");
  data->require_subcommand(1);

  auto args = std::make_shared<PrepareArgs>();
  PrepareOptions& o = args->options;
  CLI::App* prep = data->add_subcommand(
      "prepare", "Tokenize corpus files into shards and a manifest (does nothing when inputs are unchanged)");
  prep->add_option("inputs", o.inputs, "Input files")->required();
  prep->add_option("--out,-o", o.out_dir, "Output directory (shards and manifest.json)")->required();
  prep->add_option("--tokenizer", args->tokenizer,
                   "\"bytes\", a model directory, a tokenizer.json or a SentencePiece *.model file")
      ->capture_default_str();
  prep->add_option("--format", args->format, "text | jsonl | instruct")->capture_default_str();
  prep->add_option("--split", args->split, "Text documents: file (one per file) | blocks (blank-line separated) | fortune (%-line separated)")
      ->capture_default_str();
  prep->add_option("--text-field", o.text_field, "JSONL: the document's field")->capture_default_str();
  prep->add_option("--prompt-field", o.prompt_field, "instruct: the prompt's field")->capture_default_str();
  prep->add_option("--response-field", o.response_field, "instruct: the response's field")->capture_default_str();
  prep->add_option("--template", args->instruct_template,
                   "instruct: layout with {prompt} and {response}, \\n for a newline; what precedes {response} is "
                   "not trained on (default: \"User: {prompt}\\nAssistant: {response}\")");
  prep->add_option("--bos", args->bos, "Prepend BOS: auto (as the tokenizer's config says) | yes | no")
      ->capture_default_str();
  prep->add_option("--eos", args->eos, "Append EOS to every document: yes | no")->capture_default_str();
  prep->add_option("--invalid-utf8", args->invalid_utf8, "replace (with U+FFFD) | skip the record")
      ->capture_default_str();
  prep->add_option("--max-record-bytes", o.max_record_bytes, "Longer lines / documents are skipped and reported")
      ->capture_default_str();
  prep->add_option("--shard-tokens", o.shard_tokens, "Tokens per shard file")->capture_default_str();
  prep->add_option("--threads", o.threads, "Tokenizing threads (0: all cores)")->capture_default_str();
  prep->add_flag("--force", o.force, "Redo even when the manifest says the inputs are unchanged");
  prep->add_flag("--strict", args->strict, "Exit with an error when any input was bad (after writing)");
  prep->add_flag("--quiet", args->quiet, "No progress bar");
  prep->callback([args] { run_prepare(*args); });

  auto dir = std::make_shared<std::string>();
  CLI::App* verify = data->add_subcommand("verify", "Check a prepared dataset: shards against the manifest, hashes too");
  verify->add_option("dir", *dir, "Dataset directory")->required();
  verify->callback([dir] { run_verify(*dir); });
}

}  // namespace adept::cli
