// The CtrModel concept: what a CTR model must offer so that every explorer in age (the AGE
// scorer and the baselines) can score a request with it. The library's Tower and
// EmbeddingCtrModel satisfy it; so can a user's own type, e.g. a thin wrapper around an
// existing inference engine (see examples/custom_model.cpp). A model that has logits but no
// gradient can be adapted with FiniteDifferenceModel (age/model/finite_difference.hpp).
//
// Everything works on the EMBEDDING level of one request, h = [user | item], with the
// candidates as columns (age/core/types.hpp):
//   user   user_dim x 1 (one user shared by all N candidates) or user_dim x N (one column
//          per candidate; needed when AGE perturbs the whole input, not only the item part)
//   items  item_dim x N
#pragma once

#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

// The Mask type of a model without dropout. Such a model is still a CtrModel, but
// MC-Dropout uncertainty (which needs masks on the network weights) refuses it at compile
// time; see DropoutCtrModel.
struct NoDropout {};

// Requirements of a CtrModel M (all member functions const, so one model object can serve
// many threads at once):
//
//   typename M::Workspace   per-thread scratch space, default constructible; the model may
//                           cache anything in it between calls of the same thread.
//   typename M::Mask        one dropout sample on the network weights theta (never on the
//                           embeddings), default constructible; NoDropout if the model has
//                           no dropout.
//   m.user_dim(), m.item_dim()   sizes of the two parts of h (convertible to size_t).
//   m.logits(user, items, mask, ws, out)
//       the logit z of every candidate into `out` (Eigen::Ref<RowVector>, length N);
//       `mask` is a `const M::Mask*`, nullptr = no dropout. Must be deterministic for a
//       given (input, mask). The probability is sigmoid(z).
//   m.probability_gradient(user, items, mask, ws, prob, d_items, d_user)
//       prob = sigmoid(z) per candidate and the gradient of the PROBABILITY with respect
//       to the candidate's own input: d_items (Matrix*, item_dim x N) and d_user (Matrix*,
//       user_dim x N, per candidate even when user is shared). Either pointer may be null
//       (not wanted); the model resizes the matrices it writes.
//   m.sample_mask(p, columns, rng, mask)   (required unless Mask is NoDropout)
//       draws a dropout mask with rate p into `mask`, reusing its storage; `columns` is 1
//       (one mask shared by every candidate of the request) or N (one per candidate).
//
// Candidates are independent: column n of every output depends only on column n of the
// inputs (and of a per-candidate mask). Explorers rely on this to score a subset of the
// candidates, and the finite-difference adapter relies on it to batch its probes.
template <class M>
concept CtrModel =
    requires {
      typename M::Workspace;
      typename M::Mask;
    } &&
    std::default_initializable<typename M::Workspace> && std::default_initializable<typename M::Mask> &&
    requires(const M& model, ConstMatrixRef user, ConstMatrixRef items, const typename M::Mask* mask,
             typename M::Workspace& ws, Eigen::Ref<RowVector> out, Matrix* d_items, Matrix* d_user) {
      { model.user_dim() } -> std::convertible_to<std::size_t>;
      { model.item_dim() } -> std::convertible_to<std::size_t>;
      model.logits(user, items, mask, ws, out);
      model.probability_gradient(user, items, mask, ws, out, d_items, d_user);
    } &&
    (std::same_as<typename M::Mask, NoDropout> ||
     requires(const M& model, double p, Index columns, Rng& rng, typename M::Mask& sample) {
       model.sample_mask(p, columns, rng, sample);
     });

// A CtrModel with real dropout masks: what MC-Dropout uncertainty needs.
template <class M>
concept DropoutCtrModel = CtrModel<M> && !std::same_as<typename M::Mask, NoDropout>;

// --- Optional capabilities ---------------------------------------------------------------
// A model may offer more than the CtrModel passes; the evaluation engine the explorers run
// on (age/explore/engine.hpp) is chosen from these at compile time. Each is a named
// concept so that a user can static_assert what their model offers.

// Request passes: one no-dropout pass per request whose intermediate results the later
// passes of the same request reuse (the MC-Dropout samples, the input gradient, the moves
// of the item part). Every pass works on the request started by begin_request() on the
// same workspace, narrowed by request_select(), and gives the values of the plain passes
// on those candidates up to float rounding:
//   m.begin_request(user, items, ws, out)        no-dropout logits of the N candidates
//   m.request_size(ws)                           candidates in the request now
//   m.request_select(keep, ws)                   keep candidates `keep` (increasing positions)
//   m.request_logits(mask, ws, out)              logits under a dropout mask (nullptr: none)
//   m.request_item_gradient(d_logit, ws, d)      d(sum_n d_logit[n] z_n)/d items at h
//   m.request_moved_logits(d_items, ws, out)     logits at h + dh, item part moved
//   m.request_moved_item_gradient(d_logit, ws, d)  the gradient at that moved point
// Tower and EmbeddingCtrModel offer them.
template <class M>
concept RequestPassModel =
    CtrModel<M> &&
    requires(const M& m, ConstMatrixRef user, ConstMatrixRef items, const typename M::Mask* mask,
             typename M::Workspace& ws, Eigen::Ref<RowVector> out, Eigen::Ref<const RowVector> d_logit,
             Eigen::Ref<Matrix> d_items, std::span<const Index> keep) {
      m.begin_request(user, items, ws, out);
      { m.request_size(ws) } -> std::convertible_to<Index>;
      m.request_logits(mask, ws, out);
      m.request_select(keep, ws);
      m.request_item_gradient(d_logit, ws, d_items);
      m.request_moved_logits(items, ws, out);
      m.request_moved_item_gradient(d_logit, ws, d_items);
    };

// A request pass that computes the logits under one dropout mask together with the
// no-dropout ones (what Thompson sampling's single sample needs), from the same products:
//   m.begin_request(user, items, ws, out, mask, masked_out)
template <class M>
concept MaskedFirstPassModel =
    RequestPassModel<M> && requires(const M& m, ConstMatrixRef user, ConstMatrixRef items,
                                    const typename M::Mask* mask, typename M::Workspace& ws,
                                    Eigen::Ref<RowVector> out) { m.begin_request(user, items, ws, out, mask, out); };

// FGM's move scored in one pass: the logit of each request candidate n at
// h + length[n] g_n / ||g_n|| (g_n = d_logit[n] dz_n / d items), false when the model
// cannot take that shortcut for this request (then the engine takes the three passes).
//   m.request_normalized_move_logits(d_logit, length, ws, out) -> bool
template <class M>
concept NormalizedMoveModel =
    RequestPassModel<M> && requires(const M& m, Eigen::Ref<const RowVector> d_logit, typename M::Workspace& ws,
                                    Eigen::Ref<RowVector> out) {
      { m.request_normalized_move_logits(d_logit, d_logit, ws, out) } -> std::same_as<bool>;
    };

namespace detail {

// Whether `model` says it is empty: a type with an empty() member (Tower,
// EmbeddingCtrModel) that is default-constructed or moved from, whose passes refuse to
// run. A model type without empty() never is.
template <class M>
bool is_empty_model(const M& model) noexcept {
  if constexpr (requires {
                  { model.empty() } noexcept -> std::convertible_to<bool>;
                })
    return static_cast<bool>(model.empty());
  else
    return false;
}

inline constexpr const char* kEmptyModelMessage =
    "expected a model with a shape (constructed, copied or loaded), got an empty one (default-constructed or moved "
    "from)";

// ConfigError "<who>: model: expected ..., got an empty one" for an empty model.
template <class M>
void require_usable_model(const M& model, std::string_view who) {
  if (is_empty_model(model)) throw ConfigError(std::string(who) + ": model: " + kEmptyModelMessage);
}

}  // namespace detail

// Probabilities of every candidate: logits, then sigmoid in place.
template <CtrModel M>
void predict_probabilities(const M& model, ConstMatrixRef user, ConstMatrixRef items,
                           const typename M::Mask* mask, typename M::Workspace& ws, Eigen::Ref<RowVector> prob) {
  model.logits(user, items, mask, ws, prob);
  sigmoid_in_place(prob);
}

}  // namespace age
