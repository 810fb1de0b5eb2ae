// Off-policy estimators: the value (mean reward per logged decision) that a target policy
// would have had on the traffic of a logged one, from the log alone (METHOD.md,
// "Off-policy estimators", (M32)-(M38)):
//
//   replay  (M36)  Li et al.: mean reward of the decisions where the target's own draw
//                  picks the logged action; unbiased only on uniformly random logs
//   IPS     (M32)  inverse propensity scoring, w_i = pi_e(a_i | x_i) / pi_b(a_i | x_i)
//   SNIPS   (M33)  self-normalised IPS: divides by sum w_i instead of n
//   DM      (M34)  direct method: the reward model's expected reward under pi_e
//   DR      (M35)  doubly robust: DM plus the IPS-weighted residual of the reward model
//
// each with the effective sample size (M37), a plug-in standard error, and a percentile
// bootstrap interval (M38) over resampled decisions. The estimators read OpeSamples (one
// per logged decision, whatever the log's format); age/sim/ope_samples.hpp builds them for
// an Explorer on embedded requests, examples/ope/ for the Open Bandit Dataset and for
// served logs. Standard library and Eigen only.
//
//   std::vector<OpeSample> samples = ...;             // one per logged decision
//   OpeReport r = evaluate_off_policy(samples, {.bootstrap = 1000, .seed = 1});
//   r[Estimator::dr].value, r[Estimator::dr].lower, r[Estimator::dr].upper, r[Estimator::dr].ess
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"

namespace age::sim {

// One logged decision as the estimators see it. x_i is the context (for a ranking, the
// request and the position), a_i the logged action, r_i its reward.
struct OpeSample {
  double reward = 0.0;              // r_i, finite (a click: 0 or 1)
  double logging_propensity = 1.0;  // pi_b(a_i | x_i), in (0, 1]
  double target_propensity = 0.0;   // pi_e(a_i | x_i), in [0, 1]
  // sum_a pi_e(a | x_i) q(x_i, a) and q(x_i, a_i) of a reward model q; NaN without one
  // (then DM and DR are not available).
  double dm_value = std::numeric_limits<double>::quiet_NaN();
  double dm_logged = std::numeric_limits<double>::quiet_NaN();
  // 1 when the target's own draw for this request (its real id) picks a_i, 0 when not;
  // NaN unknown (then replay is not available).
  double replay_match = std::numeric_limits<double>::quiet_NaN();
};

enum class Estimator : std::uint8_t { replay, ips, snips, dm, dr };
inline constexpr std::array<Estimator, 5> kEstimators{Estimator::replay, Estimator::ips, Estimator::snips,
                                                      Estimator::dm, Estimator::dr};

inline constexpr std::string_view to_string(Estimator e) noexcept {
  switch (e) {
    case Estimator::replay: return "replay";
    case Estimator::ips: return "IPS";
    case Estimator::snips: return "SNIPS";
    case Estimator::dm: return "DM";
    case Estimator::dr: return "DR";
  }
  return "?";
}

struct OpeOptions {
  std::size_t bootstrap = 1000;  // resamples for the intervals; 0: no interval
  double confidence = 0.95;      // in (0, 1)
  std::uint64_t seed = 0;        // seeds the resampling
  // Replay is unbiased only when the logging policy was uniformly random (every logging
  // propensity equal); on other logs it is reported as not available, unless this is off.
  bool replay_needs_uniform_logging = true;

  void validate() const {
    if (!(confidence > 0.0 && confidence < 1.0))
      throw ConfigError("OpeOptions.confidence: expected a value in (0, 1), got " + std::to_string(confidence));
  }
};

struct OpeEstimate {
  Estimator estimator = Estimator::ips;
  bool available = false;
  std::string note;  // why it is not available, or a caveat
  double value = std::numeric_limits<double>::quiet_NaN();
  double std_error = std::numeric_limits<double>::quiet_NaN();  // plug-in (delta method for ratios)
  double lower = std::numeric_limits<double>::quiet_NaN();      // bootstrap percentile interval
  double upper = std::numeric_limits<double>::quiet_NaN();
  double ess = 0.0;     // effective sample size (M37); replay: accepted decisions; DM: n
  std::size_t n = 0;    // decisions used
};

struct OpeReport {
  std::size_t samples = 0;
  double logged_value = 0.0;   // mean reward of the log (the logging policy's on-policy value)
  double logged_std_error = 0.0;
  bool uniform_logging = false;
  double max_weight = 0.0;     // largest importance weight
  double confidence = 0.95;
  std::size_t bootstrap = 0;
  std::vector<OpeEstimate> estimates;  // in kEstimators order

  const OpeEstimate& operator[](Estimator e) const { return estimates.at(static_cast<std::size_t>(e)); }
};

namespace detail {

inline std::string sample_field(std::size_t i, std::string_view field) {
  return "ope sample " + std::to_string(i) + ": " + std::string(field);
}

[[noreturn]] inline void bad_sample(std::size_t i, std::string_view field, std::string_view expected, double got) {
  throw InputError(sample_field(i, field) + ": expected " + std::string(expected) + ", got " + std::to_string(got));
}

// The plug-in standard error of a mean of terms t_i.
inline double mean_std_error(std::span<const double> t) {
  const std::size_t n = t.size();
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  double mean = 0;
  for (double v : t) mean += v;
  mean /= static_cast<double>(n);
  double ss = 0;
  for (double v : t) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / static_cast<double>(n - 1) / static_cast<double>(n));
}

// Linear interpolation between order statistics of sorted x at quantile q.
inline double quantile_sorted(const std::vector<double>& x, double q) {
  if (x.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double pos = q * static_cast<double>(x.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, x.size() - 1);
  return x[lo] + (pos - static_cast<double>(lo)) * (x[hi] - x[lo]);
}

// The per-decision sums every estimator is a function of; the bootstrap resamples them.
struct OpeSums {
  double n = 0, reward = 0, w = 0, w2 = 0, wr = 0, dm = 0, dr = 0, m = 0, mr = 0;
  void add(const OpeSample& s, double weight) {
    n += 1;
    reward += s.reward;
    w += weight;
    w2 += weight * weight;
    wr += weight * s.reward;
    dm += s.dm_value;
    dr += s.dm_value + weight * (s.reward - s.dm_logged);
    m += s.replay_match;
    mr += s.replay_match * s.reward;
  }
  double value(Estimator e) const {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    switch (e) {
      case Estimator::replay: return m > 0 ? mr / m : nan;
      case Estimator::ips: return n > 0 ? wr / n : nan;
      case Estimator::snips: return w > 0 ? wr / w : nan;
      case Estimator::dm: return n > 0 ? dm / n : nan;
      case Estimator::dr: return n > 0 ? dr / n : nan;
    }
    return nan;
  }
};

}  // namespace detail

// Checks every sample; InputError naming the sample, the field, the expected and the actual
// value: reward not finite, logging propensity outside (0, 1] (a zero or missing
// propensity), target propensity outside [0, 1], a reward-model value or replay match
// that is neither NaN (absent) nor valid.
inline void validate_samples(std::span<const OpeSample> samples) {
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const OpeSample& s = samples[i];
    if (!std::isfinite(s.reward)) detail::bad_sample(i, "reward", "a finite value", s.reward);
    if (!(s.logging_propensity > 0.0 && s.logging_propensity <= 1.0))
      detail::bad_sample(i, "logging_propensity", "a value in (0, 1]", s.logging_propensity);
    if (!(s.target_propensity >= 0.0 && s.target_propensity <= 1.0))
      detail::bad_sample(i, "target_propensity", "a value in [0, 1]", s.target_propensity);
    if (std::isinf(s.dm_value)) detail::bad_sample(i, "dm_value", "a finite value or NaN (no reward model)", s.dm_value);
    if (std::isinf(s.dm_logged))
      detail::bad_sample(i, "dm_logged", "a finite value or NaN (no reward model)", s.dm_logged);
    if (std::isnan(s.dm_value) != std::isnan(s.dm_logged))
      detail::bad_sample(i, std::isnan(s.dm_value) ? "dm_value" : "dm_logged",
                         "a value whenever the other reward-model field has one", std::numeric_limits<double>::quiet_NaN());
    if (!std::isnan(s.replay_match) && s.replay_match != 0.0 && s.replay_match != 1.0)
      detail::bad_sample(i, "replay_match", "0, 1 or NaN (unknown)", s.replay_match);
  }
}

// The importance weight of a sample (M32).
inline double importance_weight(const OpeSample& s) noexcept { return s.target_propensity / s.logging_propensity; }

// Kish's effective sample size of the importance weights (M37): (sum w)^2 / sum w^2; n for
// equal weights, 1 when one decision carries all the weight, 0 when none has any.
inline double effective_sample_size(std::span<const OpeSample> samples) {
  double w = 0, w2 = 0;
  for (const OpeSample& s : samples) {
    const double v = importance_weight(s);
    w += v;
    w2 += v * v;
  }
  return w2 > 0 ? w * w / w2 : 0.0;
}

// All five estimators with their intervals. Throws InputError (validate_samples) for a bad
// sample, InputError for an empty log, ConfigError for bad options. Estimators whose inputs
// are missing (no reward model: DM, DR; no replay matches or a non-uniform log: replay)
// come back with available = false and a note saying why.
inline OpeReport evaluate_off_policy(std::span<const OpeSample> samples, const OpeOptions& options = {}) {
  options.validate();
  if (samples.empty()) throw InputError("off-policy evaluation: samples: expected at least 1 logged decision, got 0");
  validate_samples(samples);
  const std::size_t n = samples.size();
  OpeReport report;
  report.samples = n;
  report.confidence = options.confidence;
  report.bootstrap = options.bootstrap;

  bool has_dm = true, has_match = true;
  double p_min = samples[0].logging_propensity, p_max = p_min;
  std::vector<double> weight(n);
  detail::OpeSums total;
  for (std::size_t i = 0; i < n; ++i) {
    const OpeSample& s = samples[i];
    has_dm = has_dm && !std::isnan(s.dm_value);
    has_match = has_match && !std::isnan(s.replay_match);
    p_min = std::min(p_min, s.logging_propensity);
    p_max = std::max(p_max, s.logging_propensity);
    weight[i] = importance_weight(s);
    report.max_weight = std::max(report.max_weight, weight[i]);
  }
  report.uniform_logging = p_max - p_min <= 1e-9 * p_max;
  // Absent inputs enter the sums as 0 and their estimators are reported unavailable.
  auto clean = [&](const OpeSample& s) {
    OpeSample c = s;
    if (!has_dm) c.dm_value = c.dm_logged = 0.0;
    if (!has_match) c.replay_match = 0.0;
    return c;
  };
  std::vector<OpeSample> used(n);
  for (std::size_t i = 0; i < n; ++i) {
    used[i] = clean(samples[i]);
    total.add(used[i], weight[i]);
  }
  report.logged_value = total.reward / total.n;
  {
    std::vector<double> r(n);
    for (std::size_t i = 0; i < n; ++i) r[i] = used[i].reward;
    report.logged_std_error = detail::mean_std_error(r);
  }

  // Plug-in standard errors: the mean's for IPS, DM, DR; the ratio's linearisation
  // w_i (r_i - V) / mean(w) for SNIPS and replay (with the match as the weight).
  std::array<OpeEstimate, kEstimators.size()> est;
  std::vector<double> terms(n);
  const double ess = effective_sample_size(samples);
  for (Estimator e : kEstimators) {
    OpeEstimate& x = est[static_cast<std::size_t>(e)];
    x.estimator = e;
    x.available = true;
    x.n = n;
    x.value = total.value(e);
    const double v = x.value;
    for (std::size_t i = 0; i < n; ++i) {
      const OpeSample& s = used[i];
      switch (e) {
        case Estimator::replay: terms[i] = total.m > 0 ? s.replay_match * (s.reward - v) / (total.m / total.n) : 0.0; break;
        case Estimator::ips: terms[i] = weight[i] * s.reward; break;
        case Estimator::snips: terms[i] = total.w > 0 ? weight[i] * (s.reward - v) / (total.w / total.n) : 0.0; break;
        case Estimator::dm: terms[i] = s.dm_value; break;
        case Estimator::dr: terms[i] = s.dm_value + weight[i] * (s.reward - s.dm_logged); break;
      }
    }
    x.std_error = detail::mean_std_error(terms);
    x.ess = e == Estimator::dm ? static_cast<double>(n) : ess;
  }
  OpeEstimate& replay = est[static_cast<std::size_t>(Estimator::replay)];
  replay.ess = total.m;
  replay.n = static_cast<std::size_t>(total.m);
  if (!has_match) {
    replay.available = false;
    replay.note = "no replay matches in the samples";
  } else if (options.replay_needs_uniform_logging && !report.uniform_logging) {
    replay.available = false;
    replay.note = "logging policy not uniform (replay is unbiased on uniformly random logs only)";
  } else if (total.m == 0) {
    replay.available = false;
    replay.note = "no decision where the target picks the logged action";
  }
  for (Estimator e : {Estimator::dm, Estimator::dr})
    if (!has_dm) {
      est[static_cast<std::size_t>(e)].available = false;
      est[static_cast<std::size_t>(e)].note = "no reward model";
    }
  if (total.w <= 0) {
    OpeEstimate& s = est[static_cast<std::size_t>(Estimator::snips)];
    s.available = false;
    s.note = "the target gives probability 0 to every logged action";
  }

  // Percentile bootstrap (M38): B resamples of the n decisions with replacement, every
  // estimator on the same resample; a resample where a ratio is undefined is left out.
  if (options.bootstrap > 0) {
    std::array<std::vector<double>, kEstimators.size()> values;
    for (auto& v : values) v.reserve(options.bootstrap);
    Rng rng(options.seed, 0x4F50452D424F4F54ULL);
    for (std::size_t b = 0; b < options.bootstrap; ++b) {
      detail::OpeSums sums;
      for (std::size_t j = 0; j < n; ++j) {
        const std::size_t i = static_cast<std::size_t>(rng.below(n));
        sums.add(used[i], weight[i]);
      }
      for (Estimator e : kEstimators) {
        const double v = sums.value(e);
        if (std::isfinite(v)) values[static_cast<std::size_t>(e)].push_back(v);
      }
    }
    const double alpha = 1.0 - options.confidence;
    for (Estimator e : kEstimators) {
      auto& v = values[static_cast<std::size_t>(e)];
      std::sort(v.begin(), v.end());
      OpeEstimate& x = est[static_cast<std::size_t>(e)];
      x.lower = detail::quantile_sorted(v, alpha / 2);
      x.upper = detail::quantile_sorted(v, 1.0 - alpha / 2);
    }
  }
  for (OpeEstimate& x : est)
    if (!x.available) x.value = x.std_error = x.lower = x.upper = std::numeric_limits<double>::quiet_NaN();
  report.estimates.assign(est.begin(), est.end());
  return report;
}

}  // namespace age::sim
