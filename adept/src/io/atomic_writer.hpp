// Streams a file into place atomically: bytes go to a temporary file in the target's
// directory; commit() fsyncs it, renames it over the target and fsyncs the directory.
// Destroyed without commit() (an exception on the way), it removes the temporary file
// and the target is untouched. core/atomic_file.hpp does the same for a string that is
// already in memory; checkpoints are too large for that.
#pragma once

#include <cstddef>
#include <string>

namespace adept {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();
  const std::string& path() const { return path_; }

 private:
  void write_all(const char* data, size_t size);
  void flush_buffer();
  std::string path_, tmp_path_, dir_;
  int fd_ = -1;
  std::string buffer_;  // coalesces small writes (header, per-chunk conversions)
};

}  // namespace adept
