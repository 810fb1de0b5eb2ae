// Uncertainty policies: the delta_y of every candidate of a request ((M10), (M11),
// METHOD.md "MC-Dropout uncertainty"), and the ablation that replaces it by noise.
//
// An Uncertainty policy U is written once against the evaluation engine
// (age/explore/engine.hpp), which runs on the model's request passes where it has them and
// on its plain passes otherwise. Requirements (concept UncertaintyPolicy<U, Engine>):
//   template <class Engine> struct Workspace   per-thread scratch, default constructible
//   void validate() const                      throws ConfigError for a bad setting
//   u.compute(engine, base, rng, ws, delta)
//       delta (Eigen::Ref<RowVector>, k) for the engine's k candidates, given their
//       no-dropout probabilities `base` (k) and the request's Rng. Const (thread-safe);
//       every random draw from `rng`.
// delta_y is SIGNED for Thompson sampling (a negative delta moves the embedding against
// the gradient) and >= 0 for UCB.
//
// Optionally (concept SingleMaskUncertainty), a policy whose delta is one mask sample
// (McDropoutTs) splits compute() in two, so that the scorer hands the mask to the
// engine's first pass (a model with MaskedFirstPassModel computes the logits under it from
// the no-dropout pass's own products):
//   const Mask& m = u.sample_first_pass_mask(engine, n, rng, ws)   the mask compute() draws
//   u.delta_from_masked_logits(base, delta)    delta holds the logits under m on entry
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/scratch.hpp"
#include "age/core/types.hpp"
#include "age/explore/engine.hpp"
#include "age/model/dropout.hpp"
#include "age/model/sigmoid.hpp"

namespace age {

template <class U, class E>
concept UncertaintyPolicy =
    EvaluationEngine<E> && requires { typename U::template Workspace<E>; } &&
    std::default_initializable<typename U::template Workspace<E>> &&
    requires(const U& u, E& engine, Eigen::Ref<const RowVector> base, Rng& rng, typename U::template Workspace<E>& ws,
             Eigen::Ref<RowVector> delta) {
      u.validate();
      u.compute(engine, base, rng, ws, delta);
    };

template <class U, class E>
concept SingleMaskUncertainty =
    UncertaintyPolicy<U, E> && requires(const U& u, E& engine, Index n, Rng& rng, typename U::template Workspace<E>& ws,
                                        Eigen::Ref<const RowVector> base, Eigen::Ref<RowVector> delta) {
      { u.sample_first_pass_mask(engine, n, rng, ws) } -> std::same_as<const typename E::Mask&>;
      u.delta_from_masked_logits(base, delta);
    };

namespace detail {
inline Index mask_columns(bool per_candidate, Index n) { return per_candidate ? n : 1; }

inline void check_positive_samples(std::size_t samples) {
  if (samples == 0) throw ConfigError("McDropoutUcb.samples: expected >= 1, got 0");
}
}  // namespace detail

// Thompson sampling by MC-Dropout: ONE dropout mask on theta, and the signed difference (M10)
//   delta_y = f(h | theta (.) M) - f(h | theta)
// By default the mask is shared by all candidates of the request (one posterior draw, the
// sample Thompson sampling ranks by); per_candidate_masks draws one mask per candidate.
struct McDropoutTs {
  double rate = 0.01;               // dropout rate p, in [0, 1)
  bool per_candidate_masks = false;

  template <class E>
  struct Workspace {
    typename E::Mask mask;
  };

  void validate() const { check_dropout_rate(rate); }

  template <DropoutEngine E>
  void compute(E& engine, Eigen::Ref<const RowVector> base, Rng& rng, Workspace<E>& ws,
               Eigen::Ref<RowVector> delta) const {
    engine.masked_logits(sample_first_pass_mask(engine, base.size(), rng, ws), delta);
    delta_from_masked_logits(base, delta);
  }

  // compute() in two halves (see the top of this file): the mask for a request of n
  // candidates, then delta_y = sigmoid(logit under the mask) - base, in place.
  template <DropoutEngine E>
  const typename E::Mask& sample_first_pass_mask(E& engine, Index n, Rng& rng, Workspace<E>& ws) const {
    engine.sample_mask(rate, detail::mask_columns(per_candidate_masks, n), rng, ws.mask);
    return ws.mask;
  }
  void delta_from_masked_logits(Eigen::Ref<const RowVector> base, Eigen::Ref<RowVector> delta) const {
    sigmoid_in_place(delta);
    delta -= base;
  }
};

// UCB by MC-Dropout: mean squared deviation of N mask samples around the NO-dropout
// prediction (not around the sample mean), (M11):
//   delta_y = (1/N) sum_i (f(h | theta (.) M_i) - f(h | theta))^2,   N = 20
// `sqrt` takes its square root (the paper says "variance"; whether a root is taken is
// open, the default is the variance itself).
struct McDropoutUcb {
  double rate = 0.01;
  std::size_t samples = 20;
  bool sqrt = false;
  bool per_candidate_masks = false;

  template <class E>
  struct Workspace {
    typename E::Mask mask;
    RowVector sample;
  };

  void validate() const {
    check_dropout_rate(rate);
    detail::check_positive_samples(samples);
  }

  template <DropoutEngine E>
  void compute(E& engine, Eigen::Ref<const RowVector> base, Rng& rng, Workspace<E>& ws,
               Eigen::Ref<RowVector> delta) const {
    const Index n = base.size();
    const Index columns = detail::mask_columns(per_candidate_masks, n);
    auto sample = detail::scratch_head(ws.sample, n);  // grows only: no allocation when n varies
    delta.setZero();
    for (std::size_t s = 0; s < samples; ++s) {
      engine.sample_mask(rate, columns, rng, ws.mask);
      engine.masked_logits(ws.mask, sample);
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

  template <class E>
  struct Workspace {
    McDropoutTs::Workspace<E> ts;
  };

  void validate() const {
    check_dropout_rate(rate);
    detail::check_scale("GaussianNoise.scale", scale, /*positive=*/false);
  }

  template <EvaluationEngine E>
  void compute(E& engine, Eigen::Ref<const RowVector> base, Rng& rng, Workspace<E>& ws,
               Eigen::Ref<RowVector> delta) const {
    double s = scale;
    if (s == 0.0) {
      if constexpr (DropoutEngine<E>) {
        McDropoutTs{rate, per_candidate_masks}.compute(engine, base, rng, ws.ts, delta);
        s = std::sqrt(static_cast<double>(delta.squaredNorm()) / static_cast<double>(delta.size()));
      } else {
        throw ConfigError("GaussianNoise.scale: expected > 0 for a model without dropout masks, got 0");
      }
    }
    for (Index i = 0; i < delta.size(); ++i) delta[i] = static_cast<Scalar>(s * rng.normal());
  }
};

// --- Extensions beyond the paper (METHOD.md, "Extensions beyond the paper") -------------

// A constant delta_y = value for every candidate: the move's length is lambda' * value
// (times whatever wraps it, e.g. ImpressionScaled), with no MC-Dropout sample at all. For
// a model without dropout masks, and for the count-aware variants whose length should not
// depend on dropout noise.
struct ConstantDelta {
  double value = 1.0;

  template <class E>
  struct Workspace {};

  // |value| <= kMaxSettingScale: it scales the move like lambda' does (ConfigError).
  void validate() const {
    if (!(std::abs(value) <= kMaxSettingScale))
      throw ConfigError("ConstantDelta.value: expected a value in [-" + detail::setting_number(kMaxSettingScale) + ", " +
                        detail::setting_number(kMaxSettingScale) + "], got " + detail::setting_number(value));
  }

  template <EvaluationEngine E>
  void compute(E&, Eigen::Ref<const RowVector>, Rng&, Workspace<E>&, Eigen::Ref<RowVector> delta) const {
    delta.setConstant(static_cast<Scalar>(value));
  }
};

// Count-aware uncertainty: the inner policy's delta_y, shrunk by how often the candidate
// has been shown already,
//   delta_n = delta^inner_n * (1 + c_n / half_count)^(-power)      c_n = request.impressions[n]
// so that the pseudo-exploration step (M12) is long for an item the model has barely seen
// and short for one it knows: the move then behaves like the real training step on the
// item, whose effect on the model shrinks as evidence accumulates (a running mean of c
// samples moves by ~1/c per sample, its standard error by ~1/sqrt(c): power = 0.5). MC-
// Dropout alone does not know this: its delta_y barely depends on an item's impressions.
// Needs Request::impressions (one count per candidate), else an InputError names it.
template <class Inner>
struct ImpressionScaled {
  Inner inner{};
  double half_count = 1.0;  // c at which the factor is 2^-power
  double power = 0.5;

  template <class E>
  using Workspace = typename Inner::template Workspace<E>;

  void validate() const {
    inner.validate();
    detail::check_scale("ImpressionScaled.half_count", half_count, /*positive=*/true);
    detail::check_scale("ImpressionScaled.power", power, /*positive=*/false);
  }

  // The factor of a candidate shown `count` times.
  double factor(std::uint64_t count) const noexcept {
    return std::pow(1.0 + static_cast<double>(count) / half_count, -power);
  }

  template <EvaluationEngine E>
    requires UncertaintyPolicy<Inner, E>
  void compute(E& engine, Eigen::Ref<const RowVector> base, Rng& rng, Workspace<E>& ws,
               Eigen::Ref<RowVector> delta) const {
    const auto impressions = engine.request().impressions;
    if (static_cast<Index>(impressions.size()) != delta.size())
      throw InputError("ImpressionScaled: request impressions: expected one count per candidate (" +
                       std::to_string(delta.size()) + "), got " + std::to_string(impressions.size()));
    inner.compute(engine, base, rng, ws, delta);
    for (Index i = 0; i < delta.size(); ++i)
      delta[i] = static_cast<Scalar>(static_cast<double>(delta[i]) * factor(impressions[static_cast<std::size_t>(i)]));
  }
};

}  // namespace age
