// Bounds that turn absurd sizes into a clear age::Error instead of std::bad_alloc, an
// overflowing size computation or a crash.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "age/core/error.hpp"
#include "age/core/types.hpp"

namespace age {

// Largest parameter tensor (tower weight matrix, embedding table) the library allocates:
// 2^32 elements, 16 GiB of floats. Far above any CTR tower, small enough that a size read
// from a typo or a corrupt file is refused before it is allocated.
inline constexpr std::uint64_t kMaxTensorElements = std::uint64_t{1} << 32;

// Default bound on the candidates of one request (AgeScorer and the baselines,
// set_max_candidates()). A ranking stage scores hundreds to a few thousands; 100000 leaves
// room while refusing a request whose size is garbage before anything is sized for it.
inline constexpr Index kDefaultMaxCandidates = 100000;

// Largest value accepted for a scale-like setting: lambda', the PGD step scale, the noise
// and bonus scales, learning rates, initialisation spreads, finite-difference steps. They
// multiply float embeddings and probabilities: a value near the double maximum (a typo, a
// garbage double such as 1e300) is refused where it is set (ConfigError) rather than
// found later as inf or NaN scores, while every value a study may probe passes (lambda'
// calibration grids reach 1e7; lambda' is in the embeddings' units). Results that still
// overflow are caught by the scorers' finite check (ScoredRequest::check_finite).
inline constexpr double kMaxSettingScale = 1e12;

namespace detail {

// A setting's value for a message ("1e+300", "-1", "nan").
inline std::string setting_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// ConfigError "<what>: expected a value in [0, 1e+12] (or (0, 1e+12]), got <value>" unless
// 0 <= value <= kMaxSettingScale (value > 0 when `positive`). NaN fails both comparisons.
inline void check_scale(std::string_view what, double value, bool positive) {
  if ((positive ? value > 0.0 : value >= 0.0) && value <= kMaxSettingScale) return;
  throw ConfigError(std::string(what) + ": expected a value in " + (positive ? "(0, " : "[0, ") +
                    setting_number(kMaxSettingScale) + "], got " + setting_number(value));
}

// ConfigError unless a rows x cols tensor stays within kMaxTensorElements (and so within
// Index and size_t arithmetic). `what` names the tensor.
inline void check_tensor_size(std::string_view what, std::uint64_t rows, std::uint64_t cols) {
  const bool ok = rows <= kMaxTensorElements && cols <= kMaxTensorElements &&
                  (rows == 0 || cols <= kMaxTensorElements / rows);
  if (!ok)
    throw ConfigError(std::string(what) + ": expected at most " + std::to_string(kMaxTensorElements) +
                      " elements (rows x cols), got " + std::to_string(rows) + " x " + std::to_string(cols));
}

// Allocation failure of a tensor within the bound (the machine has less memory) as an
// age::Error naming the tensor and its size.
[[noreturn]] inline void throw_allocation_failed(std::string_view what, std::uint64_t rows, std::uint64_t cols) {
  throw ConfigError(std::string(what) + ": expected memory for " + std::to_string(rows) + " x " +
                    std::to_string(cols) + " floats, got std::bad_alloc");
}

}  // namespace detail
}  // namespace age
