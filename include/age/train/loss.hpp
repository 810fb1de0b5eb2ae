// Binary cross-entropy on logits (the CTR training loss, (M2) in METHOD.md) and AUC (the
// metric CTR models are compared by).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

// BCE of one logit z against a label y in [0, 1]:
//   -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z)) = max(z, 0) - y z + log(1 + exp(-|z|)),
// the form that neither overflows exp() nor takes log(0) for large |z|.
inline double bce_with_logit(double z, double y) noexcept {
  return std::max(z, 0.0) - y * z + std::log1p(std::exp(-std::abs(z)));
}

// d BCE / d z = sigmoid(z) - y.
inline Scalar bce_logit_gradient(Scalar z, Scalar y) noexcept { return sigmoid(z) - y; }

namespace detail {
inline void check_label(std::size_t i, double y) {
  if (!(y >= 0.0 && y <= 1.0))
    throw InputError("label " + std::to_string(i) + ": expected a value in [0, 1], got " + std::to_string(y));
}
}  // namespace detail

// Mean BCE over a batch of logits (1 x N) and labels (1 x N). When d_logit is given it
// receives d(mean loss)/d(logit) = (sigmoid(z) - y) / N, ready for Tower::backward.
inline double bce_loss(const Eigen::Ref<const RowVector>& logits, const Eigen::Ref<const RowVector>& labels,
                       RowVector* d_logit = nullptr) {
  const Index n = logits.size();
  detail::require_dim("bce: number of labels", static_cast<std::size_t>(n), static_cast<std::size_t>(labels.size()));
  if (n == 0) throw InputError("bce: batch is empty (expected at least 1 logit, got 0)");
  if (d_logit) d_logit->resize(n);
  double sum = 0.0;
  const Scalar inv_n = Scalar(1) / static_cast<Scalar>(n);
  for (Index i = 0; i < n; ++i) {
    detail::check_label(static_cast<std::size_t>(i), labels[i]);
    sum += bce_with_logit(logits[i], labels[i]);
    if (d_logit) (*d_logit)[i] = bce_logit_gradient(logits[i], labels[i]) * inv_n;
  }
  return sum / static_cast<double>(n);
}

// Area under the ROC curve: the probability that a random positive scores above a random
// negative, ties counting one half. Rank-based (Mann-Whitney U with mid-ranks for tied
// scores), O(n log n). Labels must be exactly 0 or 1, and both classes must be present.
// Works with any indexable containers with size() (std::vector, RowVector, ...).
template <class Scores, class Labels>
double auc(const Scores& scores, const Labels& labels) {
  const std::size_t n = static_cast<std::size_t>(scores.size());
  detail::require_dim("auc: number of labels", n, static_cast<std::size_t>(labels.size()));
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return static_cast<double>(scores[static_cast<decltype(scores.size())>(a)]) <
           static_cast<double>(scores[static_cast<decltype(scores.size())>(b)]);
  });
  auto score_at = [&](std::size_t k) { return static_cast<double>(scores[static_cast<decltype(scores.size())>(order[k])]); };
  auto label_at = [&](std::size_t i) { return static_cast<double>(labels[static_cast<decltype(labels.size())>(i)]); };

  double positive_rank_sum = 0.0;
  std::size_t positives = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double y = label_at(i);
    if (y != 0.0 && y != 1.0)
      throw InputError("auc: label " + std::to_string(i) + ": expected 0 or 1, got " + std::to_string(y));
    if (!std::isfinite(static_cast<double>(scores[static_cast<decltype(scores.size())>(i)])))
      throw InputError("auc: score " + std::to_string(i) + " is not finite");
    positives += y == 1.0;
  }
  const std::size_t negatives = n - positives;
  if (positives == 0 || negatives == 0)
    throw InputError("auc: needs both classes: got " + std::to_string(positives) + " positives and " +
                     std::to_string(negatives) + " negatives");
  // Ranks are 1-based; a run of tied scores [lo, hi) shares the mid-rank (lo + 1 + hi) / 2.
  for (std::size_t lo = 0; lo < n;) {
    std::size_t hi = lo + 1;
    while (hi < n && score_at(hi) == score_at(lo)) ++hi;
    const double mid_rank = 0.5 * static_cast<double>(lo + 1 + hi);
    for (std::size_t k = lo; k < hi; ++k)
      if (label_at(order[k]) == 1.0) positive_rank_sum += mid_rank;
    lo = hi;
  }
  const double p = static_cast<double>(positives), q = static_cast<double>(negatives);
  return (positive_rank_sum - p * (p + 1.0) / 2.0) / (p * q);
}

}  // namespace age
