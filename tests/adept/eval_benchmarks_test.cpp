// Downstream evaluation: option log-likelihoods and greedy generation against an
// independent recomputation from full forward passes; answer extraction; bad files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/random.hpp"
#include "core/error.hpp"
#include "eval/benchmarks.hpp"

namespace adept {
namespace {

ModelConfig byte_model() {
  ModelConfig c;
  c.vocab_size = 256;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 256;
  return c;
}

std::vector<int32_t> bytes(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}

std::string text_of(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t i : ids) s += char(i);
  return s;
}

// log p(continuation | context) from one full forward and an explicit log-softmax.
double reference_log_likelihood(Decoder<float>& model, const std::string& context, const std::string& continuation) {
  std::vector<int32_t> t = bytes(context + continuation);
  std::vector<int32_t> targets(t.size(), 0);
  model.forward(Batch{1, int64_t(t.size()), t.data(), targets.data(), nullptr});
  const int64_t V = 256;
  double ll = 0;
  for (size_t i = context.size(); i < t.size(); ++i) {
    const float* z = model.logits().data() + (i - 1) * V;
    double mx = *std::max_element(z, z + V), sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(z[v]) - mx);
    ll += double(z[t[i]]) - mx - std::log(sum);
  }
  return ll;
}

TEST(MultipleChoice, PicksTheOptionWithTheHighestLogLikelihood) {
  auto rng = testing_support::make_rng(51);
  Decoder<float> model(byte_model());
  model.init_random(rng(), 0.5);
  MultipleChoiceItem item{"What is two plus two?", {"four", "five", "twenty two"}, 0};
  double best = -INFINITY;
  for (size_t c = 0; c < item.choices.size(); ++c) {
    double ll = reference_log_likelihood(model, "Question: " + item.question + "\nAnswer:", " " + item.choices[c]);
    if (ll > best) best = ll, item.answer = int(c);
  }
  EXPECT_DOUBLE_EQ(evaluate_multiple_choice(model, {item}, {}, 0, bytes).acc, 1.0);
  item.answer = (item.answer + 1) % 3;
  EXPECT_DOUBLE_EQ(evaluate_multiple_choice(model, {item}, {}, 0, bytes).acc, 0.0);
}

TEST(MultipleChoice, AContinuationBatchsLossIsMinusTheOptionsLogLikelihood) {
  // The path a GPU engine takes: one row whose targets cover the option alone.
  auto rng = testing_support::make_rng(53);
  Decoder<float> model(byte_model());
  model.init_random(rng(), 0.5);
  const std::string context = "Question: Which is heavier?\nAnswer:", option = " a tonne of bricks";
  TokenBatch b = continuation_batch(bytes(context), bytes(option), 256);
  double ll = -model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}).loss_sum;
  EXPECT_NEAR(ll, reference_log_likelihood(model, context, option), 1e-3 * std::abs(ll));
  // A context too long for max_len loses its beginning, never the option.
  TokenBatch cut = continuation_batch(bytes(context), bytes(option), 24);
  EXPECT_EQ(cut.S, 23);
  EXPECT_EQ(text_of(std::vector<int32_t>(cut.tokens.end() - int64_t(option.size()) + 1, cut.tokens.end())),
            option.substr(0, option.size() - 1));
  int64_t counted = 0;
  for (int32_t t : cut.targets) counted += t != kIgnoreIndex;
  EXPECT_EQ(counted, int64_t(option.size()));
  EXPECT_THROW(continuation_batch(bytes(context), bytes(option), int64_t(option.size())), Error);
}

TEST(MultipleChoice, ScoringThroughABatchLossPicksTheSameOptions) {
  auto rng = testing_support::make_rng(54);
  Decoder<float> model(byte_model());
  model.init_random(rng(), 0.5);
  std::vector<MultipleChoiceItem> items = {{"Sky?", {"blue", "green", "loud"}, 0}, {"Two?", {"2", "two", "22"}, 2},
                                           {"Cat?", {"meow", "woof"}, 1}, {"Sun?", {"hot", "cold", "wet"}, 0}};
  ContinuationScoreFn through_loss = [&](const std::vector<int32_t>& context, const std::vector<int32_t>& option) {
    TokenBatch b = continuation_batch(context, option, 256);
    return -model.forward(Batch{b.B, b.S, b.tokens.data(), b.targets.data(), nullptr}).loss_sum;
  };
  MultipleChoiceResult own = evaluate_multiple_choice(model, items, {items[0]}, 1, bytes);
  MultipleChoiceResult via = evaluate_multiple_choice(model, items, {items[0]}, 1, bytes, through_loss);
  EXPECT_EQ(own.acc, via.acc);
  EXPECT_EQ(own.acc_norm, via.acc_norm);
}

TEST(Generation, CachedGreedyDecodingEqualsRepeatedFullForwards) {
  auto rng = testing_support::make_rng(52);
  Decoder<float> model(byte_model());
  model.init_random(rng(), 0.5);
  std::vector<int32_t> prompt = bytes("Question: 1+1?\nAnswer:");
  std::string cached = greedy_generate(model, prompt, 12, -1, {}, text_of);
  std::vector<int32_t> t = prompt;
  std::string reference;
  for (int step = 0; step < 12; ++step) {
    std::vector<int32_t> targets(t.size(), 0);
    model.forward(Batch{1, int64_t(t.size()), t.data(), targets.data(), nullptr});
    const float* z = model.logits().data() + (t.size() - 1) * 256;
    int32_t next = int32_t(std::max_element(z, z + 256) - z);
    t.push_back(next);
    reference += char(next);
  }
  EXPECT_EQ(cached, reference);
}

TEST(ExactMatch, FinalNumberFollowsGsm8kConventions) {
  EXPECT_EQ(extract_final_number("so 3 + 4 = 7\n#### 7"), "7");
  EXPECT_EQ(extract_final_number("The answer is 1,234."), "1234");
  EXPECT_EQ(extract_final_number("from 5 to -12"), "-12");
  EXPECT_EQ(extract_final_number("pi is 3.14 roughly"), "3.14");
  EXPECT_EQ(extract_final_number("no number here"), "");
}

TEST(BenchmarkFiles, MissingFieldNamesFileLineAndField) {
  auto path = std::filesystem::temp_directory_path() / "adept-mc-bad.jsonl";
  std::ofstream(path) << R"({"question": "q", "choices": ["a", "b"], "answer": 1})" << "\n"
                      << R"({"question": "q", "answer": "A"})" << "\n";
  try {
    load_multiple_choice_jsonl(path.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path.string() + ":2"), std::string::npos) << m;
    EXPECT_NE(m.find("choices"), std::string::npos) << m;
  }
  std::ofstream(path) << R"({"question": "q", "choices": ["a", "b"], "answer": "C"})" << "\n";
  EXPECT_THROW(load_multiple_choice_jsonl(path.string()), Error);
  std::filesystem::remove(path);
}

TEST(BenchmarkFiles, AnswersAsIndexLetterOrText) {
  auto path = std::filesystem::temp_directory_path() / "adept-mc-good.jsonl";
  std::ofstream(path) << R"({"question": "q", "choices": ["a", "b", "c"], "answer": 2})" << "\n"
                      << R"({"question": "q", "choices": ["a", "b", "c"], "answer": "B"})" << "\n"
                      << R"({"question": "q", "choices": ["a", "b", "c"], "answer": "a"})" << "\n";
  auto items = load_multiple_choice_jsonl(path.string());
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].answer, 2);
  EXPECT_EQ(items[1].answer, 1);
  EXPECT_EQ(items[2].answer, 0);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace adept
