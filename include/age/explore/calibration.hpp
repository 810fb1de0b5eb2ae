// lambda' calibration: how far a grid of lambda' values moves a model's explored scores,
// and which lambda' meets a target, measured on sample requests of the user's own model.
//
// lambda' is a LENGTH in the model's embedding units (the move is dh = lambda' * delta_y *
// g~, (M12)), so the paper's 1e-3 means nothing for another model: for embeddings of norm
// 1e-2 it is a large step, for norm 1e2 an invisible one. Two targets give it a meaning:
//   - the move's own meaning in the method ((M3), pseudo-exploration): one training step on
//     the explored item's embedding. lambda_for_radius(new_row_update_length(optimizer,
//     item_dim)) makes the median move of an explored candidate as long as the first
//     optimizer update of a new item's embedding row;
//   - how much exploration changes what is shown: lambda_for_top1_change(0.05) is the
//     smallest lambda' of the grid (interpolated) at which 5% of the requests get another
//     top candidate than greedy ranking would give them.
//
//   std::vector<Request> sample = ...;                 // requests of your traffic
//   auto make = [&](double l) { return AgeTs<EmbeddingCtrModel>(model, DguGate(dgu), {}, Pgd{.lambda = l}); };
//   LambdaCalibration c = calibrate_lambda(make, sample, log_grid(1e-3, 1e3, 13));
//   double lambda = c.lambda_for_top1_change(0.05);
//
// `make` is any callable double -> Explorer (or -> std::unique_ptr<AnyExplorer>) whose
// delta is the move's per-unit length (the AGE scorers: the move of an explored candidate
// is lambda' * |delta_y| long; FGM's exactly, PGD's at most). Requests are scored as the
// service would score them (same ids, same randomness); nothing is trained.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/types.hpp"
#include "age/explore/request.hpp"

namespace age {

// One lambda' of the grid, over the sample requests.
struct LambdaPoint {
  double lambda = 0;
  // The move's length lambda' * |delta_y| over the explored candidates (gate open).
  double radius_median = 0, radius_mean = 0;
  // |y_e - y| over the explored candidates.
  double change_median = 0, change_mean = 0;
  // Explored candidates: share of all candidates whose gate is open.
  double explored_share = 0;
  // Share of requests whose top candidate, or whose set of top-k candidates, differs from
  // the ranking by the base prediction y (greedy).
  double top1_changed = 0, topk_changed = 0;
};

struct LambdaCalibration {
  std::vector<LambdaPoint> points;  // in the grid's (increasing) order
  Index top_k = 5;
  std::size_t requests = 0;

  // The lambda' at which the share of requests whose top candidate changes first reaches
  // `share` (in (0, 1]), interpolated between grid points linearly in log lambda'. Throws
  // InputError when no grid point reaches it (extend the grid).
  double lambda_for_top1_change(double share) const {
    return lambda_for(share, "lambda_for_top1_change", [](const LambdaPoint& p) { return p.top1_changed; });
  }
  double lambda_for_topk_change(double share) const {
    return lambda_for(share, "lambda_for_topk_change", [](const LambdaPoint& p) { return p.topk_changed; });
  }
  // The lambda' whose median move is `length` long. The move is proportional to lambda'
  // (radius = lambda' * |delta_y|, and delta_y does not depend on lambda'), so any grid point
  // with explored candidates gives it; the largest such lambda' is used.
  double lambda_for_radius(double length) const {
    if (!(length > 0.0 && std::isfinite(length)))
      throw ConfigError("lambda_for_radius: length: expected a finite value > 0, got " + std::to_string(length));
    for (auto it = points.rbegin(); it != points.rend(); ++it)
      if (it->radius_median > 0.0 && it->lambda > 0.0) return length * it->lambda / it->radius_median;
    throw InputError("lambda_for_radius: expected a grid point with explored candidates and a non-zero delta_y, "
                     "got none (every gate closed, or delta_y = 0)");
  }

 private:
  template <class Get>
  double lambda_for(double share, const char* what, Get get) const {
    if (!(share > 0.0 && share <= 1.0))
      throw ConfigError(std::string(what) + ": share: expected a value in (0, 1], got " + std::to_string(share));
    for (std::size_t i = 0; i < points.size(); ++i) {
      if (get(points[i]) < share) continue;
      if (i == 0 || points[i - 1].lambda <= 0.0) return points[i].lambda;
      const double s0 = get(points[i - 1]), s1 = get(points[i]);
      const double l0 = std::log(points[i - 1].lambda), l1 = std::log(points[i].lambda);
      const double f = s1 > s0 ? (share - s0) / (s1 - s0) : 1.0;
      return std::exp(l0 + f * (l1 - l0));
    }
    throw InputError(std::string(what) + ": expected a grid point where at least " + std::to_string(share) +
                     " of the requests change, got at most " +
                     std::to_string(points.empty() ? 0.0 : get(points.back())) + " (extend the grid upwards)");
  }
};

// `count` values from `low` to `high`, equally spaced in log (low, high > 0, count >= 2).
inline std::vector<double> log_grid(double low, double high, std::size_t count) {
  if (!(low > 0.0 && high > low && std::isfinite(high)))
    throw ConfigError("log_grid: expected 0 < low < high, finite, got low " + std::to_string(low) + ", high " +
                      std::to_string(high));
  if (count < 2) throw ConfigError("log_grid: count: expected >= 2, got " + std::to_string(count));
  std::vector<double> g(count);
  const double step = std::log(high / low) / static_cast<double>(count - 1);
  for (std::size_t i = 0; i < count; ++i) g[i] = low * std::exp(step * static_cast<double>(i));
  g.back() = high;
  return g;
}

// The length of the first update an optimizer with per-coordinate normalisation (Adam,
// Adagrad: each coordinate of a row's first step moves by lr * g / (|g| + eps) ~ lr) gives
// a new embedding row of `dim` coordinates: lr * sqrt(dim). What "one training step on the
// explored item" of (M3) moves its embedding by, in a model trained that way.
template <class Opt>
double new_row_update_length(const Opt& optimizer, std::size_t dim) {
  if (dim == 0) throw ConfigError("new_row_update_length: dim: expected >= 1, got 0");
  return optimizer.lr * std::sqrt(static_cast<double>(dim));
}

namespace detail {
struct BoxedPolicyWorkspace {};  // a boxed policy (AnyExplorer) holds its own
template <class E>
struct WorkspaceOf {
  using type = typename E::Workspace;
};

inline double median_of(std::vector<double>& v) {
  if (v.empty()) return 0.0;
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  double m = v[mid];
  if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid)));
  return m;
}

// Indices of the k largest values of `score`, ties by the lower index, sorted.
inline void top_k_of(const RowVector& score, Index k, std::vector<Index>& out) {
  out.resize(static_cast<std::size_t>(score.size()));
  for (Index i = 0; i < score.size(); ++i) out[static_cast<std::size_t>(i)] = i;
  const auto kk = static_cast<std::ptrdiff_t>(std::min<Index>(k, score.size()));
  std::partial_sort(out.begin(), out.begin() + kk, out.end(), [&](Index a, Index b) {
    return score[a] != score[b] ? score[a] > score[b] : a < b;
  });
  out.resize(static_cast<std::size_t>(kk));
  std::sort(out.begin(), out.end());
}
}  // namespace detail

struct CalibrationOptions {
  Index top_k = 5;  // the k of topk_changed
};

// Scores every sample request with make(lambda') for each lambda' of `lambdas` (> 0,
// increasing) and measures the moves and the changes of the ranking (see LambdaPoint).
template <class MakeExplorer>
LambdaCalibration calibrate_lambda(MakeExplorer&& make, std::span<const Request> requests,
                                   std::span<const double> lambdas, const CalibrationOptions& options = {}) {
  if (requests.empty()) throw InputError("calibrate_lambda: requests: expected at least 1, got 0");
  if (lambdas.empty()) throw ConfigError("calibrate_lambda: lambdas: expected at least 1 value, got 0");
  if (options.top_k < 1)
    throw ConfigError("calibrate_lambda: top_k: expected >= 1, got " + std::to_string(options.top_k));
  for (std::size_t i = 0; i < lambdas.size(); ++i)
    if (!(lambdas[i] >= 0.0 && lambdas[i] <= kMaxSettingScale) || (i > 0 && !(lambdas[i] > lambdas[i - 1])))
      throw ConfigError("calibrate_lambda: lambdas[" + std::to_string(i) + "]: expected values in [0, " +
                        detail::setting_number(kMaxSettingScale) + "] in increasing order, got " +
                        detail::setting_number(lambdas[i]));
  LambdaCalibration c;
  c.top_k = options.top_k;
  c.requests = requests.size();
  ScoredRequest out;
  std::vector<double> radius, change;
  std::vector<Index> top_base, top_explored;
  for (const double lambda : lambdas) {
    auto made = make(lambda);
    using Made = std::remove_cvref_t<decltype(made)>;
    typename std::conditional_t<Explorer<Made>, detail::WorkspaceOf<Made>, std::type_identity<detail::BoxedPolicyWorkspace>>::type
        ws;
    auto score = [&](const Request& request) {
      if constexpr (Explorer<Made>)
        made.score(request, out, ws);
      else
        made->score(request, out);  // a boxed policy (AnyExplorer) with its own workspace
    };
    LambdaPoint p;
    p.lambda = lambda;
    radius.clear();
    change.clear();
    std::size_t candidates = 0, top1 = 0, topk = 0;
    for (const Request& request : requests) {
      score(request);
      const Index n = out.size();
      candidates += static_cast<std::size_t>(n);
      for (Index i = 0; i < n; ++i) {
        if (!out.gate[static_cast<std::size_t>(i)]) continue;
        radius.push_back(lambda * std::fabs(static_cast<double>(out.delta[i])));
        change.push_back(std::fabs(static_cast<double>(out.explored[i]) - static_cast<double>(out.base[i])));
      }
      detail::top_k_of(out.base, 1, top_base);
      detail::top_k_of(out.explored, 1, top_explored);
      top1 += top_base != top_explored ? 1 : 0;
      detail::top_k_of(out.base, options.top_k, top_base);
      detail::top_k_of(out.explored, options.top_k, top_explored);
      topk += top_base != top_explored ? 1 : 0;
    }
    const double requests_n = static_cast<double>(requests.size());
    p.explored_share = static_cast<double>(radius.size()) / static_cast<double>(std::max<std::size_t>(1, candidates));
    for (double r : radius) p.radius_mean += r;
    for (double d : change) p.change_mean += d;
    if (!radius.empty()) {
      p.radius_mean /= static_cast<double>(radius.size());
      p.change_mean /= static_cast<double>(change.size());
    }
    p.radius_median = detail::median_of(radius);
    p.change_median = detail::median_of(change);
    p.top1_changed = static_cast<double>(top1) / requests_n;
    p.topk_changed = static_cast<double>(topk) / requests_n;
    c.points.push_back(p);
  }
  return c;
}

}  // namespace age
