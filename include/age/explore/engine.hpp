// Evaluation engines: the operations an exploration policy needs from the model for one
// request, behind one interface, so that every policy (the scorer, each Uncertainty and
// Perturbation policy) is written once. In the manner of mlpack's step policies (KMeans'
// LloydStepType): the engine is a template parameter of AgeScorer, chosen by default from
// what the model can do.
//
//   PlainEngine<M>        any CtrModel: every operation is a full pass of the model
//                         (logits, probability_gradient) on the request's embeddings.
//   RequestPassEngine<M>  a RequestPassModel (Tower, EmbeddingCtrModel): one no-dropout
//                         pass per request, which the masked passes, the input gradient
//                         and the moved passes reuse (age/model/request_passes.hpp). Uses
//                         the model's optional MaskedFirstPassModel and NormalizedMoveModel
//                         shortcuts when it has them. Moves the item part only.
//   DefaultEngine<M>      RequestPassEngine<M> for a RequestPassModel, else PlainEngine<M>.
//
// Both give the same values up to float rounding (tests/unit/test_golden_scores.cpp holds
// every policy to the same numbers on both). Whether a scorer takes the request passes is
// a compile-time fact: static_assert(AgeTs<MyModel>::uses_request_passes).
//
// The operations, on the request started by begin() and narrowed by select() (k = size()
// candidates; probabilities y = sigmoid(z), moves dh of the item part and, for an engine
// with moves_user, of the user part, one column per candidate):
//   begin(request, base_logits)                      z at h, no dropout (N)
//   begin(request, base_logits, mask, masked_logits) the same and z under one dropout mask
//   size(), item_dim(), user_dim()
//   request()                                        the request begin() started (its
//                                                    impressions, id; all N candidates)
//   masked_logits(mask, out)                         z under a dropout mask (1 or k columns)
//   select(keep)                                     keep the candidates at positions `keep`
//                                                    (strictly increasing, relative to now)
//   gradient(prob, g_items, g_user)                  dy/dh at h; prob = y at h (k)
//   gradient_at(d_items, d_user, g_items, g_user)    dy/dh at h + dh
//   probabilities_at(d_items, d_user, out)           y at h + dh
//   normalized_move_probabilities(prob, length, out) y at h + length[n] g_n / ||g_n||, g_n
//                                                    = dy_n/d items, in one pass; false
//                                                    (nothing written) without that shortcut
//   sample_mask(p, columns, rng, mask)               the model's dropout mask (DropoutEngine)
// Moves and gradients are matrices with at least k columns (grow-only scratch is fine);
// d_user / g_user are nullptr when only the item part moves. Outputs of k values.
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/scratch.hpp"
#include "age/core/types.hpp"
#include "age/explore/request.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

namespace detail {
// dy/dz = y (1 - y) for every probability.
inline void logistic_slope(Eigen::Ref<const RowVector> prob, Eigen::Ref<RowVector> out) noexcept {
  for (Index i = 0; i < prob.size(); ++i) out[i] = prob[i] * (Scalar(1) - prob[i]);
}
}  // namespace detail

template <class E>
concept EvaluationEngine =
    requires {
      typename E::model_type;
      typename E::Mask;
      typename E::Workspace;
      { E::uses_request_passes } -> std::convertible_to<bool>;
      { E::moves_user } -> std::convertible_to<bool>;
    } && std::default_initializable<typename E::Workspace> &&
    requires(E& e, const Request& request, Eigen::Ref<RowVector> out, Eigen::Ref<const RowVector> in,
             const typename E::Mask& mask, std::span<const Index> keep, Matrix& g, Matrix* g_user, const Matrix& d,
             const Matrix* d_user) {
      e.begin(request, out);
      e.begin(request, out, mask, out);
      { e.size() } -> std::convertible_to<Index>;
      { e.item_dim() } -> std::convertible_to<Index>;
      { e.user_dim() } -> std::convertible_to<Index>;
      { e.request() } -> std::same_as<const Request&>;
      e.masked_logits(mask, out);
      e.select(keep);
      e.gradient(in, g, g_user);
      e.gradient_at(d, d_user, g, g_user);
      e.probabilities_at(d, d_user, out);
      { e.normalized_move_probabilities(in, in, out) } -> std::same_as<bool>;
    };

// An engine over a model with real dropout masks (what MC-Dropout needs).
template <class E>
concept DropoutEngine = EvaluationEngine<E> && DropoutCtrModel<typename E::model_type>;

// Every operation as full passes of a CtrModel. After select(), the kept candidates'
// embeddings are gathered into the workspace (candidates are independent, see CtrModel).
template <CtrModel M>
class PlainEngine {
 public:
  using model_type = M;
  using Mask = typename M::Mask;
  static constexpr bool uses_request_passes = false;
  static constexpr bool moves_user = true;

  struct Workspace {
    typename M::Workspace model;
    Matrix kept_items, kept_user;    // after select()
    Matrix moved_items, moved_user;  // h + dh
    RowVector prob;                  // probabilities the gradient pass returns (unused)
  };

  PlainEngine(const M& model, Workspace& ws) noexcept : model_(&model), ws_(&ws) {}

  const M& model() const noexcept { return *model_; }
  Index item_dim() const noexcept { return static_cast<Index>(model_->item_dim()); }
  Index user_dim() const noexcept { return static_cast<Index>(model_->user_dim()); }
  Index size() const noexcept { return size_; }
  const Request& request() const noexcept { return *request_; }

  void begin(const Request& request, Eigen::Ref<RowVector> base_logits) {
    request_ = &request;
    kept_ = false;
    size_ = request.size();
    model_->logits(request.user, request.items, nullptr, ws_->model, base_logits);
  }
  void begin(const Request& request, Eigen::Ref<RowVector> base_logits, const Mask& mask,
             Eigen::Ref<RowVector> masked_logits) {
    begin(request, base_logits);
    masked_logits_of(&mask, masked_logits);
  }

  void masked_logits(const Mask& mask, Eigen::Ref<RowVector> out) { masked_logits_of(&mask, out); }

  void select(std::span<const Index> keep) {
    const Index k = static_cast<Index>(keep.size());
    Index previous = -1;
    for (Index j = 0; j < k; ++j) {
      const Index i = keep[static_cast<std::size_t>(j)];
      if (i <= previous || i >= size_)
        throw InputError("PlainEngine::select: keep[" + std::to_string(j) + "]: expected a position in (" +
                         std::to_string(previous) + ", " + std::to_string(size_) + "), got " + std::to_string(i));
      previous = i;
    }
    // j <= keep[j]: compacting in place in increasing j never overwrites a column still to
    // be read, so a second select() narrows the gathered copy itself.
    const bool per_candidate_user = user().cols() != 1;
    if (!kept_) {
      ws_->kept_items.resize(request_->items.rows(), k);
      if (per_candidate_user) ws_->kept_user.resize(request_->user.rows(), k);
      for (Index j = 0; j < k; ++j) {
        const Index i = keep[static_cast<std::size_t>(j)];
        ws_->kept_items.col(j) = request_->items.col(i);
        if (per_candidate_user) ws_->kept_user.col(j) = request_->user.col(i);
      }
    } else {
      for (Index j = 0; j < k; ++j) {
        const Index i = keep[static_cast<std::size_t>(j)];
        ws_->kept_items.col(j) = ws_->kept_items.col(i);
        if (per_candidate_user) ws_->kept_user.col(j) = ws_->kept_user.col(i);
      }
      ws_->kept_items.conservativeResize(Eigen::NoChange, k);
      if (per_candidate_user) ws_->kept_user.conservativeResize(Eigen::NoChange, k);
    }
    kept_ = true;
    size_ = k;
  }

  void gradient(Eigen::Ref<const RowVector>, Matrix& g_items, Matrix* g_user) {
    ws_->prob.resize(size_);
    model_->probability_gradient(user(), items(), nullptr, ws_->model, ws_->prob, &g_items, g_user);
  }
  void gradient_at(const Matrix& d_items, const Matrix* d_user, Matrix& g_items, Matrix* g_user) {
    move(d_items, d_user);
    ws_->prob.resize(size_);
    if (d_user)
      model_->probability_gradient(ws_->moved_user, ws_->moved_items, nullptr, ws_->model, ws_->prob, &g_items,
                                   g_user);
    else
      model_->probability_gradient(user(), ws_->moved_items, nullptr, ws_->model, ws_->prob, &g_items, g_user);
  }
  void probabilities_at(const Matrix& d_items, const Matrix* d_user, Eigen::Ref<RowVector> out) {
    move(d_items, d_user);
    if (d_user)
      model_->logits(ws_->moved_user, ws_->moved_items, nullptr, ws_->model, out);
    else
      model_->logits(user(), ws_->moved_items, nullptr, ws_->model, out);
    sigmoid_in_place(out);
  }
  bool normalized_move_probabilities(Eigen::Ref<const RowVector>, Eigen::Ref<const RowVector>,
                                     Eigen::Ref<RowVector>) noexcept {
    return false;
  }

  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const
    requires DropoutCtrModel<M>
  {
    model_->sample_mask(p, columns, rng, mask);
  }

 private:
  ConstMatrixRef items() const { return kept_ ? ConstMatrixRef(ws_->kept_items) : request_->items; }
  ConstMatrixRef user() const {
    return (kept_ && request_->user.cols() != 1) ? ConstMatrixRef(ws_->kept_user) : request_->user;
  }
  void masked_logits_of(const Mask* mask, Eigen::Ref<RowVector> out) {
    model_->logits(user(), items(), mask, ws_->model, out);
  }
  // h + dh of the k candidates (the user part only when it moves).
  void move(const Matrix& d_items, const Matrix* d_user) {
    ws_->moved_items = items() + d_items.leftCols(size_);
    if (d_user) {
      const ConstMatrixRef u = user();
      if (u.cols() == 1)
        ws_->moved_user = d_user->leftCols(size_).colwise() + u.col(0);
      else
        ws_->moved_user = u + d_user->leftCols(size_);
    }
  }

  const M* model_;
  Workspace* ws_;
  const Request* request_ = nullptr;
  bool kept_ = false;
  Index size_ = 0;
};

// The model's request passes (RequestPassModel): every operation reads the request cached
// in the model's workspace by begin(). The item part only: a move of the user part is
// refused (the scorer refuses such a policy when it is built; choose PlainEngine for it).
template <RequestPassModel M>
class RequestPassEngine {
 public:
  using model_type = M;
  using Mask = typename M::Mask;
  static constexpr bool uses_request_passes = true;
  static constexpr bool moves_user = false;
  // The optional shortcuts this model gives the engine.
  static constexpr bool masked_first_pass = MaskedFirstPassModel<M>;
  static constexpr bool normalized_moves = NormalizedMoveModel<M>;

  struct Workspace {
    typename M::Workspace model;
    RowVector d_logit, prob;  // dy/dz and the probabilities at a moved point
  };

  RequestPassEngine(const M& model, Workspace& ws) noexcept : model_(&model), ws_(&ws) {}

  const M& model() const noexcept { return *model_; }
  Index item_dim() const noexcept { return static_cast<Index>(model_->item_dim()); }
  Index user_dim() const noexcept { return static_cast<Index>(model_->user_dim()); }
  Index size() const { return model_->request_size(ws_->model); }
  const Request& request() const noexcept { return *request_; }

  void begin(const Request& request, Eigen::Ref<RowVector> base_logits) {
    request_ = &request;
    model_->begin_request(request.user, request.items, ws_->model, base_logits);
    reserve(request.size());
  }
  void begin(const Request& request, Eigen::Ref<RowVector> base_logits, const Mask& mask,
             Eigen::Ref<RowVector> masked_logits) {
    if constexpr (masked_first_pass) {
      request_ = &request;
      model_->begin_request(request.user, request.items, ws_->model, base_logits, &mask, masked_logits);
      reserve(request.size());
    } else {
      begin(request, base_logits);
      masked_logits_of(mask, masked_logits);
    }
  }

  void masked_logits(const Mask& mask, Eigen::Ref<RowVector> out) { masked_logits_of(mask, out); }
  void select(std::span<const Index> keep) { model_->request_select(keep, ws_->model); }

  void gradient(Eigen::Ref<const RowVector> prob, Matrix& g_items, Matrix* g_user) {
    refuse_user_part(g_user);
    const Index k = size();
    auto d_logit = ws_->d_logit.head(k);
    detail::logistic_slope(prob, d_logit);
    model_->request_item_gradient(d_logit, ws_->model, detail::scratch_cols(g_items, item_dim(), k));
  }
  void gradient_at(const Matrix& d_items, const Matrix* d_user, Matrix& g_items, Matrix* g_user) {
    refuse_user_part(d_user);
    refuse_user_part(g_user);
    const Index k = size();
    auto prob = ws_->prob.head(k);
    moved_probabilities(d_items, prob);
    auto d_logit = ws_->d_logit.head(k);
    detail::logistic_slope(prob, d_logit);
    model_->request_moved_item_gradient(d_logit, ws_->model, detail::scratch_cols(g_items, item_dim(), k));
  }
  void probabilities_at(const Matrix& d_items, const Matrix* d_user, Eigen::Ref<RowVector> out) {
    refuse_user_part(d_user);
    moved_probabilities(d_items, out);
  }
  bool normalized_move_probabilities(Eigen::Ref<const RowVector> prob, Eigen::Ref<const RowVector> length,
                                     Eigen::Ref<RowVector> out) {
    if constexpr (normalized_moves) {
      auto d_logit = ws_->d_logit.head(size());
      detail::logistic_slope(prob, d_logit);
      if (!model_->request_normalized_move_logits(d_logit, length, ws_->model, out)) return false;
      sigmoid_in_place(out);
      return true;
    } else {
      return false;
    }
  }

  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const
    requires DropoutCtrModel<M>
  {
    model_->sample_mask(p, columns, rng, mask);
  }

 private:
  // Scratch for every later step sized for all n candidates now, so that a warm
  // workspace allocates nothing whatever the number of open candidates.
  void reserve(Index n) {
    detail::scratch_head(ws_->d_logit, n);
    detail::scratch_head(ws_->prob, n);
  }
  void masked_logits_of(const Mask& mask, Eigen::Ref<RowVector> out) {
    model_->request_logits(&mask, ws_->model, out);
  }
  void moved_probabilities(const Matrix& d_items, Eigen::Ref<RowVector> out) {
    model_->request_moved_logits(d_items.leftCols(size()), ws_->model, out);
    sigmoid_in_place(out);
  }
  static void refuse_user_part(const Matrix* part) {
    if (part)
      throw ConfigError(
          "RequestPassEngine: a move of the user part: expected the item part only (PerturbTarget::items), got "
          "whole_input; score such a policy with PlainEngine");
  }

  const M* model_;
  Workspace* ws_;
  const Request* request_ = nullptr;
};

namespace detail {
template <class M>
struct DefaultEngineOf {
  using type = PlainEngine<M>;
};
template <RequestPassModel M>
struct DefaultEngineOf<M> {
  using type = RequestPassEngine<M>;
};
}  // namespace detail

// The engine a model gets unless the scorer is told otherwise.
template <CtrModel M>
using DefaultEngine = typename detail::DefaultEngineOf<M>::type;

// Whether a model's default engine runs on its request passes.
template <CtrModel M>
inline constexpr bool has_request_passes_v = DefaultEngine<M>::uses_request_passes;

// One request begun on an engine, with its own workspace and no-dropout probabilities: a
// policy's step run outside the scorer (diagnostics, calibration, tests, a scorer of
// your own):
//   RequestSession<Tower> s(tower, Request{user, items});
//   McDropoutTs{}.compute(s.engine(), s.base(), rng, ts_ws, delta);
//   Pgd{.lambda = 0.1}.explore(s.engine(), s.base(), delta, rng, move_ws, explored);
// The request's embeddings must outlive the session (Request holds references).
template <CtrModel M, class E = DefaultEngine<M>>
  requires EvaluationEngine<E>
class RequestSession {
 public:
  RequestSession(const M& model, const Request& request) : request_(request), engine_(model, ws_) {
    base_.resize(request.size());
    engine_.begin(request_, base_);
    sigmoid_in_place(base_);
  }
  RequestSession(const RequestSession&) = delete;  // the engine points into the session
  RequestSession& operator=(const RequestSession&) = delete;

  E& engine() noexcept { return engine_; }
  // y = f(h | theta) of the request's N candidates.
  const RowVector& base() const noexcept { return base_; }

 private:
  Request request_;
  typename E::Workspace ws_;
  E engine_;
  RowVector base_;
};

}  // namespace age
