// The synthetic news-recommendation world of the offline study: a generated stand-in for
// Yahoo! R6B (which is not redistributable), with every parameter fixed in advance (the
// README's offline study describes them), not tuned. Needs zlib (through age/sim/r6b.hpp,
// for write_log()).
//
// Given an environment seed and a number of visits V:
//   - visit v has timestamp 1317513291 + floor(v * 15 * 86400 / V);
//   - users have 136 binary features, feature 1 always on; 20 segments with weights
//     proportional to 1/(s+1); in segment s, feature i (2..136) is on with probability
//     q[s][i] ~ Beta(0.5, 4), drawn once;
//   - 652 articles "id-<552000 + k>": the first 38 live from visit 0, the others arrive at
//     a uniform visit in [0, V); each lives Uniform(0.5, 1.5) * L visits, L = 38 V / 652;
//     a visit's candidates are the live articles, topped up to 10 with the most recently
//     expired ones when fewer are live;
//   - click probability (the world's truth):
//       logit p(u, a, v) = beta_a + 0.8 <z_u, c_a> - (v - arrival_a) / L
//       beta_a ~ N(logit 0.03, 0.6^2),  z_u = M^T x_u / sqrt(#active features),
//       M (136 x 8) standard normal,    c_a ~ N(0, I_8 / 8)
//     so news goes stale, losing one logit unit over a mean lifetime.
//
// Common random numbers: the world (q, M, articles) comes from streams of the seed, and
// everything about visit v (segment, features, the uniform draw that decides its click,
// the logging policy's uniform pick) from a stream of (seed, v). Nothing depends on what a
// policy chose before, so every policy meets the same users and articles, and the same
// visit gives the same click for the same picked article (click = u_v < p).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/sim/r6b.hpp"

namespace age::sim {

// Gamma(shape, 1) by Marsaglia and Tsang (2000); for shape < 1 through
// Gamma(a) = Gamma(a + 1) * U^(1/a).
inline double sample_gamma(Rng& rng, double shape) {
  if (!(shape > 0.0 && std::isfinite(shape)))
    throw ConfigError("gamma shape: expected a finite value > 0, got " + std::to_string(shape));
  if (shape < 1.0) {
    const double u = 1.0 - rng.uniform();  // (0, 1]
    return sample_gamma(rng, shape + 1.0) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = rng.normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = 1.0 - rng.uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

// Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).
inline double sample_beta(Rng& rng, double a, double b) {
  const double x = sample_gamma(rng, a), y = sample_gamma(rng, b);
  return x / (x + y);
}

inline double logit(double p) { return std::log(p / (1.0 - p)); }
inline double logistic(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

// One article of the world.
struct Article {
  std::uint64_t id = 0;  // 552000 + k
  double arrival = 0;    // first visit it is live
  double lifetime = 0;   // in visits
  double bias = 0;       // beta_a
  std::array<double, 8> latent{};  // c_a

  double expiry() const noexcept { return arrival + lifetime; }
  bool live_at(double v) const noexcept { return arrival <= v && v < expiry(); }
};

// Everything about one visit. Buffers are reused across calls of Environment::visit.
struct Visit {
  std::uint64_t index = 0;
  std::int64_t timestamp = 0;
  std::uint32_t segment = 0;
  std::vector<std::uint32_t> features;      // active feature ids, ascending, 1 included
  std::vector<std::uint32_t> candidates;    // article indices k
  std::vector<std::uint64_t> candidate_ids; // article ids (552000 + k)
  std::vector<double> click_prob;           // p(u, a, v) per candidate
  double click_draw = 0;                    // u_v ~ U[0, 1): click iff u_v < p
  std::size_t logged = 0;                   // candidate the uniform logging policy shows

  std::size_t size() const noexcept { return candidates.size(); }
  bool clicked(std::size_t position) const { return click_draw < click_prob.at(position); }
  double best_prob() const noexcept { return *std::max_element(click_prob.begin(), click_prob.end()); }
};

class Environment {
 public:
  static constexpr std::uint32_t kFeatures = 136;
  static constexpr std::uint32_t kSegments = 20;
  static constexpr std::size_t kArticles = 652;
  static constexpr std::size_t kInitialArticles = 38;
  static constexpr std::size_t kMinCandidates = 10;
  static constexpr std::size_t kLatent = 8;
  static constexpr std::uint64_t kFirstArticleId = 552000;
  static constexpr std::int64_t kFirstTimestamp = 1317513291;
  static constexpr std::int64_t kSpanSeconds = 15 * 86400;
  static constexpr double kBaseCtr = 0.03, kBiasStd = 0.6, kAffinity = 0.8;
  static constexpr double kFeatureA = 0.5, kFeatureB = 4.0;  // Beta(0.5, 4)

  explicit Environment(std::uint64_t seed, std::uint64_t visits = 200000) : seed_(seed), visits_(visits) {
    if (visits_ < 1) throw ConfigError("environment visits: expected >= 1, got 0");
    lifetime_scale_ = static_cast<double>(kInitialArticles) * static_cast<double>(visits_) / static_cast<double>(kArticles);
    generate();
  }

  std::uint64_t seed() const noexcept { return seed_; }
  std::uint64_t visits() const noexcept { return visits_; }
  // L = 38 V / 652, the mean lifetime of an article in visits.
  double lifetime_scale() const noexcept { return lifetime_scale_; }
  const std::vector<Article>& articles() const noexcept { return articles_; }
  const std::vector<double>& segment_weights() const noexcept { return segment_weights_; }
  // q[s][i] for feature i in 1..136 (feature 1: always 1).
  double feature_prob(std::uint32_t segment, std::uint32_t feature) const {
    return feature_prob_.at(static_cast<std::size_t>(segment) * (kFeatures + 1) + feature);
  }
  // M[i - 1][j], feature i in 1..136, j in 0..7.
  double latent_weight(std::uint32_t feature, std::size_t j) const {
    return latent_matrix_.at(static_cast<std::size_t>(feature - 1) * kLatent + j);
  }

  std::int64_t timestamp(std::uint64_t v) const noexcept {
    // v * span fits in 64 bits for any V below 1.4e13 visits.
    return kFirstTimestamp + static_cast<std::int64_t>(v * static_cast<std::uint64_t>(kSpanSeconds) / visits_);
  }

  // True click probability of article k for a user with latent z at visit v.
  double click_probability(const std::array<double, 8>& z, std::size_t k, std::uint64_t v) const {
    const Article& a = articles_.at(k);
    double dot = 0;
    for (std::size_t j = 0; j < kLatent; ++j) dot += z[j] * a.latent[j];
    return logistic(a.bias + kAffinity * dot - (static_cast<double>(v) - a.arrival) / lifetime_scale_);
  }

  // z_u = M^T x_u / sqrt(#active) for a list of active features.
  std::array<double, 8> user_latent(const std::vector<std::uint32_t>& features) const {
    std::array<double, 8> z{};
    for (std::uint32_t f : features)
      for (std::size_t j = 0; j < kLatent; ++j) z[j] += latent_weight(f, j);
    const double s = 1.0 / std::sqrt(static_cast<double>(std::max<std::size_t>(features.size(), 1)));
    for (double& e : z) e *= s;
    return z;
  }

  // Candidates (article indices, ascending) of visit v into `out`.
  void candidates(std::uint64_t v, std::vector<std::uint32_t>& out) const {
    out.clear();
    const double t = static_cast<double>(v);
    for (std::size_t k = 0; k < kArticles; ++k)
      if (articles_[k].live_at(t)) out.push_back(static_cast<std::uint32_t>(k));
    if (out.size() >= kMinCandidates) return;
    // Too few live: add back the most recently expired until there are 10.
    std::vector<std::uint32_t> expired;
    for (std::size_t k = 0; k < kArticles; ++k)
      if (articles_[k].expiry() <= t) expired.push_back(static_cast<std::uint32_t>(k));
    std::sort(expired.begin(), expired.end(), [&](std::uint32_t a, std::uint32_t b) {
      return articles_[a].expiry() > articles_[b].expiry() || (articles_[a].expiry() == articles_[b].expiry() && a < b);
    });
    for (std::size_t i = 0; i < expired.size() && out.size() < kMinCandidates; ++i) out.push_back(expired[i]);
    std::sort(out.begin(), out.end());
  }

  // Visit v (0 <= v < V): its user, candidates, true click probabilities and random draws.
  void visit(std::uint64_t v, Visit& out) const {
    if (v >= visits_) throw InputError(age::detail::mismatch("visit index: expected < visits", visits_, v));
    Rng rng(age::detail::mix64(seed_ ^ kVisitSalt), v);
    out.index = v;
    out.timestamp = timestamp(v);
    // Segment s with probability proportional to 1 / (s + 1).
    const double u = rng.uniform();
    std::uint32_t s = 0;
    while (s + 1 < kSegments && u >= segment_cdf_[s]) ++s;
    out.segment = s;
    out.features.clear();
    out.features.push_back(1);
    for (std::uint32_t f = 2; f <= kFeatures; ++f)
      if (rng.bernoulli(feature_prob(s, f))) out.features.push_back(f);
    out.click_draw = rng.uniform();
    candidates(v, out.candidates);
    out.logged = static_cast<std::size_t>(rng.below(out.candidates.size()));
    const auto z = user_latent(out.features);
    out.candidate_ids.resize(out.candidates.size());
    out.click_prob.resize(out.candidates.size());
    for (std::size_t i = 0; i < out.candidates.size(); ++i) {
      out.candidate_ids[i] = articles_[out.candidates[i]].id;
      out.click_prob[i] = click_probability(z, out.candidates[i], v);
    }
  }

  // The R6B line of a visit under the uniform logging policy (displayed = logged pick).
  static void to_event(const Visit& visit, R6bEvent& e) {
    e.timestamp = visit.timestamp;
    e.displayed = visit.candidate_ids.at(visit.logged);
    e.click = visit.clicked(visit.logged);
    e.user = visit.features;
    e.candidates = visit.candidate_ids;
  }

  // Writes the uniformly-random log of the first `lines` visits (all V when 0) in R6B
  // format (gzip when the path ends in .gz).
  void write_log(const std::string& path, std::uint64_t lines = 0) const {
    R6bWriter writer(path, 1);
    Visit visit;
    R6bEvent e;
    const std::uint64_t n = lines == 0 ? visits_ : std::min(lines, visits_);
    for (std::uint64_t v = 0; v < n; ++v) {
      this->visit(v, visit);
      to_event(visit, e);
      writer.write(e);
    }
    writer.close();
  }

 private:
  static constexpr std::uint64_t kVisitSalt = 0x5649534954535452ULL;
  enum Stream : std::uint64_t { kStreamFeatures = 1, kStreamLatent = 2, kStreamArticles = 3 };

  void generate() {
    segment_weights_.resize(kSegments);
    double total = 0;
    for (std::uint32_t s = 0; s < kSegments; ++s) total += 1.0 / (s + 1.0);
    segment_cdf_.resize(kSegments);
    double acc = 0;
    for (std::uint32_t s = 0; s < kSegments; ++s) {
      segment_weights_[s] = 1.0 / (s + 1.0) / total;
      acc += segment_weights_[s];
      segment_cdf_[s] = acc;
    }

    Rng features(seed_, kStreamFeatures);
    feature_prob_.assign(static_cast<std::size_t>(kSegments) * (kFeatures + 1), 0.0);
    for (std::uint32_t s = 0; s < kSegments; ++s) {
      feature_prob_[static_cast<std::size_t>(s) * (kFeatures + 1) + 1] = 1.0;
      for (std::uint32_t f = 2; f <= kFeatures; ++f)
        feature_prob_[static_cast<std::size_t>(s) * (kFeatures + 1) + f] = sample_beta(features, kFeatureA, kFeatureB);
    }

    Rng latent(seed_, kStreamLatent);
    latent_matrix_.resize(static_cast<std::size_t>(kFeatures) * kLatent);
    for (double& m : latent_matrix_) m = latent.normal();

    Rng rng(seed_, kStreamArticles);
    articles_.resize(kArticles);
    const double c_std = 1.0 / std::sqrt(static_cast<double>(kLatent));
    for (std::size_t k = 0; k < kArticles; ++k) {
      Article& a = articles_[k];
      a.id = kFirstArticleId + k;
      a.arrival = k < kInitialArticles ? 0.0 : static_cast<double>(rng.below(visits_));
      a.lifetime = rng.uniform(0.5, 1.5) * lifetime_scale_;
      a.bias = rng.normal(logit(kBaseCtr), kBiasStd);
      for (double& c : a.latent) c = rng.normal(0.0, c_std);
    }
  }

  std::uint64_t seed_, visits_;
  double lifetime_scale_ = 0;
  std::vector<double> segment_weights_, segment_cdf_;
  std::vector<double> feature_prob_;   // [s][f], f in 0..136 (0 unused)
  std::vector<double> latent_matrix_;  // [f - 1][j]
  std::vector<Article> articles_;
};

// The world's uniformly random log as an event source for run_replay (age/sim/replay.hpp):
// the events write_log() writes, generated visit by visit, with no file and in constant
// memory. `lines` = 0: all V visits.
class EnvironmentLog {
 public:
  explicit EnvironmentLog(const Environment& env, std::uint64_t lines = 0)
      : env_(&env), lines_(lines == 0 ? env.visits() : std::min(lines, env.visits())) {}
  // The environment must outlive the log.
  explicit EnvironmentLog(const Environment&&, std::uint64_t = 0) = delete;

  bool next(R6bEvent& e) {
    if (next_ >= lines_) return false;
    env_->visit(next_++, visit_);
    Environment::to_event(visit_, e);
    return true;
  }

 private:
  const Environment* env_;
  std::uint64_t lines_;
  std::uint64_t next_ = 0;
  Visit visit_;
};

}  // namespace age::sim
