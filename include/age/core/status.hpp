// A status for callers that do not want exceptions on the scoring path: the non-throwing
// forms (AgeScorer::try_score, age::try_score over any Explorer) return one instead of
// throwing.
//
// The message lives in a fixed buffer inside the Status (kMessageCapacity bytes, longer
// messages are cut and end in "..."), so that building, copying and returning a Status
// never allocates: an ok Status is a code and an empty string, and a failing one is
// written with snprintf. The code says which age::Error a throwing call would have thrown.
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string_view>

#include "age/core/error.hpp"

namespace age {

enum class StatusCode : std::uint8_t {
  ok = 0,
  dimension,  // DimensionError
  config,     // ConfigError
  input,      // InputError
  format,     // FormatError
  io,         // IoError
  other,      // another age::Error
  resource,   // std::bad_alloc: memory could not be allocated
  internal,   // any other exception (a bug, or a user model's own exception)
};

inline constexpr std::string_view to_string(StatusCode c) noexcept {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::dimension: return "dimension";
    case StatusCode::config: return "config";
    case StatusCode::input: return "input";
    case StatusCode::format: return "format";
    case StatusCode::io: return "io";
    case StatusCode::other: return "other";
    case StatusCode::resource: return "resource";
    case StatusCode::internal: return "internal";
  }
  return "unknown";
}

class Status {
 public:
  static constexpr std::size_t kMessageCapacity = 256;  // bytes, with the terminating NUL

  Status() noexcept { message_[0] = '\0'; }
  Status(StatusCode code, std::string_view message) noexcept : code_(code) { set_message(message); }

  // A failing status with a printf-style message (cut to the capacity, never allocating).
#if defined(__GNUC__)
  __attribute__((format(printf, 2, 3)))
#endif
  static Status
  format(StatusCode code, const char* fmt, ...) noexcept {
    Status s;
    s.code_ = code;
    std::va_list args;
    va_start(args, fmt);
    const int n = std::vsnprintf(s.message_, kMessageCapacity, fmt, args);
    va_end(args);
    if (n < 0) s.message_[0] = '\0';
    if (n >= static_cast<int>(kMessageCapacity)) s.mark_cut();
    return s;
  }

  // The status of the exception being handled; call only inside a catch block.
  static Status from_current_exception() noexcept {
    try {
      throw;
    } catch (const DimensionError& e) {
      return Status(StatusCode::dimension, e.what());
    } catch (const ConfigError& e) {
      return Status(StatusCode::config, e.what());
    } catch (const InputError& e) {
      return Status(StatusCode::input, e.what());
    } catch (const FormatError& e) {
      return Status(StatusCode::format, e.what());
    } catch (const IoError& e) {
      return Status(StatusCode::io, e.what());
    } catch (const Error& e) {
      return Status(StatusCode::other, e.what());
    } catch (const std::bad_alloc&) {
      return Status(StatusCode::resource, "memory: expected an allocation to succeed, got std::bad_alloc");
    } catch (const std::exception& e) {
      return Status(StatusCode::internal, e.what());
    } catch (...) {
      return Status(StatusCode::internal, "unknown exception (not derived from std::exception)");
    }
  }

  bool ok() const noexcept { return code_ == StatusCode::ok; }
  explicit operator bool() const noexcept { return ok(); }
  StatusCode code() const noexcept { return code_; }
  const char* message() const noexcept { return message_; }

  // Throws the age::Error this status stands for (nothing when ok). For the throwing forms,
  // which share the non-throwing checks.
  void raise() const {
    switch (code_) {
      case StatusCode::ok: return;
      case StatusCode::dimension: throw DimensionError(message_);
      case StatusCode::config: throw ConfigError(message_);
      case StatusCode::input: throw InputError(message_);
      case StatusCode::format: throw FormatError(message_);
      case StatusCode::io: throw IoError(message_);
      case StatusCode::resource: throw std::bad_alloc();
      case StatusCode::other:
      case StatusCode::internal: throw Error(message_);
    }
  }

 private:
  void set_message(std::string_view m) noexcept {
    const std::size_t n = m.size() < kMessageCapacity ? m.size() : kMessageCapacity - 1;
    if (n > 0) std::memcpy(message_, m.data(), n);
    message_[n] = '\0';
    if (m.size() >= kMessageCapacity) mark_cut();
  }
  void mark_cut() noexcept { std::memcpy(message_ + kMessageCapacity - 4, "...", 4); }

  StatusCode code_ = StatusCode::ok;
  char message_[kMessageCapacity];
};

}  // namespace age
