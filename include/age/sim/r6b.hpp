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

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

// Default bound on one line of an R6B log (R6bReadOptions::max_line_bytes). R6B lines are
// about 1 kB (136 features, ~40 candidates); 1 MiB leaves room for any real log.
inline constexpr std::size_t kDefaultMaxR6bLineBytes = std::size_t{1} << 20;

// Streaming reader of an R6B file, plain or gzip (detected from its first two bytes, so
// the name need not end in .gz; several gzip members in a row are read as one stream, as
// gzip -d does). Reads line by line in memory bounded by max_line_bytes plus ~200 KiB of
// buffers, whatever the file holds. A malformed line -- a line longer than
// max_line_bytes included -- throws FormatError("<file>:<line>: <reason>"), or, with
// skip_malformed, is skipped and counted. A damaged file is a FormatError even with
// skip_malformed: a corrupt or truncated gzip stream, or data after the end of the gzip
// stream that is not another gzip member (zlib's gzread would drop it, and the lines in it,
// without a word). IoError when the file cannot be opened or read, or is a directory; a
// FIFO or other stream is read as it comes (e.g. a log piped from zcat).
struct R6bReadOptions {
  R6bFormat format{};
  bool skip_malformed = false;  // skip and count malformed lines instead of throwing
  // Longest line accepted, in bytes, without its newline (>= 1; ConfigError otherwise).
  std::size_t max_line_bytes = kDefaultMaxR6bLineBytes;
};

class R6bReader {
 public:
  using Options = R6bReadOptions;

  explicit R6bReader(std::string path, Options options = {}) : path_(std::move(path)), options_(options) {
    if (options_.max_line_bytes == 0) throw ConfigError("R6bReadOptions.max_line_bytes: expected >= 1, got 0");
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw IoError("R6B log '" + path_ + "': cannot open for reading: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || S_ISDIR(st.st_mode)) {
      const std::string why = S_ISDIR(st.st_mode) ? "it is a directory, expected a file" : std::strerror(errno);
      ::close(fd_);
      throw IoError("R6B log '" + path_ + "': cannot read: " + why);
    }
  }
  R6bReader(const R6bReader&) = delete;
  R6bReader& operator=(const R6bReader&) = delete;
  ~R6bReader() {
    if (inflating_) inflateEnd(&zs_);
    ::close(fd_);
  }

  // Reads the next well-formed event into `out`; false at the end of the file.
  bool next(R6bEvent& out) {
    while (read_line()) {
      try {
        if (too_long_)
          throw detail::LineError("line length: expected at most " + std::to_string(options_.max_line_bytes) +
                                  " bytes (R6bReadOptions::max_line_bytes), got more");
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
  // One line into line_ (without its newline), or too_long_ when it has more than
  // max_line_bytes (line_ then holds none of it); false at end of file. Split at '\n' in
  // our own buffer, so that every byte (a NUL included) reaches the parser and the line
  // count is exact.
  bool read_line() {
    line_.clear();
    too_long_ = false;
    bool any = false;
    while (begin_ < end_ || fill()) {
      any = true;
      const char* start = buffer_.data() + begin_;
      const std::size_t avail = end_ - begin_;
      const void* nl = std::memchr(start, '\n', avail);
      const std::size_t n = nl ? static_cast<std::size_t>(static_cast<const char*>(nl) - start) : avail;
      append(start, n);
      if (nl) {
        begin_ += n + 1;
        ++line_number_;
        return true;
      }
      begin_ = end_;
    }
    if (any) ++line_number_;  // last line without a newline
    return any;
  }

  // Keeps at most max_line_bytes of a line: the rest is counted as too long, not stored.
  void append(const char* p, std::size_t n) {
    if (too_long_) return;
    if (n > options_.max_line_bytes - line_.size()) {
      too_long_ = true;
      line_.clear();
      return;
    }
    line_.append(p, n);
  }

  [[noreturn]] void damaged(const std::string& why) const {
    throw FormatError(path_ + ":" + std::to_string(line_number_ + 1) + ": " + why);
  }

  // Raw bytes of the file into in_ after the unread ones, until `want` are unread or the
  // file ends.
  void read_raw(std::size_t want) {
    if (in_begin_ > 0) {
      std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
      in_end_ -= in_begin_;
      in_begin_ = 0;
    }
    while (in_end_ < want && !in_eof_) {
      const ::ssize_t n = ::read(fd_, in_.data() + in_end_, in_.size() - in_end_);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw IoError("R6B log '" + path_ + "': cannot read: " + std::strerror(errno));
      }
      if (n == 0) in_eof_ = true;
      in_end_ += static_cast<std::size_t>(n);
      raw_read_ += static_cast<std::uint64_t>(n);
    }
  }
  std::size_t raw_available() const noexcept { return in_end_ - in_begin_; }
  bool gzip_magic_next() const noexcept {
    return raw_available() >= 2 && static_cast<unsigned char>(in_[in_begin_]) == 0x1f &&
           static_cast<unsigned char>(in_[in_begin_ + 1]) == 0x8b;
  }

  // The next block of (decompressed) bytes into buffer_; false at end of file.
  bool fill() {
    if (at_end_) {
      if (!trailing_.empty()) damaged(trailing_);
      return false;
    }
    if (mode_ == Mode::unknown) {
      read_raw(2);
      if (gzip_magic_next()) {
        if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) damaged("cannot decompress: zlib could not start");
        inflating_ = true;
        mode_ = Mode::gzip;
      } else {
        mode_ = Mode::plain;
      }
    }
    if (mode_ == Mode::plain) {
      if (raw_available() == 0) read_raw(1);
      if (raw_available() == 0) {
        at_end_ = true;
        return false;
      }
      std::swap(buffer_, in_);  // hand the raw bytes over as they are
      begin_ = in_begin_;
      end_ = in_end_;
      in_begin_ = in_end_ = 0;
      return true;
    }
    for (;;) {
      if (raw_available() == 0) read_raw(1);
      zs_.next_in = reinterpret_cast<Bytef*>(in_.data() + in_begin_);
      zs_.avail_in = static_cast<uInt>(raw_available());
      zs_.next_out = reinterpret_cast<Bytef*>(buffer_.data());
      zs_.avail_out = static_cast<uInt>(buffer_.size());
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      in_begin_ = in_end_ - zs_.avail_in;
      begin_ = 0;
      end_ = buffer_.size() - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        // A member ended: the file ends here, or another gzip member follows. Anything
        // else would be dropped by a gzip reader; here it is an error.
        read_raw(2);
        if (raw_available() == 0) {
          at_end_ = true;
        } else if (gzip_magic_next()) {
          inflateReset(&zs_);
        } else {
          const std::uint64_t offset = raw_read_ - raw_available();
          trailing_ = "data after the end of the gzip stream at byte " + std::to_string(offset) +
                      " of the file: expected another gzip member or the end of the file (the " +
                      std::to_string(raw_read_ - offset) + (in_eof_ ? "" : "+") +
                      " bytes after it would be lost)";
          at_end_ = true;
        }
        if (end_ > 0) return true;  // trailing data is reported once these lines are read
        if (at_end_) return fill();
        continue;
      }
      if (rc != Z_OK && rc != Z_BUF_ERROR)
        damaged(std::string("cannot decompress: ") + (zs_.msg ? zs_.msg : "zlib error " + std::to_string(rc)));
      if (end_ > 0) return true;
      if (raw_available() == 0 && in_eof_) damaged("cannot decompress: unexpected end of file (truncated gzip stream)");
    }
  }

  enum class Mode { unknown, plain, gzip };

  std::string path_;
  Options options_;
  int fd_ = -1;
  Mode mode_ = Mode::unknown;
  z_stream zs_{};
  bool inflating_ = false;
  std::vector<char> in_ = std::vector<char>(std::size_t{1} << 16);  // raw bytes read, [in_begin_, in_end_) unread
  std::size_t in_begin_ = 0, in_end_ = 0;
  bool in_eof_ = false;
  std::uint64_t raw_read_ = 0;  // raw bytes read from the file so far
  std::vector<char> buffer_ = std::vector<char>(std::size_t{1} << 16);  // decompressed
  std::size_t begin_ = 0, end_ = 0;                                      // unread bytes of buffer_
  bool at_end_ = false;
  std::string trailing_;  // the error to raise once the lines before trailing data are read
  std::string line_;
  bool too_long_ = false;
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
