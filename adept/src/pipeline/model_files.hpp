// Models as Hugging Face checkpoint directories: a base loaded into the CPU decoder, and
// every trained model written back (config.json with the new depth, safetensors, the
// tokenizer's files), loadable by transformers unchanged.
#pragma once

#include <string>

#include "io/dtype.hpp"
#include "io/hf_config.hpp"
#include "method/expand.hpp"
#include "model/decoder.hpp"

namespace adept {

// dir/config.json and its weights (checked tensor by tensor against the config).
// hf, if given, receives the config with its extras (torch_dtype, eos list).
Decoder<float> load_hf_model(const std::string& dir, HfModelConfig* hf = nullptr);

// Writes `model` to dir with `like`'s extras (eos ids) and model.config() as the config.
// tokenizer: a directory to copy the tokenizer files from; "bytes" for the byte
// tokenizer, which has no files (adept.json records it, for data.tokenizer = "auto");
// "" for none. config.json is written last, so a directory with one is complete.
void save_hf_model(const std::string& dir, const Decoder<float>& model, const HfModelConfig& like,
                   const std::string& tokenizer, DType dtype);

// What save_hf_model should do about the tokenizer of model directory `dir`: copy its
// files, record the byte tokenizer (adept.json), or nothing.
std::string tokenizer_of_model_dir(const std::string& dir);

// run.save_dtype resolved against the base's torch_dtype ("auto": the base's, else F32).
DType resolve_save_dtype(const std::string& setting, const HfModelConfig& base);

// `adept expand`: the checkpoint in `in` with an identity-initialised copy after each of
// `after`, written to `out` (tokenizer files along; dtype as resolve_save_dtype), plus
// out/expansion.json. Returns the expansion.
Expansion expand_checkpoint(const std::string& in, const std::string& out, const std::vector<int64_t>& after,
                            const std::string& dtype = "auto");

// Whether dir holds a finished checkpoint (config.json present).
bool hf_model_exists(const std::string& dir);

}  // namespace adept
