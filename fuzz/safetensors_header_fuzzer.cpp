// Any byte string as a whole safetensors file: the header parser must either return a
// header whose every tensor range lies inside the data section and matches its shape,
// or throw adept::Error — never read out of bounds, overflow or crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/error.hpp"
#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    adept::SafetensorsHeader h = adept::parse_safetensors_header("fuzz.safetensors", file);
    for (const adept::SafetensorsTensor& t : h.tensors) {
      if (t.begin > t.end || t.end > h.data_size || h.data_offset + h.data_size != size) std::abort();
      if (uint64_t(t.numel()) * adept::dtype_size(t.dtype) != t.end - t.begin) std::abort();
      // Touch the bytes, as a conversion would.
      std::vector<float> out(size_t(t.numel()));
      adept::convert_to_f32(t.dtype, file.data() + h.data_offset + t.begin, out.data(), out.size());
    }
  } catch (const adept::Error&) {
  }
  return 0;
}
