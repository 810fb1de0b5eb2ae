// Uncertainty policies: the delta_y of every candidate of a request (AGE-METHOD.md,
// "Uncertainty delta_y by MC-Dropout"), and the ablation that replaces it by noise.
//
// An Uncertainty policy U for a model M (concept UncertaintyPolicy<U, M>) provides
//   template <class M> struct Workspace        per-thread scratch, default constructible
//   void validate() const                      throws ConfigError for a bad setting
//   u.compute(model, user, items, base, rng, model_ws, ws, delta)
//       delta (Eigen::Ref<RowVector>, N) from the request's embeddings, the no-dropout
//       probabilities `base` (N) and the request's Rng. Must be const (thread-safe) and
//       draw all randomness from `rng`.
// delta_y is SIGNED for Thompson sampling (a negative delta moves the embedding against
// the gradient) and >= 0 for UCB.
//
// Optionally, for a model with request passes (RequestPassModel, age/model/tower.hpp),
//   u.compute_request(model, base, rng, model_ws, ws, delta)
// does the same on the request cached in model_ws by model.begin_request(), so that every
// mask sample reuses the no-dropout pass; the AGE scorer uses it when it exists. Same
// random draws, same values up to float rounding.
//
// A policy whose request form is one mask sample (McDropoutTs) may also split it in two, so
// that the scorer can hand the mask to the model's first pass (Tower::begin_request with a
// mask computes the logits under it from the same products):
//   const typename M::Mask& m = u.sample_request_mask(model, n, rng, ws)
//       the mask compute_request would draw, the same draws from rng;
//   u.delta_from_masked_logits(base, delta)
//       delta holds the request's logits under that mask on entry, delta_y on return.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

template <class U, class M>
concept UncertaintyPolicy =
    CtrModel<M> && requires { typename U::template Workspace<M>; } &&
    std::default_initializable<typename U::template Workspace<M>> &&
    requires(const U& u, const M& model, ConstMatrixRef user, ConstMatrixRef items,
             Eigen::Ref<const RowVector> base, Rng& rng, typename M::Workspace& model_ws,
             typename U::template Workspace<M>& ws, Eigen::Ref<RowVector> delta) {
      u.validate();
      u.compute(model, user, items, base, rng, model_ws, ws, delta);
    };

namespace detail {
inline Index mask_columns(bool per_candidate, Index n) { return per_candidate ? n : 1; }

inline void check_positive_samples(std::size_t samples) {
  if (samples == 0) throw ConfigError("McDropoutUcb.samples: expected >= 1, got 0");
}
}  // namespace detail

// Thompson sampling by MC-Dropout: ONE dropout mask on theta, and the signed difference
//   delta_y = f(h | theta (.) M) - f(h | theta)
// By default the mask is shared by all candidates of the request (one posterior draw, the
// sample Thompson sampling ranks by); per_candidate_masks draws one mask per candidate.
struct McDropoutTs {
  double rate = 0.01;               // dropout rate p, in [0, 1)
  bool per_candidate_masks = false;

  template <class M>
  struct Workspace {
    typename M::Mask mask;
  };

  void validate() const { check_dropout_rate(rate); }

  template <DropoutCtrModel M>
  void compute(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Rng& rng, typename M::Workspace& model_ws, Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    model.sample_mask(rate, detail::mask_columns(per_candidate_masks, items.cols()), rng, ws.mask);
    predict_probabilities(model, user, items, &ws.mask, model_ws, delta);
    delta -= base;
  }

  template <class M>
    requires DropoutCtrModel<M> && RequestPassModel<M>
  void compute_request(const M& model, Eigen::Ref<const RowVector> base, Rng& rng, typename M::Workspace& model_ws,
                       Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    model.request_logits(&sample_request_mask(model, base.size(), rng, ws), model_ws, delta);
    delta_from_masked_logits(base, delta);
  }

  // compute_request() in two halves (see the top of this file): the mask for a request of
  // n candidates, then delta_y = sigmoid(logit under the mask) - base, in place.
  template <DropoutCtrModel M>
  const typename M::Mask& sample_request_mask(const M& model, Index n, Rng& rng, Workspace<M>& ws) const {
    model.sample_mask(rate, detail::mask_columns(per_candidate_masks, n), rng, ws.mask);
    return ws.mask;
  }
  void delta_from_masked_logits(Eigen::Ref<const RowVector> base, Eigen::Ref<RowVector> delta) const {
    sigmoid_in_place(delta);
    delta -= base;
  }
};

// UCB by MC-Dropout: mean squared deviation of N mask samples around the NO-dropout
// prediction (not around the sample mean):
//   delta_y = (1/N) sum_i (f(h | theta (.) M_i) - f(h | theta))^2,   N = 20
// `sqrt` takes its square root (the paper says "variance"; whether a root is taken is
// open, the default is the variance itself).
struct McDropoutUcb {
  double rate = 0.01;
  std::size_t samples = 20;
  bool sqrt = false;
  bool per_candidate_masks = false;

  template <class M>
  struct Workspace {
    typename M::Mask mask;
    RowVector sample;
  };

  void validate() const {
    check_dropout_rate(rate);
    detail::check_positive_samples(samples);
  }

  template <DropoutCtrModel M>
  void compute(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Rng& rng, typename M::Workspace& model_ws, Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    const Index n = items.cols();
    const Index columns = detail::mask_columns(per_candidate_masks, n);
    ws.sample.resize(n);
    delta.setZero();
    for (std::size_t s = 0; s < samples; ++s) {
      model.sample_mask(rate, columns, rng, ws.mask);
      predict_probabilities(model, user, items, &ws.mask, model_ws, ws.sample);
      delta.array() += (ws.sample - base).array().square();
    }
    delta /= static_cast<Scalar>(samples);
    if (sqrt) delta = delta.cwiseSqrt();
  }

  template <class M>
    requires DropoutCtrModel<M> && RequestPassModel<M>
  void compute_request(const M& model, Eigen::Ref<const RowVector> base, Rng& rng, typename M::Workspace& model_ws,
                       Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    const Index n = base.size();
    const Index columns = detail::mask_columns(per_candidate_masks, n);
    auto sample = detail::scratch_head(ws.sample, n);  // grows only: no allocation when n varies
    delta.setZero();
    for (std::size_t s = 0; s < samples; ++s) {
      model.sample_mask(rate, columns, rng, ws.mask);
      model.request_logits(&ws.mask, model_ws, sample);
      sigmoid_in_place(sample);
      delta.array() += (sample - base).array().square();
    }
    delta /= static_cast<Scalar>(samples);
    if (sqrt) delta = delta.cwiseSqrt();
  }
};

// Ablation "AGE without delta_y" (Table 2): Gaussian noise of the same scale replaces the
// MC-Dropout uncertainty, so the move keeps its size but loses its per-candidate meaning.
// The scale is defined per request: with scale == 0 (default) it is the root mean square,
// over the request's candidates, of the TS deltas McDropoutTs{rate, per_candidate_masks}
// would give with the same Rng; delta_n = s * z_n with z_n ~ N(0, 1) i.i.d. With
// scale > 0 that fixed value is used instead, which also works for a model without
// dropout masks.
struct GaussianNoise {
  double rate = 0.01;
  bool per_candidate_masks = false;
  double scale = 0.0;

  template <class M>
  struct Workspace {
    McDropoutTs::Workspace<M> ts;
  };

  void validate() const {
    check_dropout_rate(rate);
    if (!(scale >= 0.0 && std::isfinite(scale)))
      throw ConfigError("GaussianNoise.scale: expected a finite value >= 0, got " + std::to_string(scale));
  }

  template <CtrModel M>
  void compute(const M& model, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<const RowVector> base,
               Rng& rng, typename M::Workspace& model_ws, Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    double s = scale;
    if (s == 0.0) {
      if constexpr (DropoutCtrModel<M>) {
        McDropoutTs{rate, per_candidate_masks}.compute(model, user, items, base, rng, model_ws, ws.ts, delta);
        s = std::sqrt(static_cast<double>(delta.squaredNorm()) / static_cast<double>(delta.size()));
      } else {
        throw ConfigError("GaussianNoise.scale: expected > 0 for a model without dropout masks, got 0");
      }
    }
    for (Index i = 0; i < delta.size(); ++i) delta[i] = static_cast<Scalar>(s * rng.normal());
  }

  template <class M>
    requires RequestPassModel<M>
  void compute_request(const M& model, Eigen::Ref<const RowVector> base, Rng& rng, typename M::Workspace& model_ws,
                       Workspace<M>& ws, Eigen::Ref<RowVector> delta) const {
    double s = scale;
    if (s == 0.0) {
      if constexpr (DropoutCtrModel<M>) {
        McDropoutTs{rate, per_candidate_masks}.compute_request(model, base, rng, model_ws, ws.ts, delta);
        s = std::sqrt(static_cast<double>(delta.squaredNorm()) / static_cast<double>(delta.size()));
      } else {
        throw ConfigError("GaussianNoise.scale: expected > 0 for a model without dropout masks, got 0");
      }
    }
    for (Index i = 0; i < delta.size(); ++i) delta[i] = static_cast<Scalar>(s * rng.normal());
  }
};

}  // namespace age
