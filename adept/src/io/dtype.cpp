#include "io/dtype.hpp"

namespace adept {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F32: return "F32";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view name) {
  if (name == "BF16") return DType::BF16;
  if (name == "F16") return DType::F16;
  if (name == "F32") return DType::F32;
  return std::nullopt;
}

size_t dtype_size(DType dtype) { return dtype == DType::F32 ? 4 : 2; }

std::string_view dtype_torch_name(DType dtype) {
  switch (dtype) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
  }
  return "?";
}

std::optional<DType> parse_torch_dtype(std::string_view name) {
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  if (name == "float32") return DType::F32;
  return std::nullopt;
}

void convert_to_f32(DType dtype, const std::byte* src, float* dst, size_t n) {
  if (n == 0) return;  // an empty tensor may come with null pointers, which memcpy must not see
  if (dtype == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

void convert_from_f32(DType dtype, const float* src, std::byte* dst, size_t n) {
  if (n == 0) return;
  if (dtype == DType::F32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h = dtype == DType::BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

}  // namespace adept
