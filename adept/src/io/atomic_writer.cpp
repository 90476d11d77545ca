#include "io/atomic_writer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"

namespace adept {

namespace {
constexpr size_t kBufferBytes = 8u << 20;
}

AtomicFileWriter::AtomicFileWriter(const std::string& path) : path_(path) {
  std::filesystem::path target(path);
  dir_ = target.has_parent_path() ? target.parent_path().string() : std::string(".");
  // Built by appending: GCC 12 warns falsely (-Wrestrict) on "." + std::string.
  std::string tmp_name = ".";
  tmp_name += target.filename().string();
  tmp_name += ".tmp-XXXXXX";
  tmp_path_ = (std::filesystem::path(dir_) / tmp_name).string();
  fd_ = ::mkstemp(tmp_path_.data());
  if (fd_ < 0) fail("{}: cannot create a temporary file in {} ({})", path, dir_, std::strerror(errno));
  buffer_.reserve(kBufferBytes);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

void AtomicFileWriter::write_all(const char* data, size_t size) {
  for (size_t done = 0; done < size;) {
    ssize_t n = ::write(fd_, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed ({})", path_, std::strerror(errno));
    }
    done += size_t(n);
  }
}

void AtomicFileWriter::flush_buffer() {
  write_all(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t size) {
  if (fd_ < 0) fail("{}: write after commit", path_);
  if (size == 0) return;
  if (buffer_.size() + size > kBufferBytes) flush_buffer();
  if (size >= kBufferBytes) {
    write_all(static_cast<const char*>(data), size);
  } else {
    buffer_.append(static_cast<const char*>(data), size);
  }
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) fail("{}: committed twice", path_);
  flush_buffer();
  if (::fchmod(fd_, 0644) != 0) fail("{}: chmod failed ({})", path_, std::strerror(errno));
  if (::fsync(fd_) != 0) fail("{}: fsync failed ({})", path_, std::strerror(errno));
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(tmp_path_.c_str());
    fail("{}: close failed ({})", path_, std::strerror(errno));
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_path_.c_str());
    fail("{}: rename from {} failed ({})", path_, tmp_path_, std::strerror(err));
  }
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);  // makes the rename itself durable
    ::close(dfd);
  }
}

}  // namespace adept
