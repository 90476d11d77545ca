#include "data/input_reader.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.hpp"

namespace adept {

const char* format_name(InputFormat format) {
  switch (format) {
    case InputFormat::Text: return "text";
    case InputFormat::Jsonl: return "jsonl";
    case InputFormat::Instruct: return "instruct";
  }
  return "?";
}

InputFormat parse_input_format(const std::string& name) {
  if (name == "text") return InputFormat::Text;
  if (name == "jsonl") return InputFormat::Jsonl;
  if (name == "instruct") return InputFormat::Instruct;
  fail("unknown input format \"{}\" (text, jsonl or instruct)", name);
}

const char* split_name(TextSplit split) {
  switch (split) {
    case TextSplit::File: return "file";
    case TextSplit::Blocks: return "blocks";
    case TextSplit::Fortune: return "fortune";
  }
  return "?";
}

TextSplit parse_text_split(const std::string& name) {
  if (name == "file") return TextSplit::File;
  if (name == "blocks") return TextSplit::Blocks;
  if (name == "fortune") return TextSplit::Fortune;
  fail("unknown text split \"{}\" (file, blocks or fortune)", name);
}

LineReader::LineReader(const std::string& path, int64_t max_line_bytes)
    : path_(path), max_line_bytes_(max_line_bytes), buffer_(size_t(1) << 20, '\0') {
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) fail("{}: cannot open ({})", path, std::strerror(errno));
}

LineReader::~LineReader() {
  if (file_) std::fclose(static_cast<FILE*>(file_));
}

bool LineReader::fill() {
  if (eof_) return false;
  size_t n = std::fread(buffer_.data(), 1, buffer_.size(), static_cast<FILE*>(file_));
  if (n < buffer_.size()) {
    if (std::ferror(static_cast<FILE*>(file_))) fail("{}: read error", path_);
    eof_ = true;
  }
  hash_.update(buffer_.data(), n);
  bytes_read_ += int64_t(n);
  pos_ = 0;
  end_ = n;
  return n > 0;
}

bool LineReader::next(std::string_view& line, bool& too_long) {
  line_.clear();
  too_long = false;
  bool any = false;
  for (;;) {
    if (pos_ == end_ && !fill()) break;
    any = true;
    const char* start = buffer_.data() + pos_;
    const void* nl = std::memchr(start, '\n', end_ - pos_);
    size_t n = nl ? size_t(static_cast<const char*>(nl) - start) : end_ - pos_;
    if (!too_long) {
      if (int64_t(line_.size() + n) > max_line_bytes_) {
        too_long = true;
        line_.clear();
      } else {
        line_.append(start, n);
      }
    }
    pos_ += n;
    if (nl) {
      ++pos_;
      break;
    }
  }
  if (!any) return false;
  ++line_number_;
  line = line_;
  return true;
}

namespace {

bool is_blank(std::string_view line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}

// The fortune file format (strfile): entries separated by lines holding a lone '%'.
bool is_fortune_separator(std::string_view line) { return line == "%" || line == "%\r"; }

FileScan read_whole_file(const std::string& path, int64_t max_record_bytes, const RecordCallbacks& cb) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail("{}: cannot open ({})", path, std::strerror(errno));
  std::string text;
  std::string buffer(size_t(1) << 20, '\0');
  Fnv1a64 hash;
  int64_t bytes = 0;
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), f.get())) {
    hash.update(buffer.data(), n);
    bytes += int64_t(n);
    if (bytes <= max_record_bytes) text.append(buffer.data(), n);
    else text = std::string();  // over the limit: keep hashing, stop keeping
  }
  if (std::ferror(f.get())) fail("{}: read error", path);
  if (bytes > max_record_bytes) cb.issue(InputIssue::OversizedRecord, 1);
  else cb.record(1, std::move(text));
  return {bytes, hash_string(hash.value())};
}

}  // namespace

FileScan read_records(const std::string& path, InputFormat format, TextSplit split, int64_t max_record_bytes,
                      const RecordCallbacks& cb) {
  if (format == InputFormat::Text && split == TextSplit::File) return read_whole_file(path, max_record_bytes, cb);
  LineReader reader(path, max_record_bytes);
  std::string_view line;
  bool too_long = false;
  if (format != InputFormat::Text) {
    while (reader.next(line, too_long)) {
      if (too_long) cb.issue(InputIssue::OversizedRecord, reader.line_number());
      else if (!is_blank(line)) cb.record(reader.line_number(), std::string(line));
    }
  } else {
    // Blocks: runs of non-blank lines, joined by '\n'. Fortune: the lines between '%' lines
    // (blank ones included: they belong to the entry).
    std::string block;
    int64_t block_line = 0;
    bool in_block = false, oversized = false;
    auto end_block = [&] {
      if (!in_block) return;
      if (oversized) cb.issue(InputIssue::OversizedRecord, block_line);
      else cb.record(block_line, std::move(block));
      block = std::string();
      in_block = oversized = false;
    };
    while (reader.next(line, too_long)) {
      bool separator = split == TextSplit::Fortune ? is_fortune_separator(line) : is_blank(line);
      if (!too_long && separator) {
        end_block();
        continue;
      }
      if (!in_block) in_block = true, block_line = reader.line_number();
      if (oversized) continue;
      if (too_long || int64_t(block.size() + line.size() + 1) > max_record_bytes) {
        oversized = true;
        block = std::string();
        continue;
      }
      if (!block.empty() || reader.line_number() != block_line) block += '\n';
      block.append(line);
    }
    end_block();
  }
  return {reader.bytes_read(), hash_string(reader.hash())};
}

}  // namespace adept
