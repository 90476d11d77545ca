// Downstream evaluation beyond perplexity, following lm-evaluation-harness conventions:
//  - multiple choice by option log-likelihood: context "Question: {q}\nAnswer:", each
//    option scored as the continuation " {choice}"; acc (highest total log-likelihood)
//    and acc_norm (per byte of the option); k-shot examples precede the question.
//  - exact match of generated answers: greedy decoding with a KV cache, the final number
//    extracted GSM8K-style ("#### 42", else the last number in the text).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/token_batch.hpp"
#include "model/decoder.hpp"

namespace adept {

using EncodeFn = std::function<std::vector<int32_t>(const std::string&)>;
using DecodeFn = std::function<std::string(const std::vector<int32_t>&)>;

struct MultipleChoiceItem {
  std::string question;
  std::vector<std::string> choices;
  int answer = 0;  // index into choices
};

// JSONL, one item a line: {"question": str, "choices": [str, ...], "answer": int | "A".. | choice text}.
// Errors name the file, line and field.
std::vector<MultipleChoiceItem> load_multiple_choice_jsonl(const std::string& path);

struct MultipleChoiceResult {
  int64_t items = 0;
  double acc = 0.0, acc_norm = 0.0;
};

// log p(continuation | context) of some model. The default is `model`'s (the CPU
// decoder); a GPU engine supplies its own through continuation_batch.
using ContinuationScoreFn =
    std::function<double(const std::vector<int32_t>& context, const std::vector<int32_t>& continuation)>;

// One row whose loss sum is −log p(continuation | context): targets only over the
// continuation, the context cut on the left so that the whole fits max_len tokens.
TokenBatch continuation_batch(std::vector<int32_t> context, const std::vector<int32_t>& continuation, int64_t max_len);

// The first `shots` items of `examples` are the k-shot prefix of every question.
MultipleChoiceResult evaluate_multiple_choice(Decoder<float>& model, const std::vector<MultipleChoiceItem>& items,
                                              const std::vector<MultipleChoiceItem>& examples, int shots,
                                              const EncodeFn& encode, const ContinuationScoreFn& score = {});

struct GenerationItem {
  std::string question;
  std::string answer;  // the reference; its final number is compared
};

// JSONL: {"question": str, "answer": str}. Errors name the file, line and field.
std::vector<GenerationItem> load_generation_jsonl(const std::string& path);

// GSM8K-style: the number after the last "####", else the last number in the text;
// thousands separators and a trailing period removed. "" when there is none.
std::string extract_final_number(const std::string& text);

// Greedy decoding with a KV cache; stops at eos_id, at a stop string, or after max_new_tokens.
std::string greedy_generate(Decoder<float>& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                            int32_t eos_id, const std::vector<std::string>& stop, const DecodeFn& decode);

struct ExactMatchResult {
  int64_t items = 0;
  double exact_match = 0.0;
};

ExactMatchResult evaluate_exact_match(Decoder<float>& model, const std::vector<GenerationItem>& items,
                                      const std::vector<GenerationItem>& examples, int shots, int64_t max_new_tokens,
                                      const EncodeFn& encode, const DecodeFn& decode, int32_t eos_id);

}  // namespace adept
