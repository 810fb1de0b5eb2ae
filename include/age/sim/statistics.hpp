// Statistics for comparing exploration policies run on the same seeds: the paired
// difference of a treatment against a control with its Student-t confidence interval, and
// the number of seeds on which the treatment gains. Offline evaluations of exploration are
// noisy (a replay run's clicks move by several percent with the seed alone), so a
// difference is a finding only when its interval excludes 0; pairing by seed removes the
// part of the noise that both policies share (the same world, users and clicks).
// Standard library only.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>

#include "age/core/error.hpp"

namespace age::sim {

namespace detail {

// ln Beta(a, b).
inline double log_beta(double a, double b) { return std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b); }

// The continued fraction of the regularized incomplete beta function I_x(a, b), evaluated
// by the modified Lentz method; converges quickly for x < (a + 1) / (a + b + 2).
inline double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300, tolerance = 1e-15;
  double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double f = d;
  for (int m = 1; m <= 500; ++m) {
    const double m2 = 2.0 * m;
    // Even step: m (b - m) x / ((a + 2m - 1)(a + 2m)).
    double num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
    d = 1.0 + num * d;
    c = 1.0 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    f *= c * d;
    // Odd step: -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
    num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
    d = 1.0 + num * d;
    c = 1.0 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double step = c * d;
    f *= step;
    if (std::fabs(step - 1.0) < tolerance) break;
  }
  return f;
}

// I_x(a, b), the regularized incomplete beta function, for x in [0, 1].
inline double regularized_incomplete_beta(double a, double b, double x) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double front = std::exp(a * std::log(x) + b * std::log1p(-x) - log_beta(a, b));
  // The fraction converges fast on one side of the mean; use the symmetry
  // I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
  if (x < (a + 1.0) / (a + b + 2.0)) return front * incomplete_beta_fraction(a, b, x) / a;
  return 1.0 - front * incomplete_beta_fraction(b, a, 1.0 - x) / b;
}

}  // namespace detail

// P(T <= t) for Student's t with `df` > 0 degrees of freedom.
inline double student_t_cdf(double t, double df) {
  if (!(df > 0.0) || !std::isfinite(df)) throw ConfigError("student_t_cdf: df: expected a finite value > 0");
  const double tail = 0.5 * detail::regularized_incomplete_beta(0.5 * df, 0.5, df / (df + t * t));
  return t >= 0 ? 1.0 - tail : tail;
}

// The quantile q of Student's t with `df` degrees of freedom (q in (0, 1)), by bisection of
// the CDF to 1e-12.
inline double student_t_quantile(double q, double df) {
  if (!(q > 0.0 && q < 1.0)) throw ConfigError("student_t_quantile: q: expected a value in (0, 1)");
  if (q < 0.5) return -student_t_quantile(1.0 - q, df);
  double lo = 0.0, hi = 1.0;
  while (student_t_cdf(hi, df) < q) hi *= 2.0;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * (1.0 + hi); ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, df) < q ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// A treatment against a control on the same n seeds: d_s = treatment_s - control_s.
struct PairedDifference {
  std::size_t n = 0;            // seeds
  double mean = 0;              // mean of d_s
  double sd = 0;                // sample standard deviation of d_s (n - 1)
  double se = 0;                // sd / sqrt(n)
  double low = 0, high = 0;     // confidence interval of the mean difference (Student t, n - 1 df)
  double control_mean = 0;      // mean of control_s
  std::size_t gains = 0;        // seeds with d_s > 0
  std::size_t losses = 0;       // seeds with d_s < 0
  double confidence = 0.95;

  // The difference and its interval relative to the control's mean, in percent (the
  // interval of the mean difference, divided by the control's mean).
  double percent() const { return 100.0 * mean / control_mean; }
  double percent_low() const { return 100.0 * low / control_mean; }
  double percent_high() const { return 100.0 * high / control_mean; }
  // A finding: the interval excludes 0.
  bool significant() const { return low > 0.0 || high < 0.0; }
};

// The paired difference of `treatment` and `control` (one value per seed, in the same seed
// order) with a `confidence` (default 95%) Student-t interval. Needs at least 2 seeds; with
// identical values on every seed the interval is [mean, mean].
inline PairedDifference paired_difference(std::span<const double> treatment, std::span<const double> control,
                                          double confidence = 0.95) {
  if (treatment.size() != control.size())
    throw DimensionError("paired_difference: control: expected " + std::to_string(treatment.size()) +
                         " values (one per seed of the treatment), got " + std::to_string(control.size()));
  if (treatment.size() < 2)
    throw InputError("paired_difference: seeds: expected at least 2, got " + std::to_string(treatment.size()));
  if (!(confidence > 0.0 && confidence < 1.0))
    throw ConfigError("paired_difference: confidence: expected a value in (0, 1), got " + std::to_string(confidence));
  PairedDifference p;
  p.n = treatment.size();
  p.confidence = confidence;
  for (std::size_t s = 0; s < p.n; ++s) {
    if (!std::isfinite(treatment[s]) || !std::isfinite(control[s]))
      throw InputError("paired_difference: seed " + std::to_string(s) + ": expected finite values");
    const double d = treatment[s] - control[s];
    p.mean += d;
    p.control_mean += control[s];
    p.gains += d > 0 ? 1 : 0;
    p.losses += d < 0 ? 1 : 0;
  }
  const double n = static_cast<double>(p.n);
  p.mean /= n;
  p.control_mean /= n;
  double ss = 0;
  for (std::size_t s = 0; s < p.n; ++s) {
    const double e = treatment[s] - control[s] - p.mean;
    ss += e * e;
  }
  p.sd = std::sqrt(ss / (n - 1.0));
  p.se = p.sd / std::sqrt(n);
  const double t = student_t_quantile(0.5 + 0.5 * confidence, n - 1.0);
  p.low = p.mean - t * p.se;
  p.high = p.mean + t * p.se;
  return p;
}

}  // namespace age::sim
