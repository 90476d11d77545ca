// Element types of Hugging Face checkpoints (safetensors "dtype" strings) and the
// conversions to and from float32. Narrowing rounds to nearest, ties to even, as
// PyTorch's .to(torch.bfloat16 / torch.float16) does; NaN stays NaN, overflow goes to inf.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace adept {

enum class DType : uint8_t { BF16, F16, F32 };

std::string_view dtype_name(DType dtype);  // "BF16", "F16", "F32" as in safetensors
std::optional<DType> parse_dtype(std::string_view name);
size_t dtype_size(DType dtype);
// torch_dtype of config.json: "bfloat16", "float16", "float32".
std::string_view dtype_torch_name(DType dtype);
std::optional<DType> parse_torch_dtype(std::string_view name);

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x0040u);  // quiet NaN
  x += 0x7FFFu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  // Zero or subnormal: mant * 2^-24 is exact in float32.
  float v = float(mant) * 0x1p-24f;
  return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(v));
}

inline uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) return uint16_t(sign | 0x7C00u | (x > 0x7F800000u ? 0x200u | ((x >> 13) & 0x3FFu) : 0u));
  if (x >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 rounds to inf
  auto round_shift = [](uint32_t v, int shift) {
    uint32_t r = v >> shift, rem = v & ((1u << shift) - 1), half = 1u << (shift - 1);
    return r + uint32_t(rem > half || (rem == half && (r & 1u)));
  };
  if (x >= 0x38800000u) return uint16_t(sign | round_shift(x - 0x38000000u, 13));  // normal
  int exp = int(x >> 23);
  if (exp < 102) return sign;  // below 2^-25: rounds to zero
  // Subnormal: the result counts units of 2^-24; a carry into 0x400 is the smallest normal.
  return uint16_t(sign | round_shift((x & 0x7FFFFFu) | 0x800000u, 126 - exp));
}

// n elements of `dtype` at src (any alignment) to float32, and back.
void convert_to_f32(DType dtype, const std::byte* src, float* dst, size_t n);
void convert_from_f32(DType dtype, const float* src, std::byte* dst, size_t n);

}  // namespace adept
