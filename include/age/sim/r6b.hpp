// Yahoo! Front Page R6B logs: the event type, a line parser and formatter, and a streaming
// reader and writer for plain or gzip-compressed files.
//
// NEEDS ZLIB: this header includes <zlib.h>; link the program against zlib (CMake:
// find_package(ZLIB) and target_link_libraries(... ZLIB::ZLIB); Debian: zlib1g-dev). It is
// therefore not part of the umbrella header age/age.hpp.
//
// Line format (METHOD.md, "Offline replay protocol"):
//   <timestamp> <displayed id> <click> |user <feature ids> |<cand id> |<cand id> ...
//   1317513292 id-552077 0 |user 1 7 11 37 13 |id-552077 |id-555224 |id-555528
// Article ids are "id-" followed by decimal digits and are kept as that number; user
// features are integers in [1, max_user_feature] (136 in R6B).
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "age/core/error.hpp"

namespace age::sim {

// One logged visit: when, which article was displayed (chosen uniformly at random by the
// logging policy), whether it was clicked, the user's active features and the pool of
// candidate articles of that moment.
struct R6bEvent {
  std::int64_t timestamp = 0;
  std::uint64_t displayed = 0;  // article number, "id-<displayed>"
  bool click = false;
  std::vector<std::uint32_t> user;        // active feature ids, in file order
  std::vector<std::uint64_t> candidates;  // article numbers, in file order

  friend bool operator==(const R6bEvent&, const R6bEvent&) = default;

  // Position of the displayed article among the candidates, or -1.
  std::ptrdiff_t displayed_index() const noexcept {
    const auto it = std::find(candidates.begin(), candidates.end(), displayed);
    return it == candidates.end() ? -1 : it - candidates.begin();
  }
};

// Settings of the line parser.
struct R6bFormat {
  // Largest user feature id accepted (R6B has 136 binary features); 0 = no upper bound.
  std::uint32_t max_user_feature = 136;
  // The displayed article must be one of the candidates (true in R6B; replay could never
  // accept the event otherwise).
  bool require_displayed_in_candidates = true;
};

namespace detail {

// Why a line is malformed; the reader prefixes "<file>:<line>: ". A FormatError, so that
// parse_r6b_line's errors are caught with every other age::Error.
class LineError : public FormatError {
 public:
  using FormatError::FormatError;
};

inline bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Splits off the next whitespace-separated token of `rest`; empty when none is left.
inline std::string_view next_token(std::string_view& rest) noexcept {
  std::size_t b = 0;
  while (b < rest.size() && is_space(rest[b])) ++b;
  std::size_t e = b;
  while (e < rest.size() && !is_space(rest[e])) ++e;
  const std::string_view token = rest.substr(b, e - b);
  rest.remove_prefix(e);
  return token;
}

inline std::string quoted(std::string_view s) {
  constexpr std::size_t kMax = 40;  // keep messages short on garbage lines
  std::string q = "'";
  q.append(s.substr(0, kMax));
  if (s.size() > kMax) q += "...";
  return q + "'";
}

template <class T>
bool parse_integer(std::string_view token, T& out) noexcept {
  if (token.empty()) return false;
  const auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), out);
  return ec == std::errc() && ptr == token.data() + token.size();
}

// "id-<digits>" -> digits as a number; false when the token is not of that form.
inline bool parse_article(std::string_view token, std::uint64_t& id) noexcept {
  return token.size() >= 4 && token.substr(0, 3) == "id-" && parse_integer(token.substr(3), id);
}

[[noreturn]] inline void bad_article(std::string_view what, std::string_view token) {
  throw LineError(std::string(what) + ": expected an article id 'id-<digits>', got " + quoted(token));
}

}  // namespace detail

// Parses one line into `out` (reusing its storage). Throws detail::LineError naming the
// field, what was expected and what was found; R6bReader turns it into a FormatError with
// the file name and line number.
inline void parse_r6b_line(std::string_view line, R6bEvent& out, const R6bFormat& format = {}) {
  using detail::LineError;
  using detail::quoted;
  // A NUL byte is never part of a log line (a corrupt or binary file): refused by name, as
  // the reader passes lines on exactly, NUL bytes included. (memchr on the empty view's
  // null data() would be undefined, even with a size of 0.)
  if (const void* nul = line.empty() ? nullptr : std::memchr(line.data(), '\0', line.size()))
    throw LineError("NUL byte at column " +
                    std::to_string(static_cast<const char*>(nul) - line.data() + 1) +
                    ": expected text without NUL bytes, got one");
  std::string_view rest = line;
  const std::string_view ts = detail::next_token(rest);
  if (ts.empty()) throw LineError("empty line: expected '<timestamp> <displayed id> <click> |user ...'");
  if (!detail::parse_integer(ts, out.timestamp))
    throw LineError("timestamp: expected an integer, got " + quoted(ts));
  const std::string_view shown = detail::next_token(rest);
  if (shown.empty()) throw LineError("displayed id: expected 'id-<digits>', got end of line");
  if (!detail::parse_article(shown, out.displayed)) detail::bad_article("displayed id", shown);
  const std::string_view click = detail::next_token(rest);
  if (click == "0" || click == "1") {
    out.click = click == "1";
  } else {
    throw LineError("click: expected 0 or 1, got " + (click.empty() ? std::string("end of line") : quoted(click)));
  }
  const std::string_view user_tag = detail::next_token(rest);
  if (user_tag != "|user")
    throw LineError("user section: expected '|user', got " +
                    (user_tag.empty() ? std::string("end of line") : quoted(user_tag)));

  out.user.clear();
  out.candidates.clear();
  for (std::string_view token = detail::next_token(rest); !token.empty(); token = detail::next_token(rest)) {
    if (token.front() == '|') {
      std::uint64_t id = 0;
      if (!detail::parse_article(token.substr(1), id))
        detail::bad_article("candidate " + std::to_string(out.candidates.size() + 1), token);
      out.candidates.push_back(id);
      continue;
    }
    if (!out.candidates.empty())
      throw LineError("candidate " + std::to_string(out.candidates.size() + 1) + ": expected '|id-<digits>', got " +
                      quoted(token));
    std::uint32_t feature = 0;
    const bool ok = detail::parse_integer(token, feature) && feature >= 1 &&
                    (format.max_user_feature == 0 || feature <= format.max_user_feature);
    if (!ok)
      throw LineError("user feature " + std::to_string(out.user.size() + 1) + ": expected an integer in [1, " +
                      (format.max_user_feature == 0 ? std::string("inf") : std::to_string(format.max_user_feature)) +
                      "], got " + quoted(token));
    out.user.push_back(feature);
  }
  if (out.candidates.empty()) throw LineError("candidates: expected at least 1 '|id-<digits>', got none");
  if (format.require_displayed_in_candidates && out.displayed_index() < 0)
    throw LineError("displayed id: expected one of the " + std::to_string(out.candidates.size()) +
                    " candidates, got id-" + std::to_string(out.displayed) + " which is not among them");
}

// Appends the line of `e` (without the newline) to `out`.
inline void format_r6b_line(const R6bEvent& e, std::string& out) {
  char buf[32];
  auto put = [&](auto value) {
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    out.append(buf, r.ptr);
  };
  put(e.timestamp);
  out += " id-";
  put(e.displayed);
  out += e.click ? " 1 |user" : " 0 |user";
  for (std::uint32_t f : e.user) {
    out += ' ';
    put(f);
  }
  for (std::uint64_t c : e.candidates) {
    out += " |id-";
    put(c);
  }
}

inline std::string format_r6b_line(const R6bEvent& e) {
  std::string s;
  format_r6b_line(e, s);
  return s;
}

// Streaming reader of an R6B file, plain or gzip (zlib's gzopen reads both, so the name
// need not end in .gz). Reads line by line in constant memory. A malformed line throws
// FormatError("<file>:<line>: <reason>"), or, with skip_malformed, is skipped and counted.
struct R6bReadOptions {
  R6bFormat format{};
  bool skip_malformed = false;  // skip and count malformed lines instead of throwing
};

class R6bReader {
 public:
  using Options = R6bReadOptions;

  explicit R6bReader(std::string path, Options options = {}) : path_(std::move(path)), options_(options) {
    file_ = gzopen(path_.c_str(), "rb");
    if (!file_) throw IoError("R6B log '" + path_ + "': cannot open for reading: " + std::strerror(errno));
    gzbuffer(file_, 1 << 17);
  }
  R6bReader(const R6bReader&) = delete;
  R6bReader& operator=(const R6bReader&) = delete;
  ~R6bReader() {
    if (file_) gzclose(file_);
  }

  // Reads the next well-formed event into `out`; false at the end of the file.
  bool next(R6bEvent& out) {
    while (read_line()) {
      try {
        parse_r6b_line(line_, out, options_.format);
        ++events_;
        return true;
      } catch (const detail::LineError& e) {
        if (!options_.skip_malformed) throw FormatError(path_ + ":" + std::to_string(line_number_) + ": " + e.what());
        ++skipped_;
        if (first_skipped_.empty()) first_skipped_ = path_ + ":" + std::to_string(line_number_) + ": " + e.what();
      }
    }
    return false;
  }

  const std::string& path() const noexcept { return path_; }
  // Number of the last line read (1-based).
  std::uint64_t line_number() const noexcept { return line_number_; }
  std::uint64_t events() const noexcept { return events_; }
  // Malformed lines skipped so far (skip_malformed only) and the first one's message.
  std::uint64_t skipped() const noexcept { return skipped_; }
  const std::string& first_skipped() const noexcept { return first_skipped_; }

 private:
  // One line into line_ (without its newline), however long; false at end of file. Split
  // at '\n' in our own buffer (not gzgets, whose NUL-terminated result cannot show a NUL
  // byte inside a line), so every byte reaches the parser and the line count is exact.
  bool read_line() {
    line_.clear();
    bool any = false;
    while (begin_ < end_ || fill()) {
      any = true;
      const char* start = buffer_.data() + begin_;
      const std::size_t avail = end_ - begin_;
      if (const void* nl = std::memchr(start, '\n', avail)) {
        const auto n = static_cast<std::size_t>(static_cast<const char*>(nl) - start);
        line_.append(start, n);
        begin_ += n + 1;
        ++line_number_;
        return true;
      }
      line_.append(start, avail);
      begin_ = end_;
    }
    if (any) ++line_number_;  // last line without a newline
    return any;
  }

  // The next block of (decompressed) bytes into buffer_; false at end of file.
  bool fill() {
    if (at_end_) return false;
    const int n = gzread(file_, buffer_.data(), static_cast<unsigned>(buffer_.size()));
    if (n <= 0) {
      int err = Z_OK;
      const char* msg = gzerror(file_, &err);
      if (n < 0 || (err != Z_OK && err != Z_STREAM_END))
        throw FormatError(path_ + ":" + std::to_string(line_number_ + 1) + ": cannot decompress: " + msg);
      at_end_ = true;
      return false;
    }
    begin_ = 0;
    end_ = static_cast<std::size_t>(n);
    return true;
  }

  std::string path_;
  Options options_;
  gzFile file_ = nullptr;
  std::vector<char> buffer_ = std::vector<char>(std::size_t{1} << 16);
  std::size_t begin_ = 0, end_ = 0;  // unread bytes of buffer_
  bool at_end_ = false;
  std::string line_;
  std::uint64_t line_number_ = 0, events_ = 0, skipped_ = 0;
  std::string first_skipped_;
};

// Writer of the same format: gzip when the path ends in ".gz", plain text otherwise.
class R6bWriter {
 public:
  explicit R6bWriter(std::string path, int gzip_level = 6) : path_(std::move(path)) {
    const bool gz = path_.size() >= 3 && path_.compare(path_.size() - 3, 3, ".gz") == 0;
    const std::string mode = gz ? "wb" + std::to_string(std::clamp(gzip_level, 1, 9)) : std::string("wT");
    file_ = gzopen(path_.c_str(), mode.c_str());
    if (!file_) throw IoError("R6B log '" + path_ + "': cannot open for writing: " + std::strerror(errno));
    gzbuffer(file_, 1 << 17);
  }
  R6bWriter(const R6bWriter&) = delete;
  R6bWriter& operator=(const R6bWriter&) = delete;
  ~R6bWriter() {
    if (file_) gzclose(file_);  // destructors do not throw; call close() to see errors
  }

  void write(const R6bEvent& e) {
    line_.clear();
    format_r6b_line(e, line_);
    line_ += '\n';
    if (gzwrite(file_, line_.data(), static_cast<unsigned>(line_.size())) != static_cast<int>(line_.size()))
      throw IoError("R6B log '" + path_ + "': write of line " + std::to_string(lines_ + 1) + " failed");
    ++lines_;
  }

  // Flushes and closes; throws IoError if the data could not be written.
  void close() {
    if (!file_) return;
    const int rc = gzclose(file_);
    file_ = nullptr;
    if (rc != Z_OK) throw IoError("R6B log '" + path_ + "': closing failed (zlib error " + std::to_string(rc) + ")");
  }

  std::uint64_t lines() const noexcept { return lines_; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  gzFile file_ = nullptr;
  std::string line_;
  std::uint64_t lines_ = 0;
};

}  // namespace age::sim
