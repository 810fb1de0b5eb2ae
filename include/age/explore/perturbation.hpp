// Perturbation policies: the pseudo-exploration move dh of every candidate and the
// explored score y_e = f(h + dh | theta) (AGE-METHOD.md, "Pseudo-exploration" and
// "FGM and PGD").
//
// A Perturbation policy P for a model M (concept PerturbationPolicy<P, M>) provides
//   template <class M> struct Workspace        per-thread scratch, default constructible
//   void validate() const                      throws ConfigError for a bad setting
//   p.explore(model, user, items, base, delta, rng, model_ws, ws, explored)
//       explored (Eigen::Ref<RowVector>, N): the probability after the move, given the
//       no-dropout probabilities `base` and the uncertainty `delta` of every candidate.
//       Const (thread-safe); all randomness from `rng`.
// The moving policies (Fgm, Pgd, RandomDirection) also expose move(...), which leaves dh in
// ws.d_items (item_dim x N) and, for PerturbTarget::whole_input, ws.d_user (user_dim x N).
//
// Optionally, for a model with request passes (RequestPassModel, age/model/tower.hpp),
//   p.request_ready()  and  p.explore_request(model, base, delta, rng, model_ws, ws, explored)
// do explore() on the request cached in model_ws by model.begin_request() (possibly
// narrowed to a subset by model.request_select()): the gradient at h walks down from the
// cached pass and h + dh costs pre0 + W_item dh, no full forward. The AGE scorer uses it when
// request_ready() (the library's policies: when only the item part moves). Same random
// draws, same values up to float rounding; the buffers of ws only grow, and only their
// first N columns are meaningful afterwards (Fgm's may leave no move in ws.d_items: with
// a model that has request_normalized_move_logits(), e.g. Tower, a certified move is
// scored from the gradient's norm alone).
//
// lambda' (`lambda`) is in the units of the embeddings h. The default 1e-3 is the paper's
// offline value for ITS model; the right value depends on the scale of your embeddings
// (a move of 1e-3 is large for embeddings of norm 1e-2 and invisible for norm 1e2), so
// set it for your model, e.g. by looking at how far the explored scores move.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"

namespace age {

template <class P, class M>
concept PerturbationPolicy =
    CtrModel<M> && requires { typename P::template Workspace<M>; } &&
    std::default_initializable<typename P::template Workspace<M>> &&
    requires(const P& p, const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
             Eigen::Ref<const RowVector> delta, Rng& rng, typename M::Workspace& model_ws,
             typename P::template Workspace<M>& ws, Eigen::Ref<RowVector> explored) {
      p.validate();
      p.explore(model, user, items, base, delta, rng, model_ws, ws, explored);
    };

// Which part of h = [user | item] is moved (open in the paper): the item embeddings
// (default; the authors' summary says "ad embeddings") or the whole input, in which case
// every candidate gets its own moved copy of the user vector.
enum class PerturbTarget { items, whole_input };

// Scratch of the moving policies. d_* hold the move, g_* the gradient, moved_* h + move.
struct MoveWorkspace {
  Matrix d_items, d_user;
  Matrix g_items, g_user;
  Matrix moved_items, moved_user;
  RowVector radius, prob;
  RowVector d_logit;  // request passes: dy/dz = y (1 - y)
  RowVector length;   // request passes: FGM's signed move lengths lambda' delta_y
};

namespace detail {

inline void check_lambda(const char* policy, double lambda) {
  if (!(lambda >= 0.0 && std::isfinite(lambda)))
    throw ConfigError(std::string(policy) + ".lambda: expected a finite value >= 0, got " + std::to_string(lambda));
}

inline void check_user_columns(ConstMatrixRef user, Index n) {
  if (user.cols() != 1 && user.cols() != n)
    throw DimensionError("perturbation: user columns: expected 1 or " + std::to_string(n) + ", got " +
                         std::to_string(user.cols()));
}

// Zero move for n candidates; eps_n = lambda' * |delta_n| (the L2 radius of the move).
// Returns false when every radius is zero (nothing to move).
inline bool start_move(double lambda, bool whole, ConstMatrixRef user, ConstMatrixRef items,
                       Eigen::Ref<const RowVector> delta, MoveWorkspace& ws) {
  const Index n = items.cols();
  detail::require_dim("perturbation: delta length", static_cast<std::size_t>(n), static_cast<std::size_t>(delta.size()));
  check_user_columns(user, n);
  ws.d_items.setZero(items.rows(), n);
  ws.d_user.setZero(whole ? user.rows() : 0, whole ? n : 0);
  ws.radius.resize(n);
  bool any = false;
  for (Index i = 0; i < n; ++i) {
    ws.radius[i] = static_cast<Scalar>(lambda * std::abs(static_cast<double>(delta[i])));
    any = any || ws.radius[i] > 0;
  }
  return any;
}

// The moved input h + dh of every candidate (user part only when the whole input moves).
inline void build_moved(bool whole, ConstMatrixRef user, ConstMatrixRef items, MoveWorkspace& ws) {
  ws.moved_items = items + ws.d_items;
  if (whole) {
    if (user.cols() == 1)
      ws.moved_user = ws.d_user.colwise() + user.col(0);
    else
      ws.moved_user = user + ws.d_user;
  }
}

// Gradient of f at h + dh (at h itself when at_origin) into ws.g_items / ws.g_user.
template <CtrModel M>
void gradient_at(const M& model, bool whole, bool at_origin, ConstMatrixRef user, ConstMatrixRef items,
                 typename M::Workspace& model_ws, MoveWorkspace& ws) {
  ws.prob.resize(items.cols());
  Matrix* d_user = whole ? &ws.g_user : nullptr;
  if (at_origin) {
    model.probability_gradient(user, items, nullptr, model_ws, ws.prob, &ws.g_items, d_user);
  } else {
    build_moved(whole, user, items, ws);
    if (whole)
      model.probability_gradient(ws.moved_user, ws.moved_items, nullptr, model_ws, ws.prob, &ws.g_items, d_user);
    else
      model.probability_gradient(user, ws.moved_items, nullptr, model_ws, ws.prob, &ws.g_items, d_user);
  }
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

// FGM's move of candidate n from its gradient, written once:
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

// y_e = f(h + dh | theta), no dropout.
template <CtrModel M>
void evaluate_moved(const M& model, bool whole, ConstMatrixRef user, ConstMatrixRef items,
                    typename M::Workspace& model_ws, MoveWorkspace& ws, Eigen::Ref<RowVector> explored) {
  build_moved(whole, user, items, ws);
  if (whole)
    predict_probabilities(model, ws.moved_user, ws.moved_items, nullptr, model_ws, explored);
  else
    predict_probabilities(model, user, ws.moved_items, nullptr, model_ws, explored);
}

// --- Request passes (RequestPassModel) -------------------------------------------------------

// Zero move for the request's n candidates (unless the caller writes every column
// itself: zero_move = false) and eps_n = lambda' |delta_n|, in grow-only buffers.
// Returns false when every radius is zero (nothing to move).
inline bool start_request_move(double lambda, Index item_dim, Eigen::Ref<const RowVector> delta, MoveWorkspace& ws,
                               bool zero_move = true) {
  const Index n = delta.size();
  auto radius = scratch_head(ws.radius, n);
  bool any = false;
  for (Index i = 0; i < n; ++i) {
    radius[i] = static_cast<Scalar>(lambda * std::abs(static_cast<double>(delta[i])));
    any = any || radius[i] > 0;
  }
  auto d = scratch_cols(ws.d_items, item_dim, n);
  if (zero_move) d.setZero();
  return any;
}

// Sizes every buffer the request passes use for up to n candidates, so that later
// requests of at most n (e.g. a varying number of open candidates) allocate nothing.
inline void reserve_request_move(Index n, Index item_dim, MoveWorkspace& ws) {
  scratch_head(ws.radius, n);
  scratch_head(ws.prob, n);
  scratch_head(ws.d_logit, n);
  scratch_head(ws.length, n);
  scratch_cols(ws.d_items, item_dim, n);
  scratch_cols(ws.g_items, item_dim, n);
}

// dy/d(items) into ws.g_items (item_dim x n) at the request's cached point (moved =
// false) or at its last moved pass, given the probabilities `prob` there.
template <RequestPassModel M>
void request_gradient(const M& model, bool moved, Index item_dim, Eigen::Ref<const RowVector> prob,
                      typename M::Workspace& model_ws, MoveWorkspace& ws) {
  const Index n = prob.size();
  auto d_logit = scratch_head(ws.d_logit, n);
  for (Index i = 0; i < n; ++i) d_logit[i] = prob[i] * (Scalar(1) - prob[i]);
  auto g = scratch_cols(ws.g_items, item_dim, n);
  if (moved)
    model.request_moved_item_gradient(d_logit, model_ws, g);
  else
    model.request_item_gradient(d_logit, model_ws, g);
}

// Probabilities at h + dh (dh in ws.d_items) of the request's n candidates.
template <RequestPassModel M>
void request_moved_probabilities(const M& model, Index n, typename M::Workspace& model_ws, MoveWorkspace& ws,
                                 Eigen::Ref<RowVector> prob) {
  model.request_moved_logits(ws.d_items.leftCols(n), model_ws, prob);
  sigmoid_in_place(prob);
}

// explore() of every policy that is defined by its move: move, then y_e = f(h + dh).
template <class P, CtrModel M>
void explore_by_move(const P& policy, const M& model, ConstMatrixRef user, ConstMatrixRef items,
                     Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
                     typename M::Workspace& model_ws, MoveWorkspace& ws, Eigen::Ref<RowVector> explored) {
  if (!policy.move(model, user, items, delta, rng, model_ws, ws)) {
    explored = base;  // every radius is zero: h + 0 is h
    return;
  }
  evaluate_moved(model, policy.target == PerturbTarget::whole_input, user, items, model_ws, ws, explored);
}

}  // namespace detail

// FGM: one step of length lambda' * |delta_y| along the normalised gradient,
//   dh = lambda' * delta_y * grad_h f / ||grad_h f||_2        (per candidate, L2)
// (gradient of the probability; the logit's has the same direction).
struct Fgm {
  double lambda = 1e-3;
  PerturbTarget target = PerturbTarget::items;

  void validate() const { detail::check_lambda("Fgm", lambda); }

  template <class M>
  using Workspace = MoveWorkspace;

  template <CtrModel M>
  void explore(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Eigen::Ref<const RowVector> delta, Rng& rng, typename M::Workspace& model_ws, MoveWorkspace& ws,
               Eigen::Ref<RowVector> explored) const {
    detail::explore_by_move(*this, model, user, items, base, delta, rng, model_ws, ws, explored);
  }

  // Leaves dh in ws.d_items (and ws.d_user for the whole input); returns false (and a zero
  // move) when every radius is zero.
  template <CtrModel M>
  bool move(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> delta, Rng&,
            typename M::Workspace& model_ws, MoveWorkspace& ws) const {
    const bool whole = target == PerturbTarget::whole_input;
    if (!detail::start_move(lambda, whole, user, items, delta, ws)) return false;
    detail::gradient_at(model, whole, true, user, items, model_ws, ws);
    for (Index n = 0; n < items.cols(); ++n) detail::set_fgm_move(whole, delta, ws, n);
    return true;
  }

  bool request_ready() const noexcept { return target == PerturbTarget::items; }
  template <class M>
  void reserve_request(const M& model, Index n, MoveWorkspace& ws) const {
    detail::reserve_request_move(n, static_cast<Index>(model.item_dim()), ws);
  }

  // explore() on the request passes (top of this file); the item part only.
  template <RequestPassModel M>
  void explore_request(const M& model, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng&,
                       typename M::Workspace& model_ws, MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const Index n = base.size(), di = static_cast<Index>(model.item_dim());
    if (!detail::start_request_move(lambda, di, delta, ws, false)) {
      explored = base;
      return;
    }
    if constexpr (requires { model.request_normalized_move_logits(base, base, model_ws, explored); }) {
      // The model's one-pass form (Tower: certified linear moves), when it has one.
      auto d_logit = detail::scratch_head(ws.d_logit, n);
      auto length = detail::scratch_head(ws.length, n);
      for (Index i = 0; i < n; ++i) {
        d_logit[i] = base[i] * (Scalar(1) - base[i]);
        length[i] = delta[i] < 0 ? -ws.radius[i] : ws.radius[i];
      }
      if (model.request_normalized_move_logits(d_logit, length, model_ws, explored)) {
        sigmoid_in_place(explored);
        return;
      }
    }
    detail::request_gradient(model, false, di, base, model_ws, ws);
    for (Index i = 0; i < n; ++i) detail::set_fgm_move(false, delta, ws, i);
    detail::request_moved_probabilities(model, n, model_ws, ws, explored);
  }
};

// PGD on the L2 ball of radius eps = lambda' * |delta_y| around h:
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

  void validate() const {
    detail::check_lambda("Pgd", lambda);
    if (steps == 0) throw ConfigError("Pgd.steps: expected >= 1, got 0");
    if (!(step_scale > 0.0 && std::isfinite(step_scale)))
      throw ConfigError("Pgd.step_scale: expected a finite value > 0, got " + std::to_string(step_scale));
    if (!(random_start >= 0.0 && random_start <= 1.0))
      throw ConfigError("Pgd.random_start: expected a value in [0, 1], got " + std::to_string(random_start));
  }

  template <class M>
  using Workspace = MoveWorkspace;

  template <CtrModel M>
  void explore(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Eigen::Ref<const RowVector> delta, Rng& rng, typename M::Workspace& model_ws, MoveWorkspace& ws,
               Eigen::Ref<RowVector> explored) const {
    detail::explore_by_move(*this, model, user, items, base, delta, rng, model_ws, ws, explored);
  }

  template <CtrModel M>
  bool move(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> delta, Rng& rng,
            typename M::Workspace& model_ws, MoveWorkspace& ws) const {
    const bool whole = target == PerturbTarget::whole_input;
    if (!detail::start_move(lambda, whole, user, items, delta, ws)) return false;
    const Index n_cand = items.cols();
    const bool random = random_start > 0.0;
    if (random)
      for (Index n = 0; n < n_cand; ++n) detail::random_direction(whole, rng, ws, n, random_start * ws.radius[n]);
    for (std::size_t t = 0; t < steps; ++t) {
      detail::gradient_at(model, whole, t == 0 && !random, user, items, model_ws, ws);
      step(whole, n_cand, ws);
    }
    detail::apply_delta_sign(whole, delta, ws);
    return true;
  }

  // One step of Eq. (PGD) for every candidate: r += alpha * g / ||g||, then the projection
  // back onto the ball ||r|| <= eps (the candidate's radius). Shared by both paths.
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

  bool request_ready() const noexcept { return target == PerturbTarget::items; }
  template <class M>
  void reserve_request(const M& model, Index n, MoveWorkspace& ws) const {
    detail::reserve_request_move(n, static_cast<Index>(model.item_dim()), ws);
  }

  // explore() on the request passes (top of this file); the item part only. Each step
  // after the first costs one moved pass (pre0 + W_item r) and its gradient.
  template <RequestPassModel M>
  void explore_request(const M& model, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
                       typename M::Workspace& model_ws, MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const Index n_cand = base.size(), di = static_cast<Index>(model.item_dim());
    if (!detail::start_request_move(lambda, di, delta, ws)) {
      explored = base;
      return;
    }
    const bool random = random_start > 0.0;
    if (random)
      for (Index n = 0; n < n_cand; ++n) detail::random_direction(false, rng, ws, n, random_start * ws.radius[n]);
    for (std::size_t t = 0; t < steps; ++t) {
      if (t == 0 && !random) {
        detail::request_gradient(model, false, di, base, model_ws, ws);
      } else {
        auto prob = detail::scratch_head(ws.prob, n_cand);
        detail::request_moved_probabilities(model, n_cand, model_ws, ws, prob);
        detail::request_gradient(model, true, di, prob, model_ws, ws);
      }
      step(false, n_cand, ws);
    }
    detail::apply_delta_sign(false, delta, ws);
    detail::request_moved_probabilities(model, n_cand, model_ws, ws, explored);
  }
};

// Ablation "AGE without g~" (Table 2): a uniformly random unit direction instead of the
// gradient, with the same length lambda' * |delta_y| and the sign of delta_y.
struct RandomDirection {
  double lambda = 1e-3;
  PerturbTarget target = PerturbTarget::items;

  void validate() const { detail::check_lambda("RandomDirection", lambda); }

  template <class M>
  using Workspace = MoveWorkspace;

  template <CtrModel M>
  void explore(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Eigen::Ref<const RowVector> delta, Rng& rng, typename M::Workspace& model_ws, MoveWorkspace& ws,
               Eigen::Ref<RowVector> explored) const {
    detail::explore_by_move(*this, model, user, items, base, delta, rng, model_ws, ws, explored);
  }

  template <CtrModel M>
  bool move(const M&, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> delta, Rng& rng,
            typename M::Workspace&, MoveWorkspace& ws) const {
    const bool whole = target == PerturbTarget::whole_input;
    if (!detail::start_move(lambda, whole, user, items, delta, ws)) return false;
    for (Index n = 0; n < items.cols(); ++n) detail::random_direction(whole, rng, ws, n, ws.radius[n]);
    detail::apply_delta_sign(whole, delta, ws);
    return true;
  }

  bool request_ready() const noexcept { return target == PerturbTarget::items; }
  template <class M>
  void reserve_request(const M& model, Index n, MoveWorkspace& ws) const {
    detail::reserve_request_move(n, static_cast<Index>(model.item_dim()), ws);
  }

  template <RequestPassModel M>
  void explore_request(const M& model, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector> delta, Rng& rng,
                       typename M::Workspace& model_ws, MoveWorkspace& ws, Eigen::Ref<RowVector> explored) const {
    const Index n_cand = base.size();
    if (!detail::start_request_move(lambda, static_cast<Index>(model.item_dim()), delta, ws)) {
      explored = base;
      return;
    }
    for (Index n = 0; n < n_cand; ++n) detail::random_direction(false, rng, ws, n, ws.radius[n]);
    detail::apply_delta_sign(false, delta, ws);
    detail::request_moved_probabilities(model, n_cand, model_ws, ws, explored);
  }
};

// No move: the explored score is the base prediction (uncertainty and gate still reported).
struct NoPerturbation {
  template <class M>
  struct Workspace {};

  void validate() const {}

  template <CtrModel M>
  void explore(const M&, ConstMatrixRef, ConstMatrixRef, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector>,
               Rng&, typename M::Workspace&, Workspace<M>&, Eigen::Ref<RowVector> explored) const {
    explored = base;
  }

  bool request_ready() const noexcept { return true; }

  template <RequestPassModel M>
  void explore_request(const M&, Eigen::Ref<const RowVector> base, Eigen::Ref<const RowVector>, Rng&,
                       typename M::Workspace&, Workspace<M>&, Eigen::Ref<RowVector> explored) const {
    explored = base;
  }
};

}  // namespace age
