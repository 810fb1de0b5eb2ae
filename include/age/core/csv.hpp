// The pieces the library's CSV readers share (the Open Bandit Dataset, age/sim/obd.hpp;
// served logs, age/explore/served_record.hpp): splitting a line into fields and parsing a
// field, with errors that name the file, the line, the column, the expected and the actual
// text. Plain comma-separated fields without quoting (neither format needs it); a quote
// character is refused rather than misread.
#pragma once

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "age/core/error.hpp"

namespace age::detail::csv {

// Where a field comes from, for messages: "<file>:<line>: column '<name>'".
struct Location {
  std::string_view file;
  std::size_t line = 0;
};

inline std::string where(const Location& at) { return std::string(at.file) + ":" + std::to_string(at.line); }

[[noreturn]] inline void fail(const Location& at, std::string_view column, std::string_view expected,
                              std::string_view got) {
  throw FormatError(where(at) + ": column '" + std::string(column) + "': expected " + std::string(expected) +
                    ", got '" + std::string(got) + "'");
}

// The line without a trailing '\r' (files written on Windows).
inline std::string_view chomp(std::string_view line) noexcept {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

// Splits on ','; FormatError for a quote character.
inline void split(std::string_view line, const Location& at, std::vector<std::string_view>& fields) {
  fields.clear();
  if (line.find('"') != std::string_view::npos)
    throw FormatError(where(at) + ": expected plain comma-separated fields, got a quote character (quoting is not "
                                  "supported)");
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = line.find(',', start);
    fields.push_back(line.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
}

inline std::uint64_t parse_uint(std::string_view text, const Location& at, std::string_view column) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    fail(at, column, "an unsigned integer", text);
  return v;
}

inline double parse_double(std::string_view text, const Location& at, std::string_view column) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v))
    fail(at, column, "a finite number", text);
  return v;
}

// Whether a double rounds to a finite float: |v| below the midpoint between the largest
// float and 2^128 (so "3.40282347e38", the largest float as written with 9 digits, fits).
inline bool fits_float(double v) noexcept {
  return std::fabs(v) < std::ldexp(2.0 - std::ldexp(1.0, -24), 127);
}

// A number stored as a float: finite as a double and within float's range (1e39 would
// silently become infinity, which every later check and writer then trips over).
inline float parse_float(std::string_view text, const Location& at, std::string_view column) {
  const double v = parse_double(text, at, column);
  if (!fits_float(v)) fail(at, column, "a finite number within float range", text);
  return static_cast<float>(v);
}

// Whether the whole text is a finite number.
inline bool is_number(std::string_view text) noexcept {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return !text.empty() && ec == std::errc() && end == text.data() + text.size() && std::isfinite(v);
}

// FNV-1a 64 of a text: a stable id for a hashed categorical value given as a string.
inline std::uint64_t string_id(std::string_view s) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace age::detail::csv
