// MC-Dropout masks on the tower's hidden units -- the network theta, never the embeddings
// ((M9), METHOD.md "MC-Dropout uncertainty"). Inverted scaling: a kept unit is
// multiplied by 1 / (1 - p), so the expected activation equals the no-dropout one.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"

namespace age {

// One mask sample: for each hidden layer, a H_l x 1 column shared by every candidate of a
// request, or H_l x N with one column per candidate. Entries are 0 or 1 / (1 - p).
struct DropoutMask {
  std::vector<Matrix> layers;

  bool empty() const noexcept { return layers.empty(); }
  Index columns() const noexcept { return layers.empty() ? 0 : layers.front().cols(); }
};

inline void check_dropout_rate(double p) {
  if (!(p >= 0.0 && p < 1.0))
    throw ConfigError("dropout rate: expected a value in [0, 1), got " + std::to_string(p));
}

// Draws a mask for hidden layers of the given sizes; `columns` is 1 for a mask shared by
// the request's candidates or N for one mask per candidate. Reuses mask's storage.
template <class Sizes>
void sample_dropout_mask(const Sizes& hidden_sizes, double p, Index columns, Rng& rng, DropoutMask& mask) {
  check_dropout_rate(p);
  if (columns < 1) throw ConfigError("dropout mask: columns: expected >= 1, got " + std::to_string(columns));
  for (auto h : hidden_sizes)
    detail::check_tensor_size("dropout mask layer (units x columns)", static_cast<std::uint64_t>(h),
                              static_cast<std::uint64_t>(columns));
  const Scalar keep_scale = static_cast<Scalar>(1.0 / (1.0 - p));
  mask.layers.resize(std::size(hidden_sizes));
  std::size_t l = 0;
  for (auto h : hidden_sizes) {
    Matrix& m = mask.layers[l++];
    m.resize(static_cast<Index>(h), columns);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.bernoulli(p) ? Scalar(0) : keep_scale;
  }
}

}  // namespace age
