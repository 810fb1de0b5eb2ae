// The synthetic R6B-like world: the Beta sampler, the generated world against the stated
// parameters (seeded statistical checks with stated tolerances), the click formula,
// common random numbers and determinism, and the validity of the log it writes.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "age/core/rng.hpp"
#include "age/sim/environment.hpp"
#include "age/sim/r6b.hpp"

using namespace age;
using namespace age::sim;

namespace {

struct Moments {
  double mean = 0, var = 0;
};

template <class F>
Moments moments(std::size_t n, F draw) {
  double s = 0, ss = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double x = draw();
    s += x;
    ss += x * x;
  }
  Moments m;
  m.mean = s / static_cast<double>(n);
  m.var = ss / static_cast<double>(n) - m.mean * m.mean;
  return m;
}

// Beta(a, b) CDF at x by Simpson's rule on t = x^a substitution-free form: integrate the
// density with u = t^(1/a) (removes the t^(a-1) singularity at 0 for a < 1).
double beta_cdf(double a, double b, double x) {
  // density f(t) = t^(a-1) (1-t)^(b-1) / B(a, b); with t = u^(1/a): dt = (1/a) u^(1/a - 1) du,
  // f(t) dt = (1/a) (1 - u^(1/a))^(b-1) du / B(a, b).
  const double beta_fn = std::exp(std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b));
  const double upper = std::pow(x, a);
  const int n = 2000;
  const double h = upper / n;
  double s = 0;
  for (int i = 0; i <= n; ++i) {
    const double u = i * h;
    const double g = std::pow(1.0 - std::pow(u, 1.0 / a), b - 1.0) / a;
    s += g * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
  }
  return s * h / 3.0 / beta_fn;
}

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::path(AGE_TEST_BINARY_DIR) / "environment_tmp";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

}  // namespace

TEST_CASE("Gamma and Beta samplers match their moments", "[environment]") {
  Rng rng(42);
  const std::size_t n = 200000;
  // Gamma(k): mean k, variance k. Tolerance 5 standard errors of the mean; 5% on variance.
  for (double k : {0.5, 1.0, 4.0}) {
    const Moments m = moments(n, [&] { return sample_gamma(rng, k); });
    INFO("shape " << k);
    CHECK(std::abs(m.mean - k) < 5 * std::sqrt(k / n));
    CHECK(m.var == Approx(k).epsilon(0.05));
  }
  // Beta(0.5, 4): mean 1/9, variance a b / ((a + b)^2 (a + b + 1)) = 2 / (20.25 * 5.5).
  const double a = 0.5, b = 4.0, mean = a / (a + b), var = a * b / ((a + b) * (a + b) * (a + b + 1));
  std::vector<double> x(n);
  for (double& v : x) v = sample_beta(rng, a, b);
  double s = 0, ss = 0;
  for (double v : x) {
    s += v;
    ss += v * v;
    REQUIRE(v >= 0.0);
    REQUIRE(v <= 1.0);
  }
  const double m = s / n, vv = ss / n - m * m;
  CHECK(std::abs(m - mean) < 5 * std::sqrt(var / n));
  CHECK(vv == Approx(var).epsilon(0.03));
  // The CDF at a few points (the mass near 0 is what a < 1 gets wrong most easily):
  // empirical vs numerical CDF within 5 binomial standard errors.
  for (double q : {0.001, 0.01, 0.05, 0.2, 0.5}) {
    const double p = beta_cdf(a, b, q);
    const double emp = static_cast<double>(std::count_if(x.begin(), x.end(), [&](double v) { return v < q; })) / n;
    INFO("x = " << q << " cdf " << p << " empirical " << emp);
    CHECK(std::abs(emp - p) < 5 * std::sqrt(p * (1 - p) / n));
  }
  CHECK_THROWS_AS(sample_gamma(rng, 0.0), ConfigError);
}

TEST_CASE("The generated world has the stated articles and feature probabilities", "[environment]") {
  const std::uint64_t V = 200000;
  Environment env(7, V);
  const double L = 38.0 * V / 652.0;
  CHECK(env.lifetime_scale() == Approx(L));
  const auto& arts = env.articles();
  REQUIRE(arts.size() == 652);
  double bias_sum = 0, bias_ss = 0, c_ss = 0;
  for (std::size_t k = 0; k < arts.size(); ++k) {
    const Article& a = arts[k];
    CHECK(a.id == 552000 + k);
    if (k < 38)
      CHECK(a.arrival == 0.0);
    else
      CHECK((a.arrival >= 0.0 && a.arrival < static_cast<double>(V)));
    CHECK((a.lifetime >= 0.5 * L && a.lifetime <= 1.5 * L));
    bias_sum += a.bias;
    bias_ss += a.bias * a.bias;
    for (double c : a.latent) c_ss += c * c;
  }
  // beta_a ~ N(logit 0.03, 0.6^2): mean within 4 standard errors (0.6 / sqrt 652), std 10%.
  const double bm = bias_sum / 652, bsd = std::sqrt(bias_ss / 652 - bm * bm);
  CHECK(std::abs(bm - std::log(0.03 / 0.97)) < 4 * 0.6 / std::sqrt(652.0));
  CHECK(bsd == Approx(0.6).epsilon(0.1));
  // c_a ~ N(0, I/8): mean square per component 1/8 within 10% (5216 values).
  CHECK(c_ss / (652 * 8) == Approx(1.0 / 8).epsilon(0.1));
  // Arrivals of articles 38..651 uniform on [0, V): mean V/2 within 4 standard errors.
  double arr = 0;
  for (std::size_t k = 38; k < 652; ++k) arr += arts[k].arrival;
  CHECK(std::abs(arr / 614 - V / 2.0) < 4 * (V / std::sqrt(12.0)) / std::sqrt(614.0));
  // q[s][i] ~ Beta(0.5, 4): 20 x 135 draws, mean 1/9 within 4 standard errors; feature 1 on.
  double q = 0;
  for (std::uint32_t s = 0; s < 20; ++s) {
    CHECK(env.feature_prob(s, 1) == 1.0);
    for (std::uint32_t f = 2; f <= 136; ++f) q += env.feature_prob(s, f);
  }
  const double var = 0.5 * 4 / (4.5 * 4.5 * 5.5);
  CHECK(std::abs(q / 2700 - 1.0 / 9) < 4 * std::sqrt(var / 2700));
  // Segment weights proportional to 1/(s+1).
  double h = 0;
  for (int s = 0; s < 20; ++s) h += 1.0 / (s + 1);
  for (std::uint32_t s = 0; s < 20; ++s) CHECK(env.segment_weights()[s] == Approx(1.0 / (s + 1) / h));
  // Timestamps: 1317513291 + floor(v * 15 * 86400 / V).
  CHECK(env.timestamp(0) == 1317513291);
  CHECK(env.timestamp(V / 2) == 1317513291 + 15 * 86400 / 2);
  CHECK(env.timestamp(V - 1) == 1317513291 + (V - 1) * 15 * 86400 / V);
}

TEST_CASE("Visits follow the segment weights, feature rates and candidate rule", "[environment]") {
  const std::uint64_t V = 200000;
  Environment env(11, V);
  const std::uint64_t n = 40000;
  std::vector<double> seg(20, 0);
  std::vector<double> on0(137, 0);
  double seg0 = 0, candidates = 0;
  std::size_t min_candidates = 1000;
  Visit v;
  for (std::uint64_t i = 0; i < n; ++i) {
    env.visit(i * (V / n), v);
    seg[v.segment] += 1;
    REQUIRE(v.features.front() == 1);
    REQUIRE(std::is_sorted(v.features.begin(), v.features.end()));
    if (v.segment == 0) {
      seg0 += 1;
      for (auto f : v.features) on0[f] += 1;
    }
    candidates += static_cast<double>(v.size());
    min_candidates = std::min(min_candidates, v.size());
    // The candidates are exactly the live articles when at least 10 are live.
    std::size_t live = 0;
    for (const auto& a : env.articles()) live += a.live_at(static_cast<double>(v.index));
    if (live >= 10) CHECK(v.size() == live);
    REQUIRE(v.logged < v.size());
  }
  // Segment frequencies: within 4.5 binomial standard errors of the weights.
  for (std::uint32_t s = 0; s < 20; ++s) {
    const double w = env.segment_weights()[s];
    INFO("segment " << s);
    CHECK(std::abs(seg[s] / n - w) < 4.5 * std::sqrt(w * (1 - w) / n));
  }
  // Feature rates of segment 0 (about 28% of visits): each within 4.5 standard errors of q.
  for (std::uint32_t f = 2; f <= 136; ++f) {
    const double q = env.feature_prob(0, f);
    INFO("feature " << f);
    CHECK(std::abs(on0[f] / seg0 - q) < 4.5 * std::sqrt(std::max(q * (1 - q), 1e-6) / seg0) + 1e-3);
  }
  CHECK(min_candidates >= 10);
  // About 38 live articles on average (652 articles x mean lifetime L over V visits).
  CHECK(candidates / n == Approx(38).epsilon(0.15));
}

TEST_CASE("When fewer than 10 articles are live the most recently expired are added back", "[environment]") {
  Environment env(3, 20000);
  std::vector<std::uint32_t> c;
  // Long after the last visit every article has expired: the 10 latest expiries come back.
  const std::uint64_t late = 100000;
  env.candidates(late, c);
  REQUIRE(c.size() == 10);
  std::vector<double> expiry;
  for (const auto& a : env.articles()) expiry.push_back(a.expiry());
  std::sort(expiry.rbegin(), expiry.rend());
  for (auto k : c) CHECK(env.articles()[k].expiry() >= expiry[9]);
  CHECK(std::is_sorted(c.begin(), c.end()));
}

TEST_CASE("Click probabilities follow the stated formula and the world's mean CTR", "[environment]") {
  const std::uint64_t V = 200000;
  Environment env(5, V);
  const double L = env.lifetime_scale();
  Visit v;
  double sum_p = 0, clicks = 0, count = 0;
  for (std::uint64_t i = 0; i < 60000; ++i) {
    env.visit(i * 3 + 1, v);
    // Independent recomputation: z_u = M^T x / sqrt(n), logit = beta + 0.8 <z, c> - age / L.
    if (i % 100 == 0) {
      for (std::size_t c = 0; c < v.size(); ++c) {
        const Article& a = env.articles()[v.candidates[c]];
        double dot = 0;
        for (std::size_t j = 0; j < 8; ++j) {
          double z = 0;
          for (auto f : v.features) z += env.latent_weight(f, j);
          dot += z / std::sqrt(static_cast<double>(v.features.size())) * a.latent[j];
        }
        const double logit = a.bias + 0.8 * dot - (static_cast<double>(v.index) - a.arrival) / L;
        REQUIRE(v.click_prob[c] == Approx(1 / (1 + std::exp(-logit))).epsilon(1e-12));
        REQUIRE(v.candidate_ids[c] == a.id);
      }
    }
    sum_p += v.click_prob[v.logged];
    clicks += v.clicked(v.logged) ? 1 : 0;
    count += 1;
  }
  const double mean_p = sum_p / count;
  // Clicks are Bernoulli(p): the empirical rate within 4 standard errors of the mean p.
  CHECK(std::abs(clicks / count - mean_p) < 4 * std::sqrt(mean_p / count));
  // What the formula implies for a uniformly displayed live article: logit ~ N(mu, s^2) with
  // mu = logit 0.03 - E[age]/L (E[age]/L = E[T^2] / (2 E[T] L) = 13/24 for T ~ U(0.5, 1.5) L)
  // and s^2 = 0.6^2 + 0.8^2 E|z|^2 / 8 + Var(age / L); E|z|^2 = 8 since M is standard normal.
  // E[sigmoid] by quadrature; the world's mean p must lie within 15% of it.
  const double mu = std::log(0.03 / 0.97) - 13.0 / 24.0;
  // Var(age / L) = E[T^3] / (3 E[T] L^2) - (13/24)^2 = 1.25 / 3 - (13/24)^2 = 0.123.
  const double var_age = 1.25 / 3 - (13.0 / 24) * (13.0 / 24);
  const double s = std::sqrt(0.36 + 0.64 + var_age);
  double implied = 0, wsum = 0;
  for (int k = -600; k <= 600; ++k) {
    const double x = k / 100.0, w = std::exp(-0.5 * x * x);
    implied += w / (1 + std::exp(-(mu + s * x)));
    wsum += w;
  }
  implied /= wsum;
  INFO("mean p " << mean_p << " implied " << implied);
  CHECK(mean_p == Approx(implied).epsilon(0.15));
}

TEST_CASE("The world is deterministic per seed and independent of the order of visits", "[environment]") {
  Environment a(9, 50000), b(9, 50000), c(10, 50000);
  Visit va, vb, vc;
  bool all_same_c = true;
  for (std::uint64_t v : {49999ULL, 0ULL, 1234ULL, 777ULL, 30000ULL}) {
    a.visit(v, va);
    b.visit(v, vb);
    c.visit(v, vc);
    CHECK(va.features == vb.features);
    CHECK(va.candidates == vb.candidates);
    CHECK(va.click_prob == vb.click_prob);
    CHECK(va.click_draw == vb.click_draw);
    CHECK(va.logged == vb.logged);
    all_same_c = all_same_c && va.features == vc.features && va.click_draw == vc.click_draw;
  }
  CHECK_FALSE(all_same_c);
  // Common random numbers: visit 1234 is the same whatever was asked before.
  Visit first, again;
  b.visit(1234, first);
  for (std::uint64_t v = 0; v < 100; ++v) b.visit(v, again);
  b.visit(1234, again);
  CHECK(first.features == again.features);
  CHECK(first.click_draw == again.click_draw);
  for (std::size_t k = 0; k < first.size(); ++k) CHECK(first.clicked(k) == again.clicked(k));
  CHECK_THROWS_AS(a.visit(50000, va), InputError);
}

TEST_CASE("The environment's log is valid R6B and replays its visits", "[environment]") {
  const std::uint64_t V = 3000;
  Environment env(4, V);
  const std::string path = temp_path("world.txt.gz");
  env.write_log(path);
  R6bReader reader(path);
  R6bEvent e, expected;
  Visit v;
  std::uint64_t n = 0, clicks = 0;
  while (reader.next(e)) {
    env.visit(n, v);
    Environment::to_event(v, expected);
    REQUIRE(e == expected);
    REQUIRE(e.displayed_index() == static_cast<std::ptrdiff_t>(v.logged));
    clicks += e.click;
    ++n;
  }
  CHECK(n == V);
  CHECK(reader.skipped() == 0);
  CHECK(clicks > 0);
}

TEST_CASE("EnvironmentLog yields the lines write_log writes, without the file", "[environment]") {
  const std::uint64_t V = 2000;
  Environment env(5, V);
  const std::string path = temp_path("world-log.txt.gz");
  env.write_log(path);
  R6bReader reader(path);
  EnvironmentLog log(env);
  R6bEvent from_file, generated;
  std::uint64_t n = 0;
  while (reader.next(from_file)) {
    REQUIRE(log.next(generated));
    REQUIRE(generated == from_file);
    ++n;
  }
  CHECK(n == V);
  CHECK_FALSE(log.next(generated));
  // A prefix of the log.
  EnvironmentLog head(env, 10);
  std::uint64_t lines = 0;
  while (head.next(generated)) ++lines;
  CHECK(lines == 10);
}
