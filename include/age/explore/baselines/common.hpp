// Pieces shared by the baseline exploration policies (METHOD.md, "Baselines"):
// configuration checks and the base prediction every baseline reports.
#pragma once

#include <cmath>
#include <sstream>
#include <string>
#include <string_view>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/types.hpp"
#include "age/core/workspace_use.hpp"
#include "age/explore/request.hpp"
#include "age/model/ctr_model.hpp"

namespace age {
namespace detail::baseline {

// Candidates as the contiguous dimension of each row: a row binds to Eigen::Ref<RowVector>.
using RowMajorMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// "<what>: expected <expected>, got <actual>" as a ConfigError when `ok` is false.
inline void require_config(bool ok, std::string_view what, std::string_view expected, double actual) {
  if (ok) return;
  std::ostringstream msg;
  msg << what << ": expected " << expected << ", got " << actual;
  throw ConfigError(msg.str());
}

// A value in [0, kMaxSettingScale] (scales of exploration bonuses).
inline void require_non_negative(std::string_view what, double value) { check_scale(what, value, false); }

// The request checks every policy makes before scoring (a model that is not empty, then
// detail::check_request: candidate count within max_candidates, dimensions, finite
// embeddings), as exceptions.
template <CtrModel Model>
void check_request(const Model& model, const Request& request, Index max_candidates) {
  require_usable_model(model, "explorer");
  detail::require_request(request, static_cast<Index>(model.user_dim()), static_cast<Index>(model.item_dim()),
                          max_candidates);
}

// base = f(h | theta) for every candidate of the request, after check_request(); sizes
// `out` for N candidates.
template <CtrModel Model>
void score_base(const Model& model, const Request& request, ScoredRequest& out, typename Model::Workspace& ws,
                Index max_candidates) {
  check_request(model, request, max_candidates);
  out.resize(request.size());
  predict_probabilities(model, request.user, request.items, nullptr, ws, out.base);
}

// The end of every baseline's score(): InputError for a score that is not finite.
inline void finish(ScoredRequest& out) { require_finite_scores(out); }

}  // namespace detail::baseline
}  // namespace age
