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

#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower.hpp"

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

// Probabilities of every candidate: logits, then sigmoid in place.
template <CtrModel M>
void predict_probabilities(const M& model, ConstMatrixRef user, ConstMatrixRef items,
                           const typename M::Mask* mask, typename M::Workspace& ws, Eigen::Ref<RowVector> prob) {
  model.logits(user, items, mask, ws, prob);
  sigmoid_in_place(prob);
}

}  // namespace age
