// Models as Hugging Face checkpoint directories: a base loaded into the CPU decoder, and
// every trained model written back (config.json with the new depth, safetensors, the
// tokenizer's files), loadable by transformers unchanged.
#pragma once

#include <string>

#include "io/dtype.hpp"
#include "io/hf_config.hpp"
#include "model/decoder.hpp"

namespace adept {

// dir/config.json and its weights (checked tensor by tensor against the config).
// hf, if given, receives the config with its extras (torch_dtype, eos list).
Decoder<float> load_hf_model(const std::string& dir, HfModelConfig* hf = nullptr);

// Writes `model` to dir with `like`'s extras (eos ids), model.config() as the config and
// tokenizer files copied from tokenizer_dir ("" for the byte tokenizer, which has none:
// adept.json records it instead). config.json is written last, so a directory with one
// is complete.
void save_hf_model(const std::string& dir, const Decoder<float>& model, const HfModelConfig& like,
                   const std::string& tokenizer_dir, DType dtype);

// run.save_dtype resolved against the base's torch_dtype ("auto": the base's, else F32).
DType resolve_save_dtype(const std::string& setting, const HfModelConfig& base);

// Whether dir holds a finished checkpoint (config.json present).
bool hf_model_exists(const std::string& dir);

}  // namespace adept
