// Perturbation policies: the pseudo-exploration move dh of every candidate and the
// explored score y_e = f(h + dh | theta) ((M6)-(M8), (M12)-(M14); METHOD.md,
// "Pseudo-exploration" and "FGM and PGD").
//
// A Perturbation policy P is written once against the evaluation engine
// (age/explore/engine.hpp). Requirements (concept PerturbationPolicy<P, Engine>):
//   template <class Engine> struct Workspace   per-thread scratch, default constructible
//   void validate() const                      throws ConfigError for a bad setting
//   p.explore(engine, base, delta, rng, ws, explored)
//       explored (Eigen::Ref<RowVector>, k): the probability after the move of each of the
//       engine's k candidates, given their no-dropout probabilities `base` and their
//       uncertainty `delta`. Const (thread-safe); every random draw from `rng`.
// The moving policies (Fgm, Pgd, RandomDirection: a `target` and a MoveWorkspace) may
// move the user part too (PerturbTarget::whole_input, moves_user(p)), which the scorer
// refuses on an engine without moves_user; it sizes their workspace for all N candidates
// before gathering the open ones (reserve_moves), so that nothing allocates later. They
// leave dh in ws.d_items (item_dim x k) and, for PerturbTarget::whole_input, ws.d_user
// (user_dim x k), except where an engine's one-pass FGM shortcut scores a certified move
// from the gradient's norm alone.
//
// lambda' (`lambda`) is in the units of the embeddings h. The default 1e-3 is the paper's
// offline value for ITS model; the right value depends on the scale of your embeddings
// (a move of 1e-3 is large for embeddings of norm 1e-2 and invisible for norm 1e2), so
// set it for your model, e.g. by looking at how far the explored scores move.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/scratch.hpp"
#include "age/core/types.hpp"
#include "age/explore/engine.hpp"

namespace age {

template <class P, class E>
concept PerturbationPolicy =
    EvaluationEngine<E> && requires { typename P::template Workspace<E>; } &&
    std::default_initializable<typename P::template Workspace<E>> &&
    requires(const P& p, E& engine, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
             typename P::template Workspace<E>& ws, Eigen::Ref<RowVector> explored) {
      p.validate();
      p.explore(engine, base, delta, rng, ws, explored);
    };

// Which part of h = [user | item] is moved (open in the paper): the item embeddings
// (default; the authors' summary says "ad embeddings") or the whole input, in which case
// every candidate gets its own moved copy of the user vector (PlainEngine only).
enum class PerturbTarget { items, whole_input };

// Scratch of the moving policies, grow-only: d_* hold the move, g_* the gradient, one
// column per candidate; only the first k columns are meaningful after a request of k.
struct MoveWorkspace {
  Matrix d_items, d_user;
  Matrix g_items, g_user;
  RowVector radius;  // eps_n = lambda' |delta_n|
  RowVector length;  // FGM's signed move lengths, for the engine's one-pass shortcut
};

namespace detail {

inline void check_lambda(const char* policy, double lambda) {
  check_scale(std::string(policy) + ".lambda", lambda, /*positive=*/false);
}

// Sizes the move workspace for up to n candidates of `engine`.
template <class E>
void reserve_move(const E& engine, bool whole, Index n, MoveWorkspace& ws) {
  scratch_head(ws.radius, n);
  scratch_head(ws.length, n);
  scratch_cols(ws.d_items, engine.item_dim(), n);
  scratch_cols(ws.g_items, engine.item_dim(), n);
  if (whole) {
    scratch_cols(ws.d_user, engine.user_dim(), n);
    scratch_cols(ws.g_user, engine.user_dim(), n);
  }
}

// eps_n = lambda' |delta_n| (the L2 radius of candidate n's move) for the engine's k
// candidates and, unless the caller writes every column itself (zero_move = false), a zero
// move. Returns false when every radius is zero (nothing to move).
template <class E>
bool start_move(const E& engine, double lambda, bool whole, Eigen::Ref<const RowVector> delta, MoveWorkspace& ws,
                bool zero_move = true) {
  const Index n = engine.size();
  detail::require_dim("perturbation: delta length", static_cast<std::size_t>(n), static_cast<std::size_t>(delta.size()));
  reserve_move(engine, whole, n, ws);
  bool any = false;
  for (Index i = 0; i < n; ++i) {
    ws.radius[i] = static_cast<Scalar>(lambda * std::abs(static_cast<double>(delta[i])));
    any = any || ws.radius[i] > 0;
  }
  if (zero_move) {
    ws.d_items.leftCols(n).setZero();
    if (whole) ws.d_user.leftCols(n).setZero();
  }
  return any;
}

// ||g_n||_2 over the perturbed part of candidate n; 0 for a zero or non-finite gradient,
// which then yields no move (never a NaN).
inline double gradient_norm(bool whole, const MoveWorkspace& ws, Index n) {
  double sq = static_cast<double>(ws.g_items.col(n).squaredNorm());
  if (whole) sq += static_cast<double>(ws.g_user.col(n).squaredNorm());
  const double norm = std::sqrt(sq);
  return (std::isfinite(norm) && norm > 0.0) ? norm : 0.0;
}

inline void add_scaled_gradient(bool whole, MoveWorkspace& ws, Index n, Scalar scale) {
  ws.d_items.col(n) += scale * ws.g_items.col(n);
  if (whole) ws.d_user.col(n) += scale * ws.g_user.col(n);
}

// FGM's move of candidate n from its gradient:
//   dh_n = sign(delta_n) * (eps_n / ||g_n||) * g_n, or 0 when ||g_n|| is 0 or not finite.
inline void set_fgm_move(bool whole, Eigen::Ref<const RowVector> delta, MoveWorkspace& ws, Index n) {
  const double norm = gradient_norm(whole, ws, n);
  if (!(norm > 0.0)) {
    ws.d_items.col(n).setZero();
    if (whole) ws.d_user.col(n).setZero();
    return;
  }
  const Scalar scale = static_cast<Scalar>(ws.radius[n] / norm);
  const Scalar signed_scale = delta[n] < 0 ? -scale : scale;
  ws.d_items.col(n) = signed_scale * ws.g_items.col(n);
  if (whole) ws.d_user.col(n) = signed_scale * ws.g_user.col(n);
}

inline double move_norm(bool whole, const MoveWorkspace& ws, Index n) {
  double sq = static_cast<double>(ws.d_items.col(n).squaredNorm());
  if (whole) sq += static_cast<double>(ws.d_user.col(n).squaredNorm());
  return std::sqrt(sq);
}

inline void scale_move(bool whole, MoveWorkspace& ws, Index n, Scalar scale) {
  ws.d_items.col(n) *= scale;
  if (whole) ws.d_user.col(n) *= scale;
}

// TS: a negative delta_y moves against the ascent direction.
inline void apply_delta_sign(bool whole, Eigen::Ref<const RowVector> delta, MoveWorkspace& ws) {
  for (Index n = 0; n < delta.size(); ++n)
    if (delta[n] < 0) scale_move(whole, ws, n, Scalar(-1));
}

// A uniformly random direction of length `length` for candidate n (Gaussian, normalised).
inline void random_direction(bool whole, Rng& rng, MoveWorkspace& ws, Index n, double length) {
  for (Index r = 0; r < ws.d_items.rows(); ++r) ws.d_items(r, n) = static_cast<Scalar>(rng.normal());
  if (whole)
    for (Index r = 0; r < ws.d_user.rows(); ++r) ws.d_user(r, n) = static_cast<Scalar>(rng.normal());
  const double norm = move_norm(whole, ws, n);
  scale_move(whole, ws, n, norm > 0.0 ? static_cast<Scalar>(length / norm) : Scalar(0));
}

// The engine's arguments for the user part: none unless the whole input moves.
inline Matrix* user_part(bool whole, Matrix& m) noexcept { return whole ? &m : nullptr; }

}  // namespace detail

// A moving policy: one whose move has a target and lives in a MoveWorkspace.
template <class P>
concept MovingPolicy = requires(const P& p) {
  { p.target } -> std::convertible_to<PerturbTarget>;
  requires std::same_as<typename P::template Workspace<void>, MoveWorkspace>;
};

// Whether a moving policy moves the user part too (PerturbTarget::whole_input).
template <MovingPolicy P>
bool moves_user(const P& p) noexcept {
  return p.target == PerturbTarget::whole_input;
}
// Sizes a moving policy's workspace for up to n candidates of `engine`.
template <MovingPolicy P, class E>
void reserve_moves(const P& p, const E& engine, Index n, MoveWorkspace& ws) {
  detail::reserve_move(engine, moves_user(p), n, ws);
}

// FGM: one step of length lambda' * |delta_y| along the normalised gradient, (M12):
//   dh = lambda' * delta_y * grad_h f / ||grad_h f||_2        (per candidate, L2)
// (gradient of the probability; the logit's has the same direction).
struct Fgm {
  double lambda = 1e-3;
  PerturbTarget target = PerturbTarget::items;

  template <class E>
  using Workspace = MoveWorkspace;

  void validate() const { detail::check_lambda("Fgm", lambda); }

  template <EvaluationEngine E>
  void explore(E& engine, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng&,
               MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const bool whole = moves_user(*this);
    const Index n = engine.size();
    // The one-pass shortcut writes no move, and the other path writes every column.
    if (!detail::start_move(engine, lambda, whole, delta, ws, /*zero_move=*/false)) {
      ws.d_items.leftCols(n).setZero();
      if (whole) ws.d_user.leftCols(n).setZero();
      explored = base;  // every radius is zero: h + 0 is h
      return;
    }
    if (!whole) {
      auto length = ws.length.head(n);
      for (Index i = 0; i < n; ++i) length[i] = delta[i] < 0 ? -ws.radius[i] : ws.radius[i];
      if (engine.normalized_move_probabilities(base, length, explored)) return;
    }
    engine.gradient(base, ws.g_items, detail::user_part(whole, ws.g_user));
    for (Index i = 0; i < n; ++i) detail::set_fgm_move(whole, delta, ws, i);
    engine.probabilities_at(ws.d_items, detail::user_part(whole, ws.d_user), explored);
  }
};

// PGD on the L2 ball of radius eps = lambda' * |delta_y| around h, (M13) and (M14):
//   r_0 = 0 (or a random point at random_start * eps)
//   r_{t+1} = Proj_{||r|| <= eps}( r_t + alpha * g(h + r_t) / ||g(h + r_t)|| ),  t < T
//   alpha = step_scale * eps / T   (defaults T = 3, step_scale = 2.5)
// then dh = sign(delta_y) * r_T. With T = 1 and alpha >= eps this is exactly FGM.
struct Pgd {
  double lambda = 1e-3;
  PerturbTarget target = PerturbTarget::items;
  std::size_t steps = 3;
  double step_scale = 2.5;
  double random_start = 0.0;  // fraction of eps, in [0, 1]; 0 = start at h

  template <class E>
  using Workspace = MoveWorkspace;

  void validate() const {
    detail::check_lambda("Pgd", lambda);
    if (steps == 0) throw ConfigError("Pgd.steps: expected >= 1, got 0");
    detail::check_scale("Pgd.step_scale", step_scale, /*positive=*/true);
    if (!(random_start >= 0.0 && random_start <= 1.0))
      throw ConfigError("Pgd.random_start: expected a value in [0, 1], got " + std::to_string(random_start));
  }

  // Each step after the first costs one moved pass and its gradient (on the request
  // passes: pre0 + W_item r, or none for a certified linear move).
  template <EvaluationEngine E>
  void explore(E& engine, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
               MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const bool whole = moves_user(*this);
    const Index n = engine.size();
    if (!detail::start_move(engine, lambda, whole, delta, ws)) {
      explored = base;
      return;
    }
    const bool random = random_start > 0.0;
    if (random)
      for (Index i = 0; i < n; ++i) detail::random_direction(whole, rng, ws, i, random_start * ws.radius[i]);
    Matrix* g_user = detail::user_part(whole, ws.g_user);
    const Matrix* d_user = detail::user_part(whole, ws.d_user);
    for (std::size_t t = 0; t < steps; ++t) {
      if (t == 0 && !random)
        engine.gradient(base, ws.g_items, g_user);
      else
        engine.gradient_at(ws.d_items, d_user, ws.g_items, g_user);
      step(whole, n, ws);
    }
    detail::apply_delta_sign(whole, delta, ws);
    engine.probabilities_at(ws.d_items, d_user, explored);
  }

  // One step of (M13) for every candidate: r += alpha * g / ||g||, then the projection
  // back onto the ball ||r|| <= eps (the candidate's radius).
  void step(bool whole, Index n_cand, MoveWorkspace& ws) const {
    for (Index n = 0; n < n_cand; ++n) {
      const double eps = ws.radius[n];
      const double norm = detail::gradient_norm(whole, ws, n);
      if (eps <= 0.0 || norm == 0.0) continue;
      const double alpha = step_scale * eps / static_cast<double>(steps);
      detail::add_scaled_gradient(whole, ws, n, static_cast<Scalar>(alpha / norm));
      const double r = detail::move_norm(whole, ws, n);
      if (r > eps) detail::scale_move(whole, ws, n, static_cast<Scalar>(eps / r));  // projection
    }
  }
};

// Ablation "AGE without g~" (Table 2, METHOD.md "Baselines"): a uniformly random unit
// direction instead of the gradient, with the same length lambda' * |delta_y| and the sign
// of delta_y.
struct RandomDirection {
  double lambda = 1e-3;
  PerturbTarget target = PerturbTarget::items;

  template <class E>
  using Workspace = MoveWorkspace;

  void validate() const { detail::check_lambda("RandomDirection", lambda); }

  template <EvaluationEngine E>
  void explore(E& engine, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
               MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const bool whole = moves_user(*this);
    if (!detail::start_move(engine, lambda, whole, delta, ws)) {
      explored = base;
      return;
    }
    for (Index i = 0; i < engine.size(); ++i) detail::random_direction(whole, rng, ws, i, ws.radius[i]);
    detail::apply_delta_sign(whole, delta, ws);
    engine.probabilities_at(ws.d_items, detail::user_part(whole, ws.d_user), explored);
  }
};

// No move: the explored score is the base prediction (uncertainty and gate still reported).
struct NoPerturbation {
  template <class E>
  struct Workspace {};

  void validate() const {}

  template <EvaluationEngine E>
  void explore(E&, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector>, Rng&, Workspace<E>&,
               Eigen::Ref<RowVector> explored) const {
    explored = base;
  }
};

// Control for the pseudo-exploration move (METHOD.md, "Extensions beyond the paper"): an
// additive score bonus of the same form and no move at all,
//   y_e = y + scale * delta_y
// With a count-aware delta_y (ImpressionScaled) this is a classic count bonus: it isolates
// what AGE's move adds beyond "explore what has been seen little". y_e is a score, not a
// probability (it may leave [0, 1]).
struct AdditiveBonus {
  double scale = 1.0;

  template <class E>
  struct Workspace {};

  void validate() const {
    detail::check_scale("AdditiveBonus.scale", scale, /*positive=*/false);
  }

  template <EvaluationEngine E>
  void explore(E&, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng&, Workspace<E>&,
               Eigen::Ref<RowVector> explored) const {
    detail::require_dim("AdditiveBonus: delta length", static_cast<std::size_t>(base.size()),
                        static_cast<std::size_t>(delta.size()));
    explored = base + static_cast<Scalar>(scale) * delta;
  }
};

}  // namespace age
