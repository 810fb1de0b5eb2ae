// From logged decisions to OPE samples (age/sim/ope_samples.hpp): hand-checked samples,
// and end to end on a synthetic ranking log whose target value is known exactly.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "age/explore/baselines.hpp"
#include "age/model/tower.hpp"
#include "age/sim/ope.hpp"
#include "age/sim/ope_samples.hpp"

using namespace age;
using namespace age::sim;

namespace {

Tower make_tower(std::uint64_t seed) {
  Tower t(3, 4, {8});
  Rng rng(seed);
  t.initialize(rng);
  return t;
}

Matrix random_matrix(Index rows, Index cols, Rng& rng, double scale = 1.0) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(scale * rng.normal());
  return m;
}

}  // namespace

TEST_CASE("make_ope_sample: the target's probability of the shown candidate, its pick and the DM terms", "[ope]") {
  const std::vector<double> prob{0.5, 0.25, 0.25};
  const std::vector<Scalar> q{0.5f, 0.25f, 1.0f};
  const OpeSample s = make_ope_sample(prob, 0, 2, 0.5, 1.0, q);
  CHECK(s.target_propensity == 0.25);
  CHECK(s.replay_match == 0.0);
  CHECK(s.dm_value == Approx(0.5 * 0.5 + 0.25 * 0.25 + 0.25 * 1.0));
  CHECK(s.dm_logged == 1.0);
  const OpeSample unknown = make_ope_sample(prob, -1, 1, 0.5, 0.0);
  CHECK(std::isnan(unknown.replay_match));
  CHECK(std::isnan(unknown.dm_value));
  CHECK_THROWS_WITH(make_ope_sample(prob, 0, 3, 0.5, 1.0), Catch::Contains("shown candidate: expected an index in [0, 3), got 3"));
  CHECK_THROWS_AS(make_ope_sample(prob, 0, 1, 0.5, 1.0, std::vector<Scalar>{1.0f}), DimensionError);
}

TEST_CASE("OpeSampler: the logging policy evaluated on its own log replays every decision with weight 1", "[ope]") {
  const Tower t = make_tower(1);
  const RandomPolicy<Tower> logger(t, 9);
  Rng rng(4);
  const Matrix user = random_matrix(3, 1, rng);
  const Matrix items = random_matrix(4, 5, rng);
  OpeSampler<RandomPolicy<Tower>> sampler(logger, {});
  for (std::uint64_t id = 0; id < 20; ++id) {
    const Request request{user, items, id};
    const ScoredRequest out = [&] {
      ScoredRequest o;
      TowerWorkspace ws;
      logger.score(request, o, ws);
      return o;
    }();
    const Index position = static_cast<Index>(id % 3);
    const OpeSample s = sampler(LoggedDecision{request, out.ranking[static_cast<std::size_t>(position)], position, 0.2, 1.0});
    CHECK(s.replay_match == 1.0);
    CHECK(s.target_propensity == 0.2);
    CHECK(importance_weight(s) == 1.0);
  }
  CHECK_THROWS_WITH(sampler(LoggedDecision{Request{user, items, 1}, 0, 5, 0.2, 1.0}),
                    Catch::Contains("position: expected a slot in [0, 5), got 5"));
}

TEST_CASE("OpeSampler end to end: IPS and DR of epsilon-greedy on uniform ranking logs are unbiased",
          "[ope][statistical]") {
  // Requests of 5 candidates; clicks drawn from the tower's own probabilities, which are
  // also the reward model, so that the target's true value per decision is known:
  // V = mean over decisions of sum_a pi_e(a | x) p(a).
  const Tower t = make_tower(2);
  const EpsilonGreedy<Tower> target(t, {.epsilon = 0.4, .seed = 1});
  const RandomPolicy<Tower> logger(t, 3);
  Rng world(8);
  std::vector<Matrix> users, items;
  for (int r = 0; r < 40; ++r) {
    users.push_back(random_matrix(3, 1, world));
    items.push_back(random_matrix(4, 5, world, 2.0));
  }
  OpeSampler<EpsilonGreedy<Tower>> sampler(target, {});
  sampler.set_reward_model(t);
  const int logs = 300, n = 200;
  std::vector<double> ips, dr;
  double truth = 0;
  for (int l = 0; l < logs; ++l) {
    Rng rng(100 + static_cast<std::uint64_t>(l));
    std::vector<OpeSample> samples;
    double value = 0;
    for (int i = 0; i < n; ++i) {
      const std::size_t r = rng.below(users.size());
      const Request request{users[r], items[r], rng()};
      const ScoredRequest logged = [&] {
        ScoredRequest o;
        TowerWorkspace ws;
        logger.score(request, o, ws);
        return o;
      }();
      const Index position = static_cast<Index>(rng.below(2));
      const Index shown = logged.ranking[static_cast<std::size_t>(position)];
      const double click = rng.bernoulli(static_cast<double>(logged.base[shown])) ? 1.0 : 0.0;
      const OpeSample s = sampler(LoggedDecision{request, shown, position, 0.2, click});
      samples.push_back(s);
      value += s.dm_value;  // exact: q is the true click probability
    }
    truth += value / n;
    const OpeReport rep = evaluate_off_policy(samples, {.bootstrap = 0});
    ips.push_back(rep[Estimator::ips].value);
    dr.push_back(rep[Estimator::dr].value);
  }
  truth /= logs;
  for (const auto* est : {&ips, &dr}) {
    double mean = 0, var = 0;
    for (double v : *est) mean += v;
    mean /= logs;
    for (double v : *est) var += (v - mean) * (v - mean);
    var /= logs - 1;
    INFO("mean " << mean << " truth " << truth << " se " << std::sqrt(var / logs));
    CHECK(std::abs(mean - truth) <= 4 * std::sqrt(var / logs));
  }
}
