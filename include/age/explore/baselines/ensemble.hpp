// Ensemble baselines of the paper's Table 1 ((M20), (M21), METHOD.md "Baselines"):
// M models of the same architecture, trained elsewhere (e.g. from different seeds or
// bootstrap streams); Ensemble-TS serves one member at random per request, Ensemble-UCB
// ranks by the members' mean plus a multiple of their spread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "age/core/rng.hpp"
#include "age/explore/baselines/common.hpp"

namespace age {

// The paper's ensemble size ("5 models of the same architecture").
inline constexpr std::size_t kDefaultEnsembleSize = 5;

namespace detail::baseline {

// Per-thread scratch of both ensemble policies.
template <CtrModel Model>
struct EnsembleWorkspace {
  std::vector<typename Model::Workspace> model;  // one per member
  RowMajorMatrix prob;                           // M x N
  WorkspaceMark in_use;                          // debug builds: one call at a time
};

// The members of an ensemble: non-owning pointers to M >= min_size models with equal
// user_dim and item_dim. The models must outlive the policy.
template <CtrModel Model>
class EnsembleMembers {
 public:
  EnsembleMembers(std::vector<const Model*> members, std::size_t min_size, std::string_view policy)
      : members_(std::move(members)) {
    if (members_.size() < min_size)
      throw ConfigError(std::string(policy) + ".members: expected >= " + std::to_string(min_size) +
                        " models, got " + std::to_string(members_.size()));
    for (std::size_t m = 0; m < members_.size(); ++m) {
      if (members_[m] == nullptr)
        throw ConfigError(std::string(policy) + ".members[" + std::to_string(m) + "]: expected a model, got null");
      require_usable_model(*members_[m], std::string(policy) + ".members[" + std::to_string(m) + "]");
    }
    const auto ud = static_cast<std::size_t>(members_[0]->user_dim());
    const auto id = static_cast<std::size_t>(members_[0]->item_dim());
    for (std::size_t m = 1; m < members_.size(); ++m) {
      detail::require_dim(std::string(policy) + ".members[" + std::to_string(m) + "] user_dim", ud,
                          static_cast<std::size_t>(members_[m]->user_dim()));
      detail::require_dim(std::string(policy) + ".members[" + std::to_string(m) + "] item_dim", id,
                          static_cast<std::size_t>(members_[m]->item_dim()));
    }
  }

  static std::vector<const Model*> pointers(std::span<const Model> models) {
    std::vector<const Model*> out;
    out.reserve(models.size());
    for (const Model& m : models) out.push_back(&m);
    return out;
  }

  std::size_t size() const noexcept { return members_.size(); }
  const Model& operator[](std::size_t m) const {
    return detail::require_index("ensemble: member", m, members_.size()), *members_[m];
  }

  // Row m of `prob` (M x N) = member m's probabilities for every candidate. Each member
  // gets its own model workspace, since a model may cache state in it between calls.
  void predict_all(const Request& request, std::vector<typename Model::Workspace>& ws, RowMajorMatrix& prob) const {
    ws.resize(members_.size());
    prob.resize(static_cast<Index>(members_.size()), request.size());
    for (std::size_t m = 0; m < members_.size(); ++m)
      predict_probabilities(*members_[m], request.user, request.items, nullptr, ws[m],
                            prob.row(static_cast<Index>(m)));
  }

 private:
  std::vector<const Model*> members_;
};

}  // namespace detail::baseline

// Ensemble Thompson sampling (M20): each request is served by one member drawn uniformly from
// the M (Rng(seed, request id)), a draw from the ensemble's approximate posterior.
//   base     = the members' mean probability (the ensemble's point estimate)
//   explored = the drawn member's probability
//   delta    = explored - base (signed, the sampled deviation), gate = 1.
// Cost: M forward passes per request (all members, for the mean).
// Requires: Model satisfies CtrModel; M >= 1 members with equal user_dim and item_dim,
// which must outlive the policy (ConfigError / DimensionError otherwise).
template <CtrModel Model>
class EnsembleTs : public CandidateLimit {
 public:
  using Workspace = detail::baseline::EnsembleWorkspace<Model>;

  explicit EnsembleTs(std::vector<const Model*> members, std::uint64_t seed = 0)
      : members_(std::move(members), 1, "EnsembleTs"), seed_(seed) {}
  explicit EnsembleTs(std::span<const Model> members, std::uint64_t seed = 0)
      : EnsembleTs(detail::baseline::EnsembleMembers<Model>::pointers(members), seed) {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const detail::WorkspaceUse use(ws.in_use, "EnsembleTs::score");
    detail::baseline::check_request(members_[0], request, max_candidates());
    out.resize(request.size());
    members_.predict_all(request, ws.model, ws.prob);
    const auto m = static_cast<Index>(member_for(request.id));
    out.base = ws.prob.colwise().mean();
    out.explored = ws.prob.row(m);
    out.delta = out.explored - out.base;
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    out.rank();
    detail::baseline::finish(out);
  }

  // The member that serves the request with this id.
  std::size_t member_for(std::uint64_t request_id) const {
    Rng rng(seed_, request_id);
    return static_cast<std::size_t>(rng.below(members_.size()));
  }

  std::size_t size() const noexcept { return members_.size(); }
  const Model& member(std::size_t m) const { return members_[m]; }
  std::uint64_t seed() const noexcept { return seed_; }

 private:
  detail::baseline::EnsembleMembers<Model> members_;
  std::uint64_t seed_;
};

// Which spread of the members Ensemble-UCB adds: the paper "uses the variance of the five".
enum class EnsembleSpread { variance, std_dev };

struct EnsembleUcbConfig {
  double scale = 1.0;                                // c >= 0; tune per data set
  EnsembleSpread spread = EnsembleSpread::variance;  // paper's form
};

// Ensemble UCB (M21). With p_m the probability of member m (m = 1..M) for a candidate:
//   mu  = (1/M) sum_m p_m
//   var = (1/M) sum_m (p_m - mu)^2          (population variance, around the mean)
//   s   = var (default) or sqrt(var) (EnsembleSpread::std_dev)
//   explored = mu + c * s,  base = mu,  delta = s,  gate = 1.
// No randomness. Cost: M forward passes per request.
// Requires: Model satisfies CtrModel; M >= 2 members (one member has no spread) with equal
// user_dim and item_dim, which must outlive the policy; c >= 0 and finite (ConfigError).
template <CtrModel Model>
class EnsembleUcb : public CandidateLimit {
 public:
  using Workspace = detail::baseline::EnsembleWorkspace<Model>;

  explicit EnsembleUcb(std::vector<const Model*> members, EnsembleUcbConfig config = {})
      : members_(std::move(members), 2, "EnsembleUcb"), config_(config) {
    detail::baseline::require_non_negative("EnsembleUcb.scale", config_.scale);
  }
  explicit EnsembleUcb(std::span<const Model> members, EnsembleUcbConfig config = {})
      : EnsembleUcb(detail::baseline::EnsembleMembers<Model>::pointers(members), config) {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const detail::WorkspaceUse use(ws.in_use, "EnsembleUcb::score");
    detail::baseline::check_request(members_[0], request, max_candidates());
    out.resize(request.size());
    members_.predict_all(request, ws.model, ws.prob);
    out.base = ws.prob.colwise().mean();
    // Deviations in place: prob becomes p_m - mu, then the mean of squares per column.
    ws.prob.rowwise() -= out.base;
    out.delta = ws.prob.array().square().colwise().mean().matrix();
    if (config_.spread == EnsembleSpread::std_dev) out.delta = out.delta.array().sqrt().matrix();
    out.explored = out.base + static_cast<Scalar>(config_.scale) * out.delta;
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    out.rank();
    detail::baseline::finish(out);
  }

  std::size_t size() const noexcept { return members_.size(); }
  const Model& member(std::size_t m) const { return members_[m]; }
  const EnsembleUcbConfig& config() const noexcept { return config_; }

 private:
  detail::baseline::EnsembleMembers<Model> members_;
  EnsembleUcbConfig config_;
};

// Deduction from a vector of models: EnsembleTs ts(models) gives EnsembleTs<Model>.
template <class Model>
EnsembleTs(const std::vector<Model>&) -> EnsembleTs<Model>;
template <class Model>
EnsembleTs(const std::vector<Model>&, std::uint64_t) -> EnsembleTs<Model>;
template <class Model>
EnsembleUcb(const std::vector<Model>&) -> EnsembleUcb<Model>;
template <class Model>
EnsembleUcb(const std::vector<Model>&, EnsembleUcbConfig) -> EnsembleUcb<Model>;

}  // namespace age
