// Reading corpus files as records — the raw text of one document, or one JSONL line —
// without ever holding more than max_record_bytes of one record: a longer line or
// document is skipped while being read and reported as InputIssue::OversizedRecord.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "data/content_hash.hpp"
#include "data/manifest.hpp"

namespace adept {

enum class InputFormat {
  Text,      // plain text: documents per file or per blank-line-separated block
  Jsonl,     // one JSON object per line, the document in a text field
  Instruct,  // one JSON object per line with prompt and response fields
};
enum class TextSplit {
  File,    // a whole file is one document
  Blocks,  // documents are separated by blank (white-space only) lines
  Fortune, // documents are separated by lines holding a lone '%' (fortune / strfile files)
};

const char* format_name(InputFormat format);
InputFormat parse_input_format(const std::string& name);  // text | jsonl | instruct
const char* split_name(TextSplit split);
TextSplit parse_text_split(const std::string& name);  // file | blocks | fortune

// Lines of a file, '\n' removed ('\r' kept), streamed through a fixed buffer.
class LineReader {
 public:
  LineReader(const std::string& path, int64_t max_line_bytes);  // throws adept::Error naming the file
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line; false at the end. too_long: the line had more than max_line_bytes
  // (its content is then not kept).
  bool next(std::string_view& line, bool& too_long);
  int64_t line_number() const { return line_number_; }  // 1-based, of the last line
  int64_t bytes_read() const { return bytes_read_; }
  uint64_t hash() const { return hash_.value(); }  // of every byte read so far

 private:
  bool fill();
  std::string path_;
  void* file_ = nullptr;
  int64_t max_line_bytes_;
  std::string buffer_;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false;
  std::string line_;
  int64_t line_number_ = 0, bytes_read_ = 0;
  Fnv1a64 hash_;
};

struct RecordCallbacks {
  std::function<void(int64_t line, std::string&& text)> record;
  std::function<void(InputIssue issue, int64_t line)> issue;
};

struct FileScan {
  int64_t bytes = 0;
  std::string hash;  // hash_string of the file's content
};

// Reads `path` as records of `format` (and `split`, for text), calling back in file
// order. Throws adept::Error only when the file cannot be read.
FileScan read_records(const std::string& path, InputFormat format, TextSplit split, int64_t max_record_bytes,
                      const RecordCallbacks& callbacks);

}  // namespace adept
