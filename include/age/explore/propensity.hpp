// Propensities: the probability with which a policy shows each candidate of a request at
// each of the first K positions of its ranking (METHOD.md, "Off-policy estimators",
// (M30), (M31)). A service that explores logs the propensity of what it showed, so that the
// explored traffic can train the next model without bias and evaluate the next policy
// offline (age/sim/ope.hpp).
//
//   Propensities p = compute_propensities(policy, request, served, {.positions = 3}, ws, pws);
//   p.prob(i, k)        P(candidate i at position k), k = 0 for the top pick; N x K, each
//                       column sums to 1
//   p.std_error(i, k)   its standard error (0 for a closed form)
//   p.logged(i, k)      max(prob, floor): what to log for a shown candidate, never 0
//
// Two ways to compute them:
// - Closed form (PropensityMethod::exact), for the policies that opt in through the trait
//   ClosedFormPropensity<P> (specialise it for a policy of your own): RandomPolicy (1/N),
//   EpsilonGreedy (M31), EnsembleTs (the mean of its members' rankings), and the
//   deterministic Greedy, GradientUcb, EnsembleUcb (0/1 from the served ranking).
// - Monte-Carlo (PropensityMethod::monte_carlo), for any Explorer (AGE-TS, AGE-UCB,
//   Gradient-TS, ...; AnyExplorer too): a policy draws all its randomness from
//   Rng(policy seed, request id), so scoring the same request under K alternative ids
//   draws K independent rankings from the policy's distribution for this request (M30).
//   The estimate is the frequency over the K draws, with its binomial standard error. The
//   alternative ids are hashes of (options.seed, request id, draw), so an estimate is
//   reproducible; they never include the request's own id, so the estimate does not
//   depend on what was actually shown. Requires that the policy's randomness comes from
//   the request id only (true of every policy of the library), not from state that
//   changes between calls. Cost: K scorings of the request (benchmarks/bench_score.cpp,
//   BM_Propensity).
//
// Offline instead of on the serving path: log the request id, the policy's seed and what
// is needed to rebuild the request (its features), and mark the propensity deferred; later
// rebuild the same policy (same model, same seed) and call compute_propensities on the
// rebuilt request with the logged id. The result is the one the serving path would have
// logged, bit for bit (tests/unit/test_propensity.cpp checks it; `age-ope fill` does it
// for a log file).
//
// The floor: a Monte-Carlo estimate is 0 for a candidate that none of the K draws showed,
// though the candidate may have been shown; a logged propensity of 0 would make its
// importance weight infinite. logged() returns max(prob, floor), with floor = options.floor
// when it is > 0, else 1/(2K) for Monte-Carlo (half a draw) and 1e-6 for closed forms
// (where 0 means the log and the policy disagree about what can be shown).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/explore/any_explorer.hpp"
#include "age/explore/baselines/ensemble.hpp"
#include "age/explore/baselines/gradient.hpp"
#include "age/explore/baselines/simple.hpp"
#include "age/explore/request.hpp"

namespace age {

// How a propensity was obtained; `deferred` marks a logged one still to be computed
// offline.
enum class PropensityMethod : std::uint8_t { exact, monte_carlo, deferred };

inline constexpr std::string_view to_string(PropensityMethod m) noexcept {
  switch (m) {
    case PropensityMethod::exact: return "exact";
    case PropensityMethod::monte_carlo: return "monte_carlo";
    case PropensityMethod::deferred: return "deferred";
  }
  return "unknown";
}

// The method named by to_string(); InputError naming the text otherwise.
inline PropensityMethod propensity_method_from_string(std::string_view s) {
  for (PropensityMethod m : {PropensityMethod::exact, PropensityMethod::monte_carlo, PropensityMethod::deferred})
    if (s == to_string(m)) return m;
  throw InputError("propensity method: expected exact, monte_carlo or deferred, got '" + std::string(s) + "'");
}

// The floor closed forms use unless PropensityOptions::floor is set.
inline constexpr double kExactPropensityFloor = 1e-6;
// More Monte-Carlo draws than this is taken as a mistake (each draw scores the request
// once: 1e8 draws of one request take minutes, 1e18 never end).
inline constexpr std::size_t kMaxPropensityDraws = 100'000'000;

struct PropensityOptions {
  std::size_t positions = 1;     // K positions of the ranking (top pick = 1); clipped to N
  std::size_t draws = 256;       // Monte-Carlo draws (alternative request ids)
  double floor = 0.0;            // in [0, 1]; 0: 1/(2 draws) for Monte-Carlo, 1e-6 exact
  std::uint64_t seed = 0;        // seeds the alternative request ids
  bool monte_carlo_only = false;  // ignore closed forms (checks, tests)

  // ConfigError naming the field: positions = 0, draws outside [1, kMaxPropensityDraws],
  // floor outside [0, 1].
  void validate() const {
    if (positions == 0) throw ConfigError("PropensityOptions.positions: expected >= 1, got 0");
    if (draws == 0 || draws > kMaxPropensityDraws)
      throw ConfigError("PropensityOptions.draws: expected 1 to " + std::to_string(kMaxPropensityDraws) + ", got " +
                        std::to_string(draws));
    if (!(floor >= 0.0 && floor <= 1.0))
      throw ConfigError("PropensityOptions.floor: expected a value in [0, 1], got " + std::to_string(floor));
  }
};

struct Propensities {
  Eigen::MatrixXd prob;       // N x K: P(candidate i shown at position k)
  Eigen::MatrixXd std_error;  // N x K: standard error of prob (0 for exact)
  PropensityMethod method = PropensityMethod::exact;
  std::size_t draws = 0;  // Monte-Carlo draws (0 for exact)
  double floor = 0.0;     // what logged() never goes below

  Index candidates() const noexcept { return prob.rows(); }
  Index positions() const noexcept { return prob.cols(); }

  // The propensity to log for `candidate` shown at `position` (0-based): max(prob, floor).
  double logged(Index candidate, Index position) const {
    detail::require_index("propensities: candidate", static_cast<std::size_t>(candidate),
                          static_cast<std::size_t>(candidates()));
    detail::require_index("propensities: position", static_cast<std::size_t>(position),
                          static_cast<std::size_t>(positions()));
    return std::max(prob(candidate, position), floor);
  }
};

// Scratch of the propensity computations; reused across requests (one per thread).
struct PropensityWorkspace {
  ScoredRequest draw;   // one alternative draw
  ScoredRequest order;  // rankings the closed forms derive
};

// The d-th alternative request id for a request (M30): a hash of (seed, id, d).
inline std::uint64_t alternative_request_id(std::uint64_t seed, std::uint64_t request_id, std::uint64_t draw) noexcept {
  return detail::mix64(detail::mix64(seed ^ 0x50524F50454E5349ULL) ^ detail::mix64(request_id) ^
                       detail::mix64(draw + 0x9E3779B97F4A7C15ULL));
}

// Opt-in closed forms. A specialisation provides
//   static void compute(const P& policy, const Request& request, const ScoredRequest& served,
//                       typename P::Workspace& ws, PropensityWorkspace& pws, Eigen::MatrixXd& prob);
// which fills prob (N x K, zeroed by the caller) given `served`, the policy's own scores of
// this request.
template <class P>
struct ClosedFormPropensity;

template <class P>
concept HasClosedFormPropensity = Explorer<P> && requires(const P& policy, const Request& request,
                                                          const ScoredRequest& served, typename P::Workspace& ws,
                                                          PropensityWorkspace& pws, Eigen::MatrixXd& prob) {
  ClosedFormPropensity<P>::compute(policy, request, served, ws, pws, prob);
};

namespace detail {

// A deterministic policy shows ranking[k] at position k with probability 1.
inline void deterministic_propensities(const ScoredRequest& served, Eigen::MatrixXd& prob) {
  for (Index k = 0; k < prob.cols(); ++k) prob(served.ranking[static_cast<std::size_t>(k)], k) = 1.0;
}

// `scratch` ranked by `scores` (ties by the lower index, as every policy ranks).
template <class Row>
void rank_by(const Row& scores, ScoredRequest& scratch) {
  scratch.explored = scores;
  scratch.rank();
}

inline void check_served(const Request& request, const ScoredRequest& served) {
  detail::require_dim("propensities: served scores (candidates of the request)",
                      static_cast<std::size_t>(request.size()), static_cast<std::size_t>(served.size()));
  detail::require_dim("propensities: served ranking (candidates of the request)",
                      static_cast<std::size_t>(request.size()), served.ranking.size());
}

inline double effective_floor(const PropensityOptions& options, PropensityMethod method) noexcept {
  if (options.floor > 0.0) return options.floor;
  return method == PropensityMethod::monte_carlo ? 0.5 / static_cast<double>(options.draws) : kExactPropensityFloor;
}

// K draws of score(alternative request, out): frequencies and binomial standard errors.
template <class ScoreFn>
void monte_carlo(const Request& request, const PropensityOptions& options, PropensityWorkspace& pws,
                 Propensities& out, ScoreFn&& score) {
  options.validate();
  const Index n = request.size();
  if (n < 1) throw InputError("propensities: request items: expected at least 1 candidate column, got 0");
  const Index k = std::min<Index>(static_cast<Index>(options.positions), n);
  out.prob.setZero(n, k);
  for (std::size_t d = 0; d < options.draws; ++d) {
    Request alt = request;
    alt.id = alternative_request_id(options.seed, request.id, d);
    score(alt, pws.draw);
    if (pws.draw.ranking.size() != static_cast<std::size_t>(n))
      detail::require_dim("propensities: ranking of a Monte-Carlo draw", static_cast<std::size_t>(n),
                          pws.draw.ranking.size());
    for (Index j = 0; j < k; ++j) out.prob(pws.draw.ranking[static_cast<std::size_t>(j)], j) += 1.0;
  }
  const double draws = static_cast<double>(options.draws);
  out.prob /= draws;
  out.std_error = (out.prob.array() * (1.0 - out.prob.array()) / draws).max(0.0).sqrt().matrix();
  out.method = PropensityMethod::monte_carlo;
  out.draws = options.draws;
  out.floor = effective_floor(options, PropensityMethod::monte_carlo);
}

}  // namespace detail

// --- The closed forms of the library's policies -------------------------------------------

template <CtrModel M>
struct ClosedFormPropensity<Greedy<M>> {
  static void compute(const Greedy<M>&, const Request&, const ScoredRequest& served, typename Greedy<M>::Workspace&,
                      PropensityWorkspace&, Eigen::MatrixXd& prob) {
    detail::deterministic_propensities(served, prob);
  }
};

template <TowerCtrModel M>
struct ClosedFormPropensity<GradientUcb<M>> {
  static void compute(const GradientUcb<M>&, const Request&, const ScoredRequest& served,
                      typename GradientUcb<M>::Workspace&, PropensityWorkspace&, Eigen::MatrixXd& prob) {
    detail::deterministic_propensities(served, prob);
  }
};

template <CtrModel M>
struct ClosedFormPropensity<EnsembleUcb<M>> {
  static void compute(const EnsembleUcb<M>&, const Request&, const ScoredRequest& served,
                      typename EnsembleUcb<M>::Workspace&, PropensityWorkspace&, Eigen::MatrixXd& prob) {
    detail::deterministic_propensities(served, prob);
  }
};

// A uniformly random permutation shows every candidate at every position with 1/N.
template <CtrModel M>
struct ClosedFormPropensity<RandomPolicy<M>> {
  static void compute(const RandomPolicy<M>&, const Request&, const ScoredRequest&, typename RandomPolicy<M>::Workspace&,
                      PropensityWorkspace&, Eigen::MatrixXd& prob) {
    prob.setConstant(1.0 / static_cast<double>(prob.rows()));
  }
};

// Epsilon-greedy (M19), (M31): with g_1, g_2, ... the greedy order (by base, ties by index),
// position 1 shows candidate i with eps/N + (1 - eps) 1[i = g_1]; an exploring request puts
// its uniform pick first and the rest in greedy order, so position k >= 2 shows g_{k-1}
// with eps (N - k + 1)/N (the pick ranked k or lower) and g_k with 1 - eps + eps (k - 1)/N.
template <CtrModel M>
struct ClosedFormPropensity<EpsilonGreedy<M>> {
  static void compute(const EpsilonGreedy<M>& policy, const Request&, const ScoredRequest& served,
                      typename EpsilonGreedy<M>::Workspace&, PropensityWorkspace& pws, Eigen::MatrixXd& prob) {
    detail::rank_by(served.base, pws.order);
    const std::vector<Index>& g = pws.order.ranking;
    const double eps = policy.config().epsilon;
    const double n = static_cast<double>(prob.rows());
    prob.col(0).setConstant(eps / n);
    prob(g[0], 0) += 1.0 - eps;
    for (Index k = 1; k < prob.cols(); ++k) {
      const auto j = static_cast<std::size_t>(k);
      prob(g[j - 1], k) += eps * (n - static_cast<double>(k)) / n;
      prob(g[j], k) += 1.0 - eps + eps * static_cast<double>(k) / n;
    }
  }
};

// Ensemble-TS (M20) serves member m with 1/M: the mean of the members' 0/1 rankings.
template <CtrModel M>
struct ClosedFormPropensity<EnsembleTs<M>> {
  static void compute(const EnsembleTs<M>& policy, const Request& request, const ScoredRequest&,
                      typename EnsembleTs<M>::Workspace& ws, PropensityWorkspace& pws, Eigen::MatrixXd& prob) {
    detail::baseline::check_request(policy.member(0), request, policy.max_candidates());
    const std::size_t members = policy.size();
    ws.model.resize(members);
    RowVector& p = pws.order.base;  // the member's probabilities
    p.resize(request.size());
    for (std::size_t m = 0; m < members; ++m) {
      predict_probabilities(policy.member(m), request.user, request.items, nullptr, ws.model[m], p);
      detail::rank_by(p, pws.order);
      for (Index k = 0; k < prob.cols(); ++k)
        prob(pws.order.ranking[static_cast<std::size_t>(k)], k) += 1.0 / static_cast<double>(members);
    }
  }
};

// --- Entry points -----------------------------------------------------------------------

// Monte-Carlo propensities of any Explorer (M30), whether or not it has a closed form.
template <Explorer P>
void monte_carlo_propensities(const P& policy, const Request& request, const PropensityOptions& options,
                              typename P::Workspace& ws, PropensityWorkspace& pws, Propensities& out) {
  detail::monte_carlo(request, options, pws, out,
                      [&](const Request& alt, ScoredRequest& scored) { policy.score(alt, scored, ws); });
}

// The same for a policy chosen at run time (one virtual call per draw).
inline void monte_carlo_propensities(AnyExplorer& policy, const Request& request, const PropensityOptions& options,
                                     PropensityWorkspace& pws, Propensities& out) {
  detail::monte_carlo(request, options, pws, out,
                      [&](const Request& alt, ScoredRequest& scored) { policy.score(alt, scored); });
}

// Propensities of `policy` for `request`, given `served`, the policy's own scores of this
// request (what the service showed; read by the closed forms only): the closed form when
// the policy has one (and options.monte_carlo_only is off), Monte-Carlo otherwise.
// Throws ConfigError for bad options, DimensionError when `served` does not have the
// request's N candidates, and what the policy's score() throws.
template <Explorer P>
void compute_propensities(const P& policy, const Request& request, const ScoredRequest& served,
                          const PropensityOptions& options, typename P::Workspace& ws, PropensityWorkspace& pws,
                          Propensities& out) {
  options.validate();
  detail::check_served(request, served);
  if constexpr (HasClosedFormPropensity<P>) {
    if (!options.monte_carlo_only) {
      const Index n = request.size();
      out.prob.setZero(n, std::min<Index>(static_cast<Index>(options.positions), n));
      ClosedFormPropensity<P>::compute(policy, request, served, ws, pws, out.prob);
      out.std_error.setZero(out.prob.rows(), out.prob.cols());
      out.method = PropensityMethod::exact;
      out.draws = 0;
      out.floor = detail::effective_floor(options, PropensityMethod::exact);
      return;
    }
  }
  monte_carlo_propensities(policy, request, options, ws, pws, out);
}

// One-off form: scores the request, then computes its propensities (allocates).
template <Explorer P>
Propensities compute_propensities(const P& policy, const Request& request, const PropensityOptions& options = {}) {
  typename P::Workspace ws;
  PropensityWorkspace pws;
  ScoredRequest served;
  policy.score(request, served, ws);
  Propensities out;
  compute_propensities(policy, request, served, options, ws, pws, out);
  return out;
}

}  // namespace age
