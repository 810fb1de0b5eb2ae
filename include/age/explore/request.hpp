// What every exploration policy consumes and produces: one request at the embedding level
// (one user context, N candidates) and, per candidate, the breakdown of its score.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/types.hpp"

namespace age {

// One request, already embedded: the user vector (user_dim x 1) and the item matrix
// (item_dim x N, one column per candidate). `id` seeds the request's randomness together
// with the policy's seed, so the same request always explores the same way.
struct Request {
  ConstMatrixRef user;
  ConstMatrixRef items;
  std::uint64_t id = 0;
  // Optional impressions served so far per candidate (N entries, or empty); read by gates
  // such as the impression cap.
  std::span<const std::uint64_t> impressions = {};

  Index size() const noexcept { return items.cols(); }
};

// Per-candidate breakdown of a scored request (AGE-METHOD.md, "Algorithm"):
//   base     y = f(h | theta)
//   delta    delta_y (signed for TS, >= 0 for UCB; 0 for policies without uncertainty)
//   gate     sigma in {0, 1}
//   explored y_e, the score candidates are ranked by
// plus the ranking (candidate indices, best first; ties keep the lower index first).
struct ScoredRequest {
  RowVector base;
  RowVector delta;
  std::vector<std::uint8_t> gate;
  RowVector explored;
  std::vector<Index> ranking;

  Index size() const noexcept { return explored.size(); }

  // Sizes every field for n candidates. Eigen reallocates whenever n changes, so scoring
  // is allocation-free after warm-up only while the number of candidates stays the same.
  void resize(Index n) {
    base.resize(n);
    delta.resize(n);
    gate.resize(static_cast<std::size_t>(n));
    explored.resize(n);
    ranking.resize(static_cast<std::size_t>(n));
  }

  // Orders `ranking` by explored score, descending, stable in the candidate index.
  void rank() {
    ranking.resize(static_cast<std::size_t>(explored.size()));
    std::iota(ranking.begin(), ranking.end(), Index{0});
    // std::sort with the index as tie-breaker: same order as a stable sort, but without
    // stable_sort's temporary buffer, so ranking allocates nothing on the hot path.
    std::sort(ranking.begin(), ranking.end(), [this](Index a, Index b) {
      return explored[a] > explored[b] || (explored[a] == explored[b] && a < b);
    });
  }

  // The k best candidates (all of them when k >= N).
  std::span<const Index> top_k(std::size_t k) const {
    return std::span<const Index>(ranking).first(std::min(k, ranking.size()));
  }

  Index best() const {
    if (ranking.empty()) throw InputError("scored request: no candidates to pick from");
    return ranking.front();
  }
};

// Every exploration policy (AGE scorers and the baselines) is an Explorer: it scores a
// request into a ScoredRequest, using a per-thread Workspace, without changing itself, so
// one policy object can serve many threads.
template <class P>
concept Explorer = requires(const P& policy, const Request& request, ScoredRequest& out,
                            typename P::Workspace& ws) {
  typename P::Workspace;
  requires std::default_initializable<typename P::Workspace>;
  policy.score(request, out, ws);
};

// An Explorer whose state learns from the feedback of the candidate that was shown
// (e.g. Gradient-TS's per-weight accumulator). The replay study calls observe() for every
// accepted event, after the model has been updated or not, as the policy documents.
template <class P>
concept LearningExplorer = Explorer<P> && requires(P& policy, const Request& request, Index shown, bool clicked) {
  policy.observe(request, shown, clicked);
};

}  // namespace age
