// Flag values of the example programs (age-replay, age-ope): the whole value must parse,
// or the ConfigError names the flag and the value.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <string>

#include "age/core/error.hpp"

namespace age_examples {

// A non-negative integer (counts, seeds, rows); "12x", "-1" and "" are refused.
inline std::uint64_t parse_count(const std::string& flag, const std::string& v) {
  std::size_t pos = 0;
  unsigned long long x = 0;
  try {
    x = std::stoull(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || v[0] == '-')
    throw age::ConfigError(flag + ": expected a non-negative integer, got '" + v + "'");
  return x;
}

// A finite number; "1e-3x", "nan", "inf" and "" are refused.
inline double parse_real(const std::string& flag, const std::string& v) {
  std::size_t pos = 0;
  double x = 0;
  try {
    x = std::stod(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || !std::isfinite(x))
    throw age::ConfigError(flag + ": expected a number, got '" + v + "'");
  return x;
}

}  // namespace age_examples
