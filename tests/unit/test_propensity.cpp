// Propensities (age/explore/propensity.hpp): closed forms against Monte-Carlo, Monte-Carlo
// against direct simulation, the floor, and the offline recomputation from a logged id and
// seed. Statistical checks are seeded; each states its tolerance (4 standard errors).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "age/explore/ablation.hpp"
#include "age/explore/any_explorer.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/propensity.hpp"
#include "age/model/tower.hpp"

using namespace age;

namespace {

Tower make_tower(std::uint64_t seed, std::size_t user_dim = 4, std::size_t item_dim = 6,
                 std::vector<std::size_t> hidden = {16, 8}) {
  Tower t(user_dim, item_dim, std::move(hidden));
  Rng rng(seed);
  t.initialize(rng);
  return t;
}

Matrix random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

struct Fixture {
  Tower tower = make_tower(3);
  Tower dgu = make_dgu_tower(6, 8);
  Matrix user, items;
  explicit Fixture(Index n = 5) {
    Rng rng(11);
    dgu.initialize(rng);
    user = random_matrix(4, 1, rng);
    items = random_matrix(6, n, rng);
  }
  Request request(std::uint64_t id = 17) const { return Request{user, items, id}; }
};

// |a - b| within 4 standard errors (plus rounding), per cell.
void require_within(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b, const Eigen::MatrixXd& se) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  for (Index k = 0; k < a.cols(); ++k)
    for (Index i = 0; i < a.rows(); ++i) {
      INFO("candidate " << i << " position " << k << ": " << a(i, k) << " vs " << b(i, k) << ", se " << se(i, k));
      CHECK(std::abs(a(i, k) - b(i, k)) <= 4.0 * se(i, k) + 1e-12);
    }
}

// The binomial standard error of a frequency of K draws with true probability p.
Eigen::MatrixXd binomial_se(const Eigen::MatrixXd& p, double draws) {
  return (p.array() * (1.0 - p.array()) / draws).sqrt().matrix();
}

void require_columns_sum_to_one(const Propensities& p) {
  for (Index k = 0; k < p.positions(); ++k) {
    INFO("position " << k);
    CHECK(p.prob.col(k).sum() == Approx(1.0).margin(1e-12));
  }
}

// An AGE-TS configuration whose top pick is genuinely random on the fixture: every gate
// open, strong dropout and a long move, so that several candidates win with fair odds.
using NoisyTs = AgeTsWithoutGate<Tower>;
NoisyTs noisy_ts(const Tower& t, std::uint64_t seed) {
  AgeSettings s;
  s.lambda = 30.0;
  s.dropout_rate = 0.3;
  s.seed = seed;
  return age_ts_without_gate(t, s);
}

}  // namespace

TEST_CASE("epsilon-greedy: Monte-Carlo agrees with the closed form within 4 standard errors", "[propensity]") {
  const Fixture f;
  const EpsilonGreedy<Tower> policy(f.tower, {.epsilon = 0.3, .seed = 5});
  const PropensityOptions exact_opts{.positions = 3};
  const Propensities exact = compute_propensities(policy, f.request(), exact_opts);
  CHECK(exact.method == PropensityMethod::exact);
  CHECK(exact.positions() == 3);
  require_columns_sum_to_one(exact);

  const double draws = 4000;
  PropensityOptions mc_opts{.positions = 3, .draws = 4000, .seed = 9, .monte_carlo_only = true};
  const Propensities mc = compute_propensities(policy, f.request(), mc_opts);
  CHECK(mc.method == PropensityMethod::monte_carlo);
  CHECK(mc.draws == 4000);
  require_columns_sum_to_one(mc);
  require_within(mc.prob, exact.prob, binomial_se(exact.prob, draws));

  // Hand check of the closed form: the greedy top pick has eps/N + 1 - eps at position 1.
  const Greedy<Tower> greedy(f.tower);
  ScoredRequest out;
  TowerWorkspace ws;
  greedy.score(f.request(), out, ws);
  const Index top = out.best();
  CHECK(exact.prob(top, 0) == Approx(0.3 / 5 + 0.7).margin(1e-12));
}

TEST_CASE("random: Monte-Carlo agrees with the closed form 1/N within 4 standard errors", "[propensity]") {
  const Fixture f;
  const RandomPolicy<Tower> policy(f.tower, 21);
  const Propensities exact = compute_propensities(policy, f.request(), {.positions = 5});
  CHECK(exact.method == PropensityMethod::exact);
  CHECK((exact.prob.array() == 0.2).all());
  CHECK((exact.std_error.array() == 0.0).all());
  const Propensities mc =
      compute_propensities(policy, f.request(), {.positions = 5, .draws = 4000, .seed = 2, .monte_carlo_only = true});
  require_columns_sum_to_one(mc);
  require_within(mc.prob, exact.prob, binomial_se(exact.prob, 4000));
  // The Monte-Carlo standard error is the binomial one of its own estimate.
  CHECK(mc.std_error(0, 0) == Approx(std::sqrt(mc.prob(0, 0) * (1 - mc.prob(0, 0)) / 4000)));
}

TEST_CASE("deterministic policies: 0/1 from the served ranking, equal to Monte-Carlo", "[propensity]") {
  const Fixture f;
  const Greedy<Tower> greedy(f.tower);
  const Propensities exact = compute_propensities(greedy, f.request(), {.positions = 3});
  const Propensities mc = compute_propensities(greedy, f.request(), {.positions = 3, .draws = 20, .monte_carlo_only = true});
  CHECK(exact.prob == mc.prob);
  CHECK((mc.std_error.array() == 0.0).all());
  ScoredRequest out;
  TowerWorkspace ws;
  greedy.score(f.request(), out, ws);
  for (Index k = 0; k < 3; ++k) CHECK(exact.prob(out.ranking[static_cast<std::size_t>(k)], k) == 1.0);

  const GradientUcb<Tower> ucb(f.tower);
  const Propensities u = compute_propensities(ucb, f.request(), {.positions = 2});
  CHECK(u.method == PropensityMethod::exact);
  require_columns_sum_to_one(u);
  CHECK(u.prob == compute_propensities(ucb, f.request(), {.positions = 2, .draws = 5, .monte_carlo_only = true}).prob);
}

TEST_CASE("Ensemble-TS: the closed form (mean of the members' rankings) agrees with Monte-Carlo", "[propensity]") {
  const Fixture f;
  std::vector<Tower> members;
  for (std::uint64_t m = 0; m < 4; ++m) members.push_back(make_tower(100 + m));
  const EnsembleTs<Tower> policy(members, 3);
  const Propensities exact = compute_propensities(policy, f.request(), {.positions = 2});
  CHECK(exact.method == PropensityMethod::exact);
  require_columns_sum_to_one(exact);
  // Every entry is a multiple of 1/M.
  for (Index i = 0; i < exact.prob.size(); ++i)
    CHECK(std::abs(exact.prob.data()[i] * 4 - std::round(exact.prob.data()[i] * 4)) < 1e-12);
  const Propensities mc =
      compute_propensities(policy, f.request(), {.positions = 2, .draws = 4000, .seed = 4, .monte_carlo_only = true});
  require_within(mc.prob, exact.prob, binomial_se(exact.prob, 4000));
}

TEST_CASE("AGE-TS on a small fixed model: Monte-Carlo frequencies match direct simulation", "[propensity]") {
  const Fixture f(4);
  const std::uint64_t request_id = 17;
  const NoisyTs policy = noisy_ts(f.tower, 1);
  const double draws = 3000;
  const Propensities mc = compute_propensities(policy, f.request(request_id), {.positions = 2, .draws = 3000, .seed = 8});
  CHECK(mc.method == PropensityMethod::monte_carlo);
  require_columns_sum_to_one(mc);
  // The fixture is genuinely random: at least two candidates win the top pick with
  // probability in (0.05, 0.95), so the comparison below is not 0/1 against 0/1.
  int uncertain = 0;
  for (Index i = 0; i < mc.candidates(); ++i) uncertain += mc.prob(i, 0) > 0.05 && mc.prob(i, 0) < 0.95;
  REQUIRE(uncertain >= 2);

  // Direct simulation of the policy's randomness, independently of the alternative ids:
  // the same request (same id) served by policies built with M different seeds, each
  // drawing its own masks from Rng(seed, id).
  const int sims = 6000;
  Eigen::MatrixXd freq = Eigen::MatrixXd::Zero(mc.candidates(), 2);
  NoisyTs::Workspace ws;
  ScoredRequest out;
  for (int s = 0; s < sims; ++s) {
    const NoisyTs seeded = noisy_ts(f.tower, 1000 + static_cast<std::uint64_t>(s));
    seeded.score(f.request(request_id), out, ws);
    freq(out.ranking[0], 0) += 1;
    freq(out.ranking[1], 1) += 1;
  }
  freq /= sims;
  // Difference of two independent frequencies: 4 standard errors of the difference.
  const Eigen::MatrixXd se =
      (binomial_se(freq, sims).array().square() + mc.std_error.array().square()).sqrt().matrix() +
      Eigen::MatrixXd::Constant(freq.rows(), 2, 1.0 / draws);  // a draw's resolution
  require_within(mc.prob, freq, se);
}

TEST_CASE("probabilities over candidates sum to 1 at every position, for every policy", "[propensity]") {
  const Fixture f(6);
  const PropensityOptions opts{.positions = 4, .draws = 64};
  std::vector<Tower> members{make_tower(7), make_tower(8), make_tower(9)};
  require_columns_sum_to_one(compute_propensities(Greedy<Tower>(f.tower), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(RandomPolicy<Tower>(f.tower, 3), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(EpsilonGreedy<Tower>(f.tower, {.epsilon = 0.5}), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(EnsembleTs<Tower>(members), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(EnsembleUcb<Tower>(members), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(GradientTs<Tower>(f.tower, {.nu = 0.5}), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(GradientUcb<Tower>(f.tower), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(age_ts(f.tower, f.dgu), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(age_ucb(f.tower, f.dgu), f.request(), opts));
  require_columns_sum_to_one(compute_propensities(noisy_ts(f.tower, 2), f.request(), opts));
}

TEST_CASE("the floor: a logged propensity is never 0 for a shown candidate", "[propensity]") {
  const Fixture f;
  // Greedy: a candidate it never shows gets the exact floor, 1e-6.
  const Propensities g = compute_propensities(Greedy<Tower>(f.tower), f.request(), {});
  Index never = 0;
  while (g.prob(never, 0) == 1.0) ++never;
  CHECK(g.prob(never, 0) == 0.0);
  CHECK(g.logged(never, 0) == kExactPropensityFloor);
  // Monte-Carlo: 1/(2K) by default, or the floor asked for.
  const NoisyTs policy = noisy_ts(f.tower, 1);
  const Propensities mc = compute_propensities(policy, f.request(), {.draws = 10, .monte_carlo_only = true});
  CHECK(mc.floor == 0.05);
  for (Index i = 0; i < mc.candidates(); ++i) CHECK(mc.logged(i, 0) >= 0.05);
  const Propensities floored = compute_propensities(policy, f.request(), {.draws = 10, .floor = 0.2});
  CHECK(floored.floor == 0.2);
  for (Index i = 0; i < floored.candidates(); ++i)
    CHECK(floored.logged(i, 0) == std::max(floored.prob(i, 0), 0.2));
}

TEST_CASE("offline propensities from the logged id and seed equal the serving path's", "[propensity]") {
  const Fixture f;
  const PropensityOptions opts{.positions = 2, .draws = 100, .seed = 5};
  // Serving: one policy and one workspace serve many requests; this one is request 42.
  const NoisyTs serving = noisy_ts(f.tower, 77);
  NoisyTs::Workspace ws;
  PropensityWorkspace pws;
  ScoredRequest served;
  Propensities online;
  for (std::uint64_t id : {40, 41, 42}) {
    serving.score(f.request(id), served, ws);
    compute_propensities(serving, f.request(id), served, opts, ws, pws, online);
  }
  // Offline, later: the policy rebuilt from the logged seed, the request from its logged
  // id (and features), fresh workspaces.
  const NoisyTs rebuilt = noisy_ts(f.tower, 77);
  const Propensities offline = compute_propensities(rebuilt, f.request(42), opts);
  CHECK(offline.prob == online.prob);
  CHECK(offline.std_error == online.std_error);
  // Another seed of the policy is another distribution's estimate.
  CHECK(compute_propensities(noisy_ts(f.tower, 78), f.request(42), opts).prob != online.prob);
}

TEST_CASE("AnyExplorer: Monte-Carlo through the box equals the typed policy's", "[propensity]") {
  const Fixture f;
  const NoisyTs policy = noisy_ts(f.tower, 4);
  const PropensityOptions opts{.positions = 3, .draws = 50, .seed = 1};
  auto boxed = box(policy);
  PropensityWorkspace pws;
  Propensities any;
  monte_carlo_propensities(*boxed, f.request(), opts, pws, any);
  const Propensities typed = compute_propensities(policy, f.request(), opts);
  CHECK(any.prob == typed.prob);
  CHECK(any.method == PropensityMethod::monte_carlo);
}

TEST_CASE("propensities: positions beyond N are clipped, bad options and inputs are named", "[propensity][validation]") {
  const Fixture f(3);
  const Greedy<Tower> greedy(f.tower);
  CHECK(compute_propensities(greedy, f.request(), {.positions = 10}).positions() == 3);
  CHECK_THROWS_AS(compute_propensities(greedy, f.request(), {.positions = 0}), ConfigError);
  CHECK_THROWS_WITH(compute_propensities(greedy, f.request(), {.draws = 0}),
                    Catch::Contains("PropensityOptions.draws: expected 1 to 100000000, got 0"));
  CHECK_THROWS_WITH(compute_propensities(greedy, f.request(), {.floor = 2.0}),
                    Catch::Contains("PropensityOptions.floor: expected a value in [0, 1]"));
  // `served` must be the policy's scores of this request.
  ScoredRequest served;
  served.resize(2);
  TowerWorkspace ws;
  PropensityWorkspace pws;
  Propensities out;
  CHECK_THROWS_AS(compute_propensities(greedy, f.request(), served, {}, ws, pws, out), DimensionError);
  const Propensities p = compute_propensities(greedy, f.request(), {});
  CHECK_THROWS_WITH(p.logged(3, 0), Catch::Contains("propensities: candidate: expected an index < 3, got 3"));
  CHECK_THROWS_AS(p.logged(0, 1), InputError);
  // A bad request is refused by the policy, as when it is scored.
  const Matrix wrong = Matrix::Zero(5, 3);
  CHECK_THROWS_AS(compute_propensities(greedy, Request{f.user, wrong, 1}, {}), DimensionError);
  CHECK(propensity_method_from_string("monte_carlo") == PropensityMethod::monte_carlo);
  CHECK_THROWS_WITH(propensity_method_from_string("mc"), Catch::Contains("got 'mc'"));
}
