// A read-only memory map of a whole file (RAII). Checkpoints are read through it so
// that a 10 GB shard costs no copy until a tensor is converted.
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace adept {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws adept::Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  void unmap();
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace adept
