// The library's one error type and its refinements. Every exception age throws derives
// from age::Error, so a service can catch the library's failures in one place.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace age {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A shape that does not match what the model or layout expects.
class DimensionError : public Error {
 public:
  using Error::Error;
};

// A setting outside its valid range (dropout rate, lambda', PGD steps, ...).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// An input value that cannot be used (NaN feature, empty candidate list, ...).
class InputError : public Error {
 public:
  using Error::Error;
};

// A weight file or log that is malformed, truncated or inconsistent.
class FormatError : public Error {
 public:
  using Error::Error;
};

// The operating system refused a read or write.
class IoError : public Error {
 public:
  using Error::Error;
};

namespace detail {

// "<what>: expected <expected>, got <actual>" -- the shape of every dimension message.
inline std::string mismatch(std::string_view what, std::size_t expected, std::size_t actual) {
  return std::string(what) + ": expected " + std::to_string(expected) + ", got " +
         std::to_string(actual);
}

inline void require_dim(std::string_view what, std::size_t expected, std::size_t actual) {
  if (expected != actual) throw DimensionError(mismatch(what, expected, actual));
}

// An index into one of the library's containers (layer, field, member): InputError
// "<what>: expected an index < <size>, got <index>" instead of std::out_of_range.
inline void require_index(std::string_view what, std::size_t index, std::size_t size) {
  if (index >= size)
    throw InputError(std::string(what) + ": expected an index < " + std::to_string(size) + ", got " +
                     std::to_string(index));
}

// Rethrows the age::Error being handled as the same type with `prefix` in front of its
// message (e.g. the file a save was for); call only inside a catch block. Anything else
// propagates unchanged.
[[noreturn]] inline void rethrow_with_prefix(const std::string& prefix) {
  try {
    throw;
  } catch (const DimensionError& e) {
    throw DimensionError(prefix + e.what());
  } catch (const ConfigError& e) {
    throw ConfigError(prefix + e.what());
  } catch (const InputError& e) {
    throw InputError(prefix + e.what());
  } catch (const FormatError& e) {
    throw FormatError(prefix + e.what());
  } catch (const IoError& e) {
    throw IoError(prefix + e.what());
  } catch (const Error& e) {
    throw Error(prefix + e.what());
  }
}

}  // namespace detail
}  // namespace age
