// The model-only baselines of the paper's Table 1: DNN-vanilla (Greedy), random and
// epsilon-greedy. Each is an Explorer (age/explore/request.hpp): const scoring with a
// per-thread Workspace, randomness from Rng(policy seed, request id) only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "age/core/rng.hpp"
#include "age/explore/baselines/common.hpp"

namespace age {

// DNN-vanilla: no exploration; candidates are ranked by the model's pCTR.
//   base = f(h | theta), delta = 0, gate = 0, explored = base.
// Requires: Model satisfies CtrModel. Every baseline checks each request as the AGE scorer
// does (at most max_candidates() candidates, dimensions, finite embeddings; InputError or
// DimensionError). The policy keeps a pointer to the model, which must
// outlive it; later training of the model is seen by the next request.
template <CtrModel Model>
class Greedy : public CandidateLimit {
 public:
  using Workspace = typename Model::Workspace;

  explicit Greedy(const Model& model) noexcept : model_(&model) {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    detail::baseline::score_base(*model_, request, out, ws, this->max_candidates());
    out.delta.setZero();
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{0});
    out.explored = out.base;
    out.rank();
    detail::baseline::finish(out);
  }

  const Model& model() const noexcept { return *model_; }

 private:
  const Model* model_;
};

// Uniformly random ranking: the request's ranking is a uniform random permutation of its
// candidates (Fisher-Yates on Rng(seed, request id)), so every order, and in particular
// every top pick, has probability 1/N! (1/N). The breakdown reports
//   base = f(h | theta), delta = 0, gate = 1 (every score is replaced by exploration),
//   explored = (N - position) / N  (1 for the top pick, 1/N for the last),
// so that ranking by `explored` reproduces the permutation exactly, without ties.
// Requires: Model satisfies CtrModel (only for the reported base). Default seed 0.
template <CtrModel Model>
class RandomPolicy : public CandidateLimit {
 public:
  using Workspace = typename Model::Workspace;

  explicit RandomPolicy(const Model& model, std::uint64_t seed = 0) noexcept : model_(&model), seed_(seed) {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    detail::baseline::score_base(*model_, request, out, ws, this->max_candidates());
    const Index n = request.size();
    out.delta.setZero();
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    Rng rng(seed_, request.id);
    for (Index k = 0; k < n; ++k) out.ranking[static_cast<std::size_t>(k)] = k;
    for (Index k = n - 1; k > 0; --k) {
      const auto j = static_cast<Index>(rng.below(static_cast<std::uint64_t>(k) + 1));
      std::swap(out.ranking[static_cast<std::size_t>(k)], out.ranking[static_cast<std::size_t>(j)]);
    }
    for (Index k = 0; k < n; ++k)
      out.explored[out.ranking[static_cast<std::size_t>(k)]] = static_cast<Scalar>(n - k) / static_cast<Scalar>(n);
    detail::baseline::finish(out);
  }

  const Model& model() const noexcept { return *model_; }
  std::uint64_t seed() const noexcept { return seed_; }

 private:
  const Model* model_;
  std::uint64_t seed_;
};

struct EpsilonGreedyConfig {
  double epsilon = 0.1;    // probability that a request explores; in [0, 1] (paper: not given)
  std::uint64_t seed = 0;  // with the request id, seeds the request's draws
};

// Epsilon-greedy (M19): with probability epsilon the request explores and its top pick is a
// candidate drawn uniformly from all N (the greedy one included); otherwise it is greedy.
// The rest of the ranking stays greedy. The breakdown reports
//   base = f(h | theta);
//   gate = 1 for the randomly drawn candidate of an exploring request, 0 elsewhere;
//   delta = kBonus (= 2) where the gate is open, 0 elsewhere;
//   explored = base + gate * delta.
// A bonus of 2 lifts the drawn candidate above every probability in [0, 1], so it ranks
// first even against a saturated pCTR of exactly 1. Draws per request: one Bernoulli
// (explore?) and, if it explores, one uniform index, both from Rng(seed, request id).
// Requires: Model satisfies CtrModel. Throws ConfigError if epsilon is outside [0, 1].
template <CtrModel Model>
class EpsilonGreedy : public CandidateLimit {
 public:
  using Workspace = typename Model::Workspace;
  static constexpr Scalar kBonus = 2;

  explicit EpsilonGreedy(const Model& model, EpsilonGreedyConfig config = {}) : model_(&model), config_(config) {
    detail::baseline::require_config(config_.epsilon >= 0.0 && config_.epsilon <= 1.0, "EpsilonGreedy.epsilon",
                           "a value in [0, 1]", config_.epsilon);
  }

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    detail::baseline::score_base(*model_, request, out, ws, this->max_candidates());
    out.delta.setZero();
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{0});
    const Index pick = explore_pick(request.id, request.size());
    if (pick >= 0) {
      out.gate[static_cast<std::size_t>(pick)] = 1;
      out.delta[pick] = kBonus;
    }
    out.explored = out.base + out.delta;
    out.rank();
    detail::baseline::finish(out);
  }

  // The candidate a request with this id and n candidates explores, or -1 if it is greedy.
  // The same draws score() makes, exposed for diagnostics and tests.
  Index explore_pick(std::uint64_t request_id, Index n) const {
    Rng rng(config_.seed, request_id);
    if (n <= 0 || !rng.bernoulli(config_.epsilon)) return -1;
    return static_cast<Index>(rng.below(static_cast<std::uint64_t>(n)));
  }

  const Model& model() const noexcept { return *model_; }
  const EpsilonGreedyConfig& config() const noexcept { return config_; }

 private:
  const Model* model_;
  EpsilonGreedyConfig config_;
};

}  // namespace age
