// What every exploration policy consumes and produces: one request at the embedding level
// (one user context, N candidates) and, per candidate, the breakdown of its score.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/simd.hpp"
#include "age/core/status.hpp"
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

namespace detail {
// Stable LSD radix sort of keys by their upper 32 bits, one byte per pass, between keys
// and `scratch`; a byte that every key shares costs no pass. (ScoredRequest::rank())
inline void radix_sort_high_half(std::uint64_t* keys, std::size_t n, std::vector<std::uint64_t>& scratch) {
  scratch.resize(n);
  std::size_t count[4][256] = {};
  for (std::size_t i = 0; i < n; ++i)
    for (int b = 0; b < 4; ++b) ++count[b][(keys[i] >> (32 + 8 * b)) & 0xffu];
  std::uint64_t* from = keys;
  std::uint64_t* to = scratch.data();
  for (int b = 0; b < 4; ++b) {
    const int shift = 32 + 8 * b;
    if (count[b][(from[0] >> shift) & 0xffu] == n) continue;  // all keys share this byte
    std::size_t offset[256];
    std::size_t total = 0;
    for (int v = 0; v < 256; ++v) {
      offset[v] = total;
      total += count[b][v];
    }
    for (std::size_t i = 0; i < n; ++i) to[offset[(from[i] >> shift) & 0xffu]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys) std::copy(from, from + n, keys);
}
}  // namespace detail

// Per-candidate breakdown of a scored request (METHOD.md, "One request, step by step"):
//   base     y = f(h | theta)                                                     (M1)
//   delta    delta_y (signed for TS (M10), >= 0 for UCB (M11); 0 without uncertainty)
//   gate     sigma in {0, 1}                                                      (M16)
//   explored y_e, the score candidates are ranked by                             (M17)
// plus the ranking (candidate indices, best first; ties keep the lower index first).
struct ScoredRequest {
  RowVector base;
  RowVector delta;
  std::vector<std::uint8_t> gate;
  RowVector explored;
  std::vector<Index> ranking;
  std::vector<std::uint64_t> rank_scratch;  // rank()'s second buffer (grows once)

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

  // Orders `ranking` by explored score, descending, ties by the lower candidate index (the
  // order of a stable sort); NaN scores rank last, -0 ranks with +0. Sorts integer keys in
  // the ranking's own storage -- the score's bits mapped to an unsigned order (descending)
  // above the candidate's index -- so it compares no floats through an indirection (the
  // comparator sort it replaces took ~7% of a greedy request of 1000 candidates); above
  // 256 candidates by a stable radix sort on the score bits (keys start in index order, so
  // ties stay in it), which skips the bytes all scores share. Allocates nothing once sized.
  void rank() {
    const Index n = explored.size();
    ranking.resize(static_cast<std::size_t>(n));
    if (n >= (Index{1} << 32)) {  // the index would not fit in the key's low half
      std::iota(ranking.begin(), ranking.end(), Index{0});
      std::sort(ranking.begin(), ranking.end(), [this](Index a, Index b) {
        const Scalar x = explored[a], y = explored[b];
        const bool x_nan = x != x, y_nan = y != y;
        if (x_nan != y_nan) return y_nan;  // a number ranks before NaN
        if (!x_nan && x != y) return x > y;
        return a < b;
      });
      return;
    }
    static_assert(sizeof(Index) == sizeof(std::uint64_t));
    // Signed and unsigned forms of one integer type may alias each other.
    auto* keys = reinterpret_cast<std::uint64_t*>(ranking.data());
    for (Index i = 0; i < n; ++i) {
      const Scalar v = explored[i] + Scalar(0);  // -0 ranks with +0
      std::uint32_t bits = std::bit_cast<std::uint32_t>(v);
      bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // ascending order of floats
      if (v != v) bits = 0;                                          // NaN: lowest
      keys[i] = (static_cast<std::uint64_t>(~bits) << 32) | static_cast<std::uint64_t>(i);
    }
    if (n <= 256)
      std::sort(keys, keys + n);
    else
      detail::radix_sort_high_half(keys, static_cast<std::size_t>(n), rank_scratch);
    for (Index i = 0; i < n; ++i) keys[i] &= 0xffffffffu;
  }

  // Ok when every score is finite (base, delta and explored: an O(N) pass over each);
  // else an InputError status naming the first non-finite one. Every policy checks its
  // result with it, so that a score that overflowed float (weights or embeddings of
  // absurd size) is an error, never a NaN ranked as if it were a score. No allocation.
  Status check_finite() const noexcept;

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

// The bound on a request's candidates that AgeScorer and the baselines enforce
// (default kDefaultMaxCandidates = 100000, age/core/limits.hpp). Set before the policy is
// shared between threads.
class CandidateLimit {
 public:
  void set_max_candidates(Index n) {
    if (n < 1) throw ConfigError("max_candidates: expected >= 1, got " + std::to_string(n));
    max_candidates_ = n;
  }
  Index max_candidates() const noexcept { return max_candidates_; }

 private:
  Index max_candidates_ = kDefaultMaxCandidates;
};

namespace detail {

// The first non-finite element of m (caller knows there is one), for the message.
inline void first_non_finite(ConstMatrixRef m, Index& row, Index& col, double& value) noexcept {
  for (Index c = 0; c < m.cols(); ++c)
    for (Index r = 0; r < m.rows(); ++r)
      if (!std::isfinite(m(r, c))) {
        row = r;
        col = c;
        value = static_cast<double>(m(r, c));
        return;
      }
}

// Whether every entry of m is finite. x * 0 is 0 for a finite x and NaN for inf or NaN,
// so the sum of x * 0 is NaN exactly when some entry is not: one vectorised reduction with
// four running sums (a single one waits on each add; Eigen's allFinite() took ~4% of an
// AGE-TS request of 1000 candidates, and its (x * 0).sum() ~5.6 ns per candidate).
inline bool all_finite(ConstMatrixRef m) noexcept {
  constexpr Index step = 4 * simd::kWidth;
  simd::Vec sum[4] = {};
  Scalar tail = 0;
  for (Index c = 0; c < m.cols(); ++c) {
    const Scalar* p = m.col(c).data();
    Index i = 0;
    for (; i + step <= m.rows(); i += step)
      for (int q = 0; q < 4; ++q) sum[q] += simd::load(p + i + q * simd::kWidth) * Scalar(0);
    for (; i < m.rows(); ++i) tail += p[i] * Scalar(0);
  }
  return !std::isnan(simd::sum_lanes((sum[0] + sum[1]) + (sum[2] + sum[3])) + tail);
}

// Every check a request must pass before it is scored, without throwing or allocating:
// at least 1 and at most max_candidates candidates, the model's item_dim and user_dim
// rows, a user with 1 or N columns, one impression count per candidate (when given) and
// finite embeddings (one all_finite() pass over each matrix). Sizes are checked before any
// element is read.
inline Status check_request(const Request& request, Index user_dim, Index item_dim, Index max_candidates) noexcept {
  const Index n = request.size();
  if (n == 0)
    return Status::format(StatusCode::input, "request: items: expected at least 1 candidate column, got 0");
  if (n > max_candidates)
    return Status::format(StatusCode::input, "request: items: expected at most %lld candidates (max_candidates), got %lld",
                          static_cast<long long>(max_candidates), static_cast<long long>(n));
  if (request.items.rows() != item_dim)
    return Status::format(StatusCode::dimension, "request: items rows (item_dim): expected %lld, got %lld",
                          static_cast<long long>(item_dim), static_cast<long long>(request.items.rows()));
  if (request.user.rows() != user_dim)
    return Status::format(StatusCode::dimension, "request: user rows (user_dim): expected %lld, got %lld",
                          static_cast<long long>(user_dim), static_cast<long long>(request.user.rows()));
  if (request.user.cols() != 1 && request.user.cols() != n)
    return Status::format(StatusCode::dimension, "request: user columns: expected 1 or %lld, got %lld",
                          static_cast<long long>(n), static_cast<long long>(request.user.cols()));
  if (!request.impressions.empty() && request.impressions.size() != static_cast<std::size_t>(n))
    return Status::format(StatusCode::dimension,
                          "request: impressions (one count per candidate): expected %lld, got %zu",
                          static_cast<long long>(n), request.impressions.size());
  const ConstMatrixRef* parts[] = {&request.items, &request.user};
  const char* names[] = {"items", "user"};
  for (int p = 0; p < 2; ++p) {
    if (all_finite(*parts[p])) continue;
    Index row = 0, col = 0;
    double value = 0.0;
    first_non_finite(*parts[p], row, col, value);
    return Status::format(StatusCode::input, "request: %s(%lld, %lld): expected a finite value, got %g", names[p],
                          static_cast<long long>(row), static_cast<long long>(col), value);
  }
  return Status();
}

// Whether every entry of a row of scores is finite: all_finite() over it as one column.
inline bool all_finite_row(const RowVector& v) noexcept {
  return all_finite(Eigen::Map<const Matrix>(v.data(), v.size(), 1));
}

// check_request() as an exception (DimensionError, InputError).
inline void require_request(const Request& request, Index user_dim, Index item_dim, Index max_candidates) {
  const Status s = check_request(request, user_dim, item_dim, max_candidates);
  if (!s.ok()) s.raise();
}

}  // namespace detail

inline Status ScoredRequest::check_finite() const noexcept {
  const RowVector* parts[] = {&base, &delta, &explored};
  const char* names[] = {"base", "delta", "explored"};
  for (int p = 0; p < 3; ++p) {
    const RowVector& v = *parts[p];
    if (detail::all_finite_row(v)) continue;
    Index i = 0;
    while (i + 1 < v.size() && std::isfinite(v[i])) ++i;
    return Status::format(StatusCode::input,
                          "scores: %s[%lld]: expected a finite value, got %g (the model's weights, the request's "
                          "embeddings or a setting are so large that float overflows)",
                          names[p], static_cast<long long>(i), static_cast<double>(v[i]));
  }
  return Status();
}

namespace detail {
// check_finite() as an exception (InputError).
inline void require_finite_scores(const ScoredRequest& out) {
  const Status s = out.check_finite();
  if (!s.ok()) s.raise();
}
}  // namespace detail

// The non-throwing form of policy.score() for any Explorer: the status of the exception
// score() would have thrown (its code and message), or ok. Never throws. A policy with a
// noexcept member try_score (AgeScorer) also rejects bad requests without throwing
// internally; prefer that one when it exists.
template <class P>
  requires Explorer<P>
Status try_score(const P& policy, const Request& request, ScoredRequest& out, typename P::Workspace& ws) noexcept {
  if constexpr (requires {
                  { policy.try_score(request, out, ws) } noexcept -> std::same_as<Status>;
                }) {
    return policy.try_score(request, out, ws);
  } else {
    try {
      policy.score(request, out, ws);
      return Status();
    } catch (...) {
      return Status::from_current_exception();
    }
  }
}

// An Explorer whose state learns from the feedback of the candidate that was shown
// (e.g. Gradient-TS's per-weight accumulator). The replay study calls observe() for every
// accepted event, after the model has been updated or not, as the policy documents.
template <class P>
concept LearningExplorer = Explorer<P> && requires(P& policy, const Request& request, Index shown, bool clicked) {
  policy.observe(request, shown, clicked);
};

}  // namespace age
