// From logged decisions to the estimators' input (age/sim/ope.hpp): for a target policy, an
// OpeSample per logged decision of a ranking service -- the target's probability of the
// logged candidate at the logged position (age/explore/propensity.hpp), its own pick there
// for the logged request id (replay), and a reward model's expected reward under the
// target (DM, DR).
//
//   OpeSampler<AgeTs<EmbeddingCtrModel>> sampler(policy, {.draws = 256});
//   sampler.set_reward_model(model);                       // DM and DR: the library's own CTR model
//   for (each logged decision) samples.push_back(sampler(LoggedDecision{request, shown, position, p_log, click}));
//   OpeReport report = evaluate_off_policy(samples);
//
// The context x of a decision is the request and the position: pi_e(a | x) is the target's
// probability of showing candidate a at the logged position. The reward model q(x, a) is
// the model's probability for the candidate (it does not see the position).
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <utility>

#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/explore/propensity.hpp"
#include "age/explore/request.hpp"
#include "age/model/ctr_model.hpp"
#include "age/sim/ope.hpp"

namespace age::sim {

// One logged decision at the embedding level.
struct LoggedDecision {
  Request request;                  // embedded; request.id = the logged request id
  Index shown = 0;                  // the candidate shown
  Index position = 0;               // 0-based slot it was shown in
  double logging_propensity = 1.0;  // pi_b(shown | x), in (0, 1]
  double reward = 0.0;              // its click
};

// The sample of one decision from the target's distribution at its position:
// `target_prob` (N values, pi_e(a | x)), the target's own pick `target_pick` (-1: unknown),
// and optionally the reward model's q (N values, or empty). InputError naming the field for
// a shown candidate or a pick outside [0, N), or a q of another length.
inline OpeSample make_ope_sample(std::span<const double> target_prob, Index target_pick, Index shown,
                                 double logging_propensity, double reward, std::span<const Scalar> q = {}) {
  const auto n = static_cast<Index>(target_prob.size());
  if (shown < 0 || shown >= n)
    throw InputError("ope sample: shown candidate: expected an index in [0, " + std::to_string(n) + "), got " +
                     std::to_string(shown));
  if (target_pick >= n)
    throw InputError("ope sample: target pick: expected an index in [0, " + std::to_string(n) + ") or -1, got " +
                     std::to_string(target_pick));
  OpeSample s;
  s.reward = reward;
  s.logging_propensity = logging_propensity;
  s.target_propensity = target_prob[static_cast<std::size_t>(shown)];
  if (target_pick >= 0) s.replay_match = target_pick == shown ? 1.0 : 0.0;
  if (!q.empty()) {
    age::detail::require_dim("ope sample: reward model values (one per candidate)", target_prob.size(), q.size());
    s.dm_value = 0.0;
    for (std::size_t a = 0; a < target_prob.size(); ++a) s.dm_value += target_prob[a] * static_cast<double>(q[a]);
    s.dm_logged = static_cast<double>(q[static_cast<std::size_t>(shown)]);
  }
  return s;
}

// OpeSamples of an Explorer on logged decisions; owns the workspaces (one per thread).
template <Explorer P>
class OpeSampler {
 public:
  // `options.positions` is ignored: each decision asks for the positions up to its own.
  OpeSampler(const P& target, PropensityOptions options) : target_(&target), options_(options) { options_.validate(); }
  OpeSampler(const P&&, PropensityOptions) = delete;

  // DM and DR from `model`'s probabilities (which must outlive the sampler).
  template <CtrModel M>
  void set_reward_model(const M& model) {
    reward_ = [&model, ws = typename M::Workspace()](const Request& r, RowVector& q) mutable {
      q.resize(r.size());
      predict_probabilities(model, r.user, r.items, nullptr, ws, q);
    };
  }

  OpeSample operator()(const LoggedDecision& d) {
    const Index n = d.request.size();
    if (d.position < 0 || d.position >= n)
      throw InputError("logged decision " + std::to_string(d.request.id) + ": position: expected a slot in [0, " +
                       std::to_string(n) + "), got " + std::to_string(d.position));
    target_->score(d.request, served_, ws_);  // its own pick, with the logged id's draws
    PropensityOptions opts = options_;
    opts.positions = static_cast<std::size_t>(d.position) + 1;
    compute_propensities(*target_, d.request, served_, opts, ws_, pws_, props_);
    column_ = props_.prob.col(d.position);
    std::span<const Scalar> q;
    if (reward_) {
      reward_(d.request, q_);
      q = std::span<const Scalar>(q_.data(), static_cast<std::size_t>(q_.size()));
    }
    return make_ope_sample(std::span<const double>(column_.data(), static_cast<std::size_t>(column_.size())),
                           served_.ranking[static_cast<std::size_t>(d.position)], d.shown, d.logging_propensity,
                           d.reward, q);
  }

  // The propensities of the last decision (all positions up to its own).
  const Propensities& last_propensities() const noexcept { return props_; }

 private:
  const P* target_;
  PropensityOptions options_;
  typename P::Workspace ws_;
  PropensityWorkspace pws_;
  ScoredRequest served_;
  Propensities props_;
  Eigen::VectorXd column_;
  RowVector q_;
  std::function<void(const Request&, RowVector&)> reward_;
};

}  // namespace age::sim
