#include "eval/benchmarks.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>

#include "core/error.hpp"

namespace adept {

namespace {

template <typename F>
void for_each_json_line(const std::string& path, F f) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}:{}: invalid JSON ({})", path, number, e.what());
    }
    if (!j.is_object()) fail("{}:{}: each line must be a JSON object", path, number);
    f(j, number);
  }
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& path, int64_t line) {
  if (!j.contains(key) || !j[key].is_string()) fail("{}:{}: field '{}' (a string) is missing", path, line, key);
  return j[key].get<std::string>();
}

std::string mc_context(const MultipleChoiceItem& item) { return "Question: " + item.question + "\nAnswer:"; }

// Sum of log p(continuation | context), truncating the context on the left when the
// whole does not fit the model.
double continuation_log_likelihood(Decoder<float>& model, const std::vector<int32_t>& context,
                                   const std::vector<int32_t>& continuation) {
  TokenBatch b = continuation_batch(context, continuation, model.config().max_position_embeddings);
  return -model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}).loss_sum;
}

}  // namespace

TokenBatch continuation_batch(std::vector<int32_t> context, const std::vector<int32_t>& continuation, int64_t max_len) {
  if (int64_t(continuation.size()) >= max_len) fail("an answer option of {} tokens does not fit the model", continuation.size());
  if (continuation.empty()) fail("an answer option has no tokens");
  int64_t total = int64_t(context.size() + continuation.size());
  if (total > max_len) context.erase(context.begin(), context.begin() + (total - max_len));
  std::vector<int32_t> tokens = context;
  tokens.insert(tokens.end(), continuation.begin(), continuation.end());
  // Inputs are all tokens but the last; targets are the next tokens, counted only over
  // the continuation.
  TokenBatch b;
  b.B = 1;
  b.S = int64_t(tokens.size()) - 1;
  b.tokens.assign(tokens.begin(), tokens.end() - 1);
  b.targets.assign(b.S, kIgnoreIndex);
  for (int64_t i = std::max<int64_t>(int64_t(context.size()) - 1, 0); i < b.S; ++i) b.targets[i] = tokens[i + 1];
  return b;
}

std::vector<MultipleChoiceItem> load_multiple_choice_jsonl(const std::string& path) {
  std::vector<MultipleChoiceItem> items;
  for_each_json_line(path, [&](const nlohmann::json& j, int64_t line) {
    MultipleChoiceItem item;
    item.question = string_field(j, "question", path, line);
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
      fail("{}:{}: field 'choices' (an array of at least 2 strings) is missing", path, line);
    for (const auto& c : j["choices"]) {
      if (!c.is_string()) fail("{}:{}: every choice must be a string", path, line);
      item.choices.push_back(c.get<std::string>());
    }
    if (!j.contains("answer")) fail("{}:{}: field 'answer' is missing", path, line);
    const auto& a = j["answer"];
    if (a.is_number_integer()) {
      item.answer = a.get<int>();
    } else if (a.is_string() && a.get<std::string>().size() == 1 && std::isupper(a.get<std::string>()[0])) {
      item.answer = a.get<std::string>()[0] - 'A';
    } else if (a.is_string()) {
      auto it = std::find(item.choices.begin(), item.choices.end(), a.get<std::string>());
      item.answer = it == item.choices.end() ? -1 : int(it - item.choices.begin());
    } else {
      fail("{}:{}: field 'answer' must be an index, a letter or one of the choices", path, line);
    }
    if (item.answer < 0 || item.answer >= int(item.choices.size()))
      fail("{}:{}: answer does not name one of the {} choices", path, line, item.choices.size());
    items.push_back(std::move(item));
  });
  return items;
}

MultipleChoiceResult evaluate_multiple_choice(Decoder<float>& model, const std::vector<MultipleChoiceItem>& items,
                                              const std::vector<MultipleChoiceItem>& examples, int shots,
                                              const EncodeFn& encode, const ContinuationScoreFn& score) {
  if (shots > int(examples.size())) fail("{}-shot evaluation needs {} examples, {} given", shots, shots, examples.size());
  std::string prefix;
  for (int s = 0; s < shots; ++s) prefix += mc_context(examples[s]) + " " + examples[s].choices[examples[s].answer] + "\n\n";
  MultipleChoiceResult r;
  int64_t correct = 0, correct_norm = 0;
  for (const MultipleChoiceItem& item : items) {
    std::vector<int32_t> context = encode(prefix + mc_context(item));
    int best = 0, best_norm = 0;
    double best_ll = -INFINITY, best_ll_norm = -INFINITY;
    for (size_t c = 0; c < item.choices.size(); ++c) {
      std::string option = " " + item.choices[c];
      double ll = score ? score(context, encode(option)) : continuation_log_likelihood(model, context, encode(option));
      double ll_norm = ll / double(std::max<size_t>(1, option.size()));  // per byte, as acc_norm
      if (ll > best_ll) best_ll = ll, best = int(c);
      if (ll_norm > best_ll_norm) best_ll_norm = ll_norm, best_norm = int(c);
    }
    correct += best == item.answer;
    correct_norm += best_norm == item.answer;
  }
  r.items = int64_t(items.size());
  if (r.items) r.acc = double(correct) / double(r.items), r.acc_norm = double(correct_norm) / double(r.items);
  return r;
}

std::vector<GenerationItem> load_generation_jsonl(const std::string& path) {
  std::vector<GenerationItem> items;
  for_each_json_line(path, [&](const nlohmann::json& j, int64_t line) {
    items.push_back({string_field(j, "question", path, line), string_field(j, "answer", path, line)});
  });
  return items;
}

std::string extract_final_number(const std::string& text) {
  std::string s = text;
  if (size_t marker = s.rfind("####"); marker != std::string::npos) s = s.substr(marker + 4);
  std::string last, current;
  auto flush = [&] {
    while (!current.empty() && (current.back() == '.' || current.back() == ',')) current.pop_back();
    if (!current.empty() && current != "-") last = current;
    current.clear();
  };
  for (size_t i = 0; i < s.size(); ++i) {
    char ch = s[i];
    bool digit = std::isdigit(static_cast<unsigned char>(ch));
    bool sign = ch == '-' && current.empty() && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]));
    bool inner = (ch == ',' || ch == '.') && !current.empty();
    if (digit || sign || inner) {
      if (ch != ',') current += ch;
    } else {
      flush();
    }
  }
  flush();
  return last;
}

std::string greedy_generate(Decoder<float>& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                            int32_t eos_id, const std::vector<std::string>& stop, const DecodeFn& decode) {
  const int64_t max_len = model.config().max_position_embeddings;
  std::vector<int32_t> context = prompt;
  if (int64_t(context.size()) + max_new_tokens > max_len)  // keep the prompt's tail
    context.erase(context.begin(), context.end() - std::max<int64_t>(1, max_len - max_new_tokens));
  auto cache = model.make_cache(std::min<int64_t>(max_len, int64_t(context.size()) + max_new_tokens));
  std::vector<float> logits = model.forward_cached(context.data(), int64_t(context.size()), cache);
  std::vector<int32_t> generated;
  for (int64_t t = 0; t < max_new_tokens; ++t) {
    int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == eos_id) break;
    generated.push_back(next);
    std::string text = decode(generated);
    for (const std::string& s : stop)
      if (size_t at = text.find(s); at != std::string::npos) return text.substr(0, at);
    if (t + 1 < max_new_tokens) logits = model.forward_cached(&next, 1, cache);
  }
  return decode(generated);
}

ExactMatchResult evaluate_exact_match(Decoder<float>& model, const std::vector<GenerationItem>& items,
                                      const std::vector<GenerationItem>& examples, int shots, int64_t max_new_tokens,
                                      const EncodeFn& encode, const DecodeFn& decode, int32_t eos_id) {
  if (shots > int(examples.size())) fail("{}-shot evaluation needs {} examples, {} given", shots, shots, examples.size());
  std::string prefix;
  for (int s = 0; s < shots; ++s) prefix += "Question: " + examples[s].question + "\nAnswer: " + examples[s].answer + "\n\n";
  ExactMatchResult r;
  int64_t correct = 0;
  for (const GenerationItem& item : items) {
    std::string out = greedy_generate(model, encode(prefix + "Question: " + item.question + "\nAnswer:"),
                                      max_new_tokens, eos_id, {"\n\n", "Question:"}, decode);
    std::string expected = extract_final_number(item.answer);
    correct += !expected.empty() && extract_final_number(out) == expected;
  }
  r.items = int64_t(items.size());
  if (r.items) r.exact_match = double(correct) / double(r.items);
  return r;
}

}  // namespace adept
