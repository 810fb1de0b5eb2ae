#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <thread>
#include <type_traits>
#include <vector>

#include "age/explore/baselines.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/stacked_member.hpp"

using namespace age;

static_assert(Explorer<Greedy<Tower>>);
static_assert(Explorer<RandomPolicy<Tower>>);
static_assert(Explorer<EpsilonGreedy<Tower>>);
static_assert(Explorer<EnsembleTs<Tower>>);
static_assert(Explorer<EnsembleUcb<Tower>>);
static_assert(LearningExplorer<GradientTs<Tower>>);
static_assert(LearningExplorer<GradientUcb<Tower>>);
static_assert(!LearningExplorer<Greedy<Tower>>);
static_assert(LearningExplorer<GradientTs<EmbeddingCtrModel>>);
static_assert(Explorer<EnsembleUcb<EmbeddingCtrModel>>);

namespace {

// A model written outside the library, without dropout or a tower: z = w.x + c.u.
struct LinearModel {
  using Mask = NoDropout;
  struct Workspace {
    Scalar user_part = 0;
  };
  Vector w, c;

  std::size_t user_dim() const { return static_cast<std::size_t>(c.size()); }
  std::size_t item_dim() const { return static_cast<std::size_t>(w.size()); }
  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask*, Workspace& ws, Eigen::Ref<RowVector> out) const {
    ws.user_part = c.dot(user.col(0));
    out.noalias() = w.transpose() * items;
    out.array() += ws.user_part;
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    predict_probabilities(*this, user, items, mask, ws, prob);
    const RowVector s = prob.array() * (1 - prob.array());
    if (d_items) *d_items = w * s;
    if (d_user) *d_user = c * s;
  }
};
static_assert(CtrModel<LinearModel>);
static_assert(Explorer<Greedy<LinearModel>> && Explorer<EnsembleUcb<LinearModel>>);
static_assert(!TowerCtrModel<LinearModel>);  // the gradient policies need a Tower's weights

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

RowVector probabilities(const Tower& t, const Matrix& user, const Matrix& items) {
  TowerWorkspace ws;
  RowVector p(items.cols());
  predict_probabilities(t, user, items, nullptr, ws, p);
  return p;
}

// Pearson's chi-square statistic of observed counts against equal expected counts.
double chi_square_uniform(const std::vector<long>& counts) {
  double total = 0;
  for (long c : counts) total += static_cast<double>(c);
  const double expected = total / static_cast<double>(counts.size());
  double chi2 = 0;
  for (long c : counts) chi2 += (static_cast<double>(c) - expected) * (static_cast<double>(c) - expected) / expected;
  return chi2;
}

bool ranked_descending(const ScoredRequest& s, const RowVector& key) {
  for (std::size_t k = 1; k < s.ranking.size(); ++k)
    if (key[s.ranking[k - 1]] < key[s.ranking[k]]) return false;
  return true;
}

// Brute force: candidate n's gradient of f w.r.t. every tower weight and bias by
// Tower::backward on that one candidate alone, then sum_k g_k^2 / U_k in double.
double brute_quadratic_form(const Tower& t, const Matrix& user, const Matrix& items, Index n,
                            const TowerGradients& u, GradientOutput output) {
  const Matrix uc = user.col(user.cols() == 1 ? 0 : n);
  const Matrix ic = items.col(n);
  TowerWorkspace ws;
  t.forward(uc, ic, nullptr, ws);
  const Scalar p = sigmoid(ws.logits()[0]);
  RowVector d_logit(1);
  d_logit[0] = output == GradientOutput::probability ? p * (1 - p) : Scalar(1);
  TowerGradients g;
  t.backward(d_logit, uc, ic, ws, &g, nullptr, nullptr);
  double sum = 0;
  for (std::size_t l = 0; l < t.num_layers(); ++l) {
    sum += (g.weights[l].cast<double>().array().square() / u.weights[l].cast<double>().array()).sum();
    sum += (g.biases[l].cast<double>().array().square() / u.biases[l].cast<double>().array()).sum();
  }
  return sum;
}

}  // namespace

TEST_CASE("greedy ranks by the base pCTR and does not explore", "[baselines]") {
  const Tower t = make_tower(1);
  Rng rng(11);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 20, rng);
  const RowVector p = probabilities(t, user, items);

  Greedy greedy(t);
  Greedy<Tower>::Workspace ws;
  ScoredRequest out;
  greedy.score({user, items, 5}, out, ws);
  REQUIRE(out.size() == 20);
  CHECK(out.base == p);
  CHECK(out.explored == p);
  CHECK(out.delta.isZero(0));
  CHECK(std::all_of(out.gate.begin(), out.gate.end(), [](std::uint8_t g) { return g == 0; }));
  CHECK(ranked_descending(out, p));
  Index argmax = 0;
  p.maxCoeff(&argmax);
  CHECK(out.best() == argmax);
}

TEST_CASE("baselines work with a model written outside the library", "[baselines]") {
  Rng rng(22);
  std::vector<LinearModel> members;
  for (int m = 0; m < 3; ++m) members.push_back({random_matrix(5, 1, rng), random_matrix(2, 1, rng)});
  const Matrix user = random_matrix(2, 1, rng), items = random_matrix(5, 6, rng);
  std::vector<RowVector> p;
  for (const LinearModel& m : members) {
    RowVector z = m.w.transpose() * items;
    z.array() += m.c.dot(user.col(0));
    p.push_back(z.unaryExpr([](Scalar v) { return sigmoid(v); }));
  }

  Greedy greedy(members[0]);
  Greedy<LinearModel>::Workspace gws;
  ScoredRequest out;
  greedy.score({user, items, 0}, out, gws);
  CHECK(out.base.isApprox(p[0], 1e-6f));
  CHECK(ranked_descending(out, p[0]));

  EnsembleUcb ucb(members, {.scale = 2.0});
  EnsembleUcb<LinearModel>::Workspace uws;
  ucb.score({user, items, 0}, out, uws);
  for (Index i = 0; i < 6; ++i) {
    const double mu = (p[0][i] + p[1][i] + p[2][i]) / 3.0;
    double var = 0;
    for (const RowVector& pm : p) var += (pm[i] - mu) * (pm[i] - mu) / 3.0;
    CHECK(out.explored[i] == Approx(mu + 2.0 * var).margin(1e-6));
  }
}

TEST_CASE("random policy ranks by a uniform random permutation", "[baselines]") {
  const Tower t = make_tower(2);
  Rng rng(12);
  const Matrix user = random_matrix(4, 1, rng);

  SECTION("all 24 orders of 4 candidates are equally likely") {
    // 24000 requests, 1000 expected per order; chi-square with 23 degrees of freedom,
    // critical value 49.73 at significance 0.001.
    const Matrix items = random_matrix(6, 4, rng);
    RandomPolicy policy(t, 99);
    RandomPolicy<Tower>::Workspace ws;
    ScoredRequest out;
    std::map<int, long> by_order;
    for (std::uint64_t id = 0; id < 24000; ++id) {
      policy.score({user, items, id}, out, ws);
      int code = 0;
      for (Index c : out.ranking) code = code * 4 + static_cast<int>(c);
      ++by_order[code];
      // The reported scores reproduce the ranking: explored = (N - position) / N.
      for (std::size_t k = 0; k < 4; ++k) REQUIRE(out.explored[out.ranking[k]] == Scalar(4 - k) / 4);
    }
    REQUIRE(by_order.size() == 24);
    std::vector<long> counts;
    for (const auto& [code, c] : by_order) counts.push_back(c);
    CHECK(chi_square_uniform(counts) < 49.73);
    CHECK(std::all_of(out.gate.begin(), out.gate.end(), [](std::uint8_t g) { return g == 1; }));
    CHECK(out.base == probabilities(t, user, items));
  }

  SECTION("the top pick is uniform over 10 candidates") {
    // 20000 requests, 2000 expected per candidate; chi-square with 9 degrees of freedom,
    // critical value 27.88 at significance 0.001.
    const Matrix items = random_matrix(6, 10, rng);
    RandomPolicy policy(t, 5);
    RandomPolicy<Tower>::Workspace ws;
    ScoredRequest out;
    std::vector<long> top(10, 0);
    for (std::uint64_t id = 0; id < 20000; ++id) {
      policy.score({user, items, id}, out, ws);
      ++top[static_cast<std::size_t>(out.best())];
    }
    CHECK(chi_square_uniform(top) < 27.88);
  }
}

TEST_CASE("epsilon-greedy explores at rate epsilon with a uniform pick", "[baselines]") {
  const Tower t = make_tower(3);
  Rng rng(13);
  const Index n = 8;
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, n, rng);
  const RowVector p = probabilities(t, user, items);
  Index greedy_pick = 0;
  p.maxCoeff(&greedy_pick);

  const double epsilon = 0.2;
  const long requests = 20000;
  EpsilonGreedy policy(t, {.epsilon = epsilon, .seed = 7});
  EpsilonGreedy<Tower>::Workspace ws;
  ScoredRequest out;
  long explored = 0;
  std::vector<long> picks(static_cast<std::size_t>(n), 0);
  for (long r = 0; r < requests; ++r) {
    const auto id = static_cast<std::uint64_t>(r);
    policy.score({user, items, id}, out, ws);
    REQUIRE(out.base == p);
    const long open = std::count(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    REQUIRE(open <= 1);
    // Whatever the top pick, the rest of the ranking stays in greedy order.
    RowVector rest = p;
    rest[out.best()] = std::numeric_limits<Scalar>::infinity();
    REQUIRE(ranked_descending(out, rest));
    if (open == 1) {
      ++explored;
      const Index pick = out.best();
      REQUIRE(out.gate[static_cast<std::size_t>(pick)] == 1);
      REQUIRE(out.delta[pick] == EpsilonGreedy<Tower>::kBonus);
      REQUIRE(out.explored[pick] == p[pick] + EpsilonGreedy<Tower>::kBonus);
      REQUIRE(policy.explore_pick(id, n) == pick);
      ++picks[static_cast<std::size_t>(pick)];
    } else {
      REQUIRE(out.best() == greedy_pick);
      REQUIRE(out.explored == p);
      REQUIRE(policy.explore_pick(id, n) == -1);
    }
  }
  // Exploring requests ~ Binomial(20000, 0.2): mean 4000, sd 56.6; tolerance 4 sd = 227.
  const double sd = std::sqrt(requests * epsilon * (1 - epsilon));
  CHECK(std::abs(static_cast<double>(explored) - requests * epsilon) < 4 * sd);
  // The explored pick is uniform over the 8 candidates: chi-square with 7 degrees of
  // freedom, critical value 24.32 at significance 0.001.
  CHECK(chi_square_uniform(picks) < 24.32);

  SECTION("epsilon 0 never explores, epsilon 1 always does") {
    EpsilonGreedy never(t, {.epsilon = 0.0});
    EpsilonGreedy always(t, {.epsilon = 1.0});
    for (std::uint64_t id = 0; id < 2000; ++id) {
      REQUIRE(never.explore_pick(id, n) == -1);
      REQUIRE(always.explore_pick(id, n) >= 0);
    }
  }
}

TEST_CASE("ensemble-UCB spread equals a direct computation over the members", "[baselines]") {
  std::vector<Tower> members;
  for (std::uint64_t m = 0; m < kDefaultEnsembleSize; ++m) members.push_back(make_tower(100 + m));
  Rng rng(14);
  const Index n = 12;
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, n, rng);

  // Direct, in double: mean and population variance of the five probabilities.
  std::vector<double> mean(static_cast<std::size_t>(n), 0.0), var(static_cast<std::size_t>(n), 0.0);
  std::vector<RowVector> p;
  for (const Tower& t : members) p.push_back(probabilities(t, user, items));
  for (Index i = 0; i < n; ++i) {
    auto& mu = mean[static_cast<std::size_t>(i)];
    for (const RowVector& pm : p) mu += pm[i] / 5.0;
    for (const RowVector& pm : p) var[static_cast<std::size_t>(i)] += (pm[i] - mu) * (pm[i] - mu) / 5.0;
  }

  const double c = 3.0;
  ScoredRequest out;
  SECTION("variance (the paper's form)") {
    EnsembleUcb ucb(members, {.scale = c});
    EnsembleUcb<Tower>::Workspace ws;
    ucb.score({user, items, 0}, out, ws);
    for (Index i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      CHECK(out.base[i] == Approx(mean[k]).margin(1e-6));
      CHECK(out.delta[i] == Approx(var[k]).epsilon(1e-4).margin(1e-8));
      CHECK(out.explored[i] == Approx(mean[k] + c * var[k]).margin(1e-6));
      CHECK(out.gate[k] == 1);
    }
    CHECK(ranked_descending(out, out.explored));
  }
  SECTION("standard deviation") {
    EnsembleUcb ucb(members, {.scale = c, .spread = EnsembleSpread::std_dev});
    EnsembleUcb<Tower>::Workspace ws;
    ucb.score({user, items, 0}, out, ws);
    for (Index i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      CHECK(out.delta[i] == Approx(std::sqrt(var[k])).epsilon(1e-4));
      CHECK(out.explored[i] == Approx(mean[k] + c * std::sqrt(var[k])).margin(1e-5));
    }
  }
}

TEST_CASE("ensemble-TS serves each member about 1/M of the time", "[baselines]") {
  std::vector<Tower> members;
  for (std::uint64_t m = 0; m < 5; ++m) members.push_back(make_tower(200 + m));
  Rng rng(15);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 6, rng);
  std::vector<RowVector> p;
  for (const Tower& t : members) p.push_back(probabilities(t, user, items));
  RowVector mean = RowVector::Zero(6);
  for (const RowVector& pm : p) mean += pm / 5;

  EnsembleTs ts(members, 31);
  EnsembleTs<Tower>::Workspace ws;
  ScoredRequest out;
  // 10000 requests, 2000 expected per member; chi-square with 4 degrees of freedom,
  // critical value 18.47 at significance 0.001.
  std::vector<long> served(5, 0);
  for (std::uint64_t id = 0; id < 10000; ++id) {
    ts.score({user, items, id}, out, ws);
    const std::size_t m = ts.member_for(id);
    REQUIRE(out.explored == p[m]);  // the served member's own prediction, bit for bit
    ++served[m];
    if (id < 50) {
      CHECK(out.base.isApprox(mean, 1e-5f));
      CHECK((out.delta - (out.explored - out.base)).isZero(0));
      CHECK(ranked_descending(out, p[m]));
    }
  }
  CHECK(chi_square_uniform(served) < 18.47);
}

TEST_CASE("gradient uncertainty: closed form equals per-candidate backward and finite differences",
          "[baselines]") {
  const Tower t = make_tower(4, 3, 5, {6, 4});
  Rng rng(16);
  const Index n = 7;
  const Matrix user = random_matrix(3, 1, rng), users = random_matrix(3, n, rng);
  const Matrix items = random_matrix(5, n, rng);
  const double lambda = 0.5, nu = 2.0;

  for (GradientOutput output : {GradientOutput::probability, GradientOutput::logit}) {
    GradientUcb ucb(t, {.lambda = lambda, .nu = nu, .output = output});
    // Make U non-uniform: observe a few unrelated candidates first.
    for (int k = 0; k < 6; ++k) {
      const Matrix u = random_matrix(3, 1, rng), it = random_matrix(5, 3, rng);
      ucb.observe({u, it, 0}, k % 3, k % 2 == 0);
    }
    REQUIRE(ucb.observations() == 6);
    // With one user column per candidate, observe() takes the shown candidate's own user.
    {
      GradientUcb per_column(t, {.lambda = lambda, .nu = nu, .output = output});
      GradientUcb single(t, {.lambda = lambda, .nu = nu, .output = output});
      per_column.observe({users, items, 0}, 4, true);
      single.observe({users.col(4), items.col(4), 0}, 0, true);
      for (std::size_t l = 0; l < t.num_layers(); ++l) {
        CHECK(per_column.precision().weights[l] == single.precision().weights[l]);
        CHECK(per_column.precision().biases[l] == single.precision().biases[l]);
        CHECK((per_column.precision().weights[l].array() >= Scalar(lambda)).all());
      }
    }
    GradientWorkspace ws;
    RowVector sigma(n);
    for (const Matrix* request_user : {&user, &users}) {
      ucb.uncertainty({*request_user, items, 0}, ws, sigma);
      for (Index i = 0; i < n; ++i) {
        const double quad = brute_quadratic_form(t, *request_user, items, i, ucb.precision(), output);
        CHECK(sigma[i] == Approx(nu * std::sqrt(lambda * quad)).epsilon(1e-4));
      }
    }
  }

  SECTION("finite differences of the logit w.r.t. every weight") {
    // The logit is piecewise linear in any single weight, so central differences are exact
    // away from ReLU kinks; h = 1e-3 keeps float rounding below 1e-4 of the logit.
    GradientUcb ucb(t, {.lambda = lambda, .nu = nu, .output = GradientOutput::logit});
    for (int k = 0; k < 4; ++k) ucb.observe({user, items, 0}, k, true);
    GradientWorkspace ws;
    RowVector sigma(n);
    ucb.uncertainty({user, items, 0}, ws, sigma);
    const Index cand = 2;
    const Matrix ic = items.col(cand);
    Tower probe = t;
    TowerWorkspace pws;
    auto logit = [&]() {
      probe.forward(user, ic, nullptr, pws);
      return static_cast<double>(pws.logits()[0]);
    };
    const double h = 1e-3;
    double quad = 0;
    for (std::size_t l = 0; l < t.num_layers(); ++l) {
      // Parameter i of layer l's weights (or bias), changed through an Edit.
      auto fd = [&](bool bias, Index i, Scalar u) {
        auto set = [&](Scalar v) {
          Tower::Edit e = probe.edit();
          (bias ? e.bias(l).data() : e.weight(l).data())[i] = v;
        };
        const Scalar keep = (bias ? probe.bias(l).data() : probe.weight(l).data())[i];
        set(keep + static_cast<Scalar>(h));
        const double up = logit();
        set(keep - static_cast<Scalar>(h));
        const double down = logit();
        set(keep);
        const double g = (up - down) / (2 * h);
        quad += g * g / u;
      };
      for (Index i = 0; i < probe.weight(l).size(); ++i) fd(false, i, ucb.precision().weights[l].data()[i]);
      for (Index i = 0; i < probe.bias(l).size(); ++i) fd(true, i, ucb.precision().biases[l].data()[i]);
    }
    CHECK(sigma[cand] == Approx(nu * std::sqrt(lambda * quad)).epsilon(2e-3));
  }
}

TEST_CASE("gradient uncertainty shrinks for an arm that is shown often", "[baselines]") {
  SECTION("random tower: sigma follows U = lambda + K g_A^2 exactly") {
    const Tower t = make_tower(5, 4, 6, {8, 4});
    Rng rng(17);
    const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 5, rng);
    const double lambda = 0.01, nu = 1.0;
    GradientUcb ucb(t, {.lambda = lambda, .nu = nu});
    GradientWorkspace ws;
    RowVector sigma(5);
    ucb.uncertainty({user, items, 0}, ws, sigma);
    const RowVector initial = sigma;

    // Per-weight gradients of shown candidate A = 0 and unseen candidate B = 3.
    auto gradient = [&](Index c) {
      TowerWorkspace tws;
      const Matrix ic = items.col(c);
      t.forward(user, ic, nullptr, tws);
      const Scalar p = sigmoid(tws.logits()[0]);
      RowVector d(1);
      d[0] = p * (1 - p);
      TowerGradients g;
      t.backward(d, user, ic, tws, &g, nullptr, nullptr);
      return g;
    };
    const TowerGradients ga = gradient(0), gb = gradient(3);
    auto expected = [&](const TowerGradients& g, int shown_times) {
      double s = 0;
      for (std::size_t l = 0; l < t.num_layers(); ++l) {
        const auto a2w = ga.weights[l].cast<double>().array().square();
        const auto a2b = ga.biases[l].cast<double>().array().square();
        s += (g.weights[l].cast<double>().array().square() / (lambda + shown_times * a2w)).sum();
        s += (g.biases[l].cast<double>().array().square() / (lambda + shown_times * a2b)).sum();
      }
      return nu * std::sqrt(lambda * s);
    };

    const int shows = 50;
    Scalar previous = initial[0];
    for (int k = 1; k <= shows; ++k) {
      ucb.observe({user, items, static_cast<std::uint64_t>(k)}, 0, false);
      ucb.uncertainty({user, items, 0}, ws, sigma);
      REQUIRE(sigma[0] < previous);  // strictly decreasing with every showing
      previous = sigma[0];
      if (k == 1 || k == 10 || k == shows) {
        CHECK(sigma[0] == Approx(expected(ga, k)).epsilon(1e-3));
        CHECK(sigma[3] == Approx(expected(gb, k)).epsilon(1e-3));
      }
    }
    // Stated factor: after 50 showings with lambda = 0.01 the shown arm's sigma is below a
    // third of its initial value, and it fell further than the unseen arm's.
    CHECK(sigma[0] < initial[0] / 3);
    CHECK(sigma[0] / initial[0] < sigma[3] / initial[3]);
  }

  SECTION("disjoint hidden units: an unseen arm keeps its uncertainty") {
    // Item A = (1,1,0,0) activates hidden units 0,1 only and B = (0,0,1,1) units 2,3 only,
    // so their weight gradients share nothing but the output bias.
    Tower t(1, 4, {4});
    {
      Tower::Edit e = t.edit();
      e.weight(0) << 0, 1.0, 0.5, 0, 0,  //
          0, 0.5, 1.0, 0, 0,             //
          0, 0, 0, 1.0, 0.5,             //
          0, 0, 0, 0.5, 1.0;
      e.bias(0).setConstant(-0.1f);
      e.weight(1) << 0.8f, -0.6f, 0.7f, -0.5f;
      e.bias(1).setConstant(-1.0f);
    }
    Matrix user(1, 1);
    user << 0.5f;
    Matrix items(4, 2);
    items << 1, 0, 1, 0, 0, 1, 0, 1;
    const double lambda = 0.01;
    GradientTs ts(t, {.lambda = lambda, .nu = 1.0});
    GradientWorkspace ws;
    RowVector before(2), after(2);
    ts.uncertainty({user, items, 0}, ws, before);
    for (int k = 0; k < 50; ++k) ts.observe({user, items, 0}, 0, k % 3 == 0);
    ts.uncertainty({user, items, 0}, ws, after);
    // A: every term g^2/U shrinks to at most 1/(K g^2 / lambda + 1) of itself.
    CHECK(after[0] < 0.2 * before[0]);
    // B: at most its output-bias term g_b^2 = (p_B (1 - p_B))^2 can go.
    const RowVector p = probabilities(t, user, items);
    const double gb = p[1] * (1 - p[1]);
    CHECK(after[1] * after[1] >= before[1] * before[1] - gb * gb - 1e-7);
    CHECK(after[1] > 0.9 * before[1]);
  }
}

TEST_CASE("gradient policies score as defined and accept the embedding model", "[baselines]") {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 50, 4).add_categorical("item_id", Side::Item, 50, 6);
  EmbeddingCtrModel model(layout, {8, 4});
  Rng init(21);
  model.initialize(init, 0.5);
  Rng rng(18);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 9, rng);
  const RowVector p = probabilities(model.tower(), user, items);

  GradientUcb on_model(model, {.nu = 0.7});
  GradientUcb on_tower(model.tower(), {.nu = 0.7});
  GradientWorkspace ws;
  ScoredRequest a, b;
  on_model.score({user, items, 1}, a, ws);
  on_tower.score({user, items, 1}, b, ws);
  CHECK(a.explored == b.explored);
  CHECK(a.base.isApprox(p, 1e-6f));
  CHECK(a.explored.isApprox(a.base + a.delta, 1e-6f));
  CHECK((a.delta.array() > 0).all());

  SECTION("Gradient-TS adds sigma times a standard normal draw") {
    // Over 4000 request ids, (explored - base) / sigma for one candidate has mean 0 and
    // variance 1: tolerances 4 standard errors (mean: 4/sqrt(4000) = 0.063; variance:
    // 4 sqrt(2/4000) = 0.089).
    GradientTs ts(model, {.nu = 0.7, .seed = 3});
    RowVector sigma(9);
    ts.uncertainty({user, items, 0}, ws, sigma);
    CHECK(sigma.isApprox(a.delta, 1e-6f));
    ScoredRequest out;
    double sum = 0, sum2 = 0;
    const int draws = 4000;
    for (int id = 0; id < draws; ++id) {
      ts.score({user, items, static_cast<std::uint64_t>(id)}, out, ws);
      const double xi = (out.explored[4] - out.base[4]) / sigma[4];
      sum += xi;
      sum2 += xi * xi;
    }
    const double mean = sum / draws, var = sum2 / draws - mean * mean;
    CHECK(std::abs(mean) < 0.063);
    CHECK(std::abs(var - 1) < 0.089);
  }

  SECTION("logit output moves the logit") {
    GradientUcb logit(model, {.nu = 0.7, .output = GradientOutput::logit});
    ScoredRequest out;
    logit.score({user, items, 1}, out, ws);
    for (Index i = 0; i < 9; ++i) {
      const Scalar z = std::log(p[i] / (1 - p[i]));
      CHECK(out.explored[i] == Approx(sigmoid(z + out.delta[i])).margin(1e-5));
    }
  }
}

TEST_CASE("baselines score a request identically every time and on any thread", "[baselines]") {
  const Tower t = make_tower(6);
  std::vector<Tower> members;
  for (std::uint64_t m = 0; m < 3; ++m) members.push_back(make_tower(300 + m));
  Rng rng(19);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 15, rng);
  const Matrix other_items = random_matrix(6, 4, rng);

  RandomPolicy random(t, 1);
  EpsilonGreedy eps(t, {.epsilon = 0.5, .seed = 2});
  EnsembleTs ts(members, 3);
  GradientTs grad(t, {.seed = 4});
  grad.observe({user, items, 0}, 2, true);

  auto run = [&](const auto& policy, std::uint64_t id) {
    typename std::decay_t<decltype(policy)>::Workspace ws;
    ScoredRequest warm, out;
    policy.score({user, other_items, id + 1000}, warm, ws);  // a different request first
    policy.score({user, items, id}, out, ws);
    return out;
  };
  auto same = [](const ScoredRequest& a, const ScoredRequest& b) {
    return a.base == b.base && a.delta == b.delta && a.gate == b.gate && a.explored == b.explored &&
           a.ranking == b.ranking;
  };
  auto check = [&](const auto& policy) {
    const ScoredRequest first = run(policy, 42);
    ScoredRequest second, threaded;
    {
      typename std::decay_t<decltype(policy)>::Workspace ws;
      policy.score({user, items, 42}, second, ws);
    }
    std::thread worker([&] { threaded = run(policy, 42); });
    worker.join();
    CHECK(same(first, second));
    CHECK(same(first, threaded));
    // Another request id draws differently (some id among the next few differs).
    bool differs = false;
    for (std::uint64_t id = 43; id < 53 && !differs; ++id) differs = !same(first, run(policy, id));
    CHECK(differs);
  };
  check(random);
  check(eps);
  check(ts);
  check(grad);
}

TEST_CASE("baselines reject invalid configurations with ConfigError", "[baselines]") {
  const Tower t = make_tower(7);
  CHECK_THROWS_WITH(EpsilonGreedy(t, {.epsilon = 1.5}),
                    Catch::Contains("EpsilonGreedy.epsilon: expected a value in [0, 1], got 1.5"));
  CHECK_THROWS_AS(EpsilonGreedy(t, {.epsilon = -0.1}), ConfigError);
  CHECK_THROWS_AS(EpsilonGreedy(t, {.epsilon = std::numeric_limits<double>::quiet_NaN()}), ConfigError);

  const std::vector<Tower> none;
  CHECK_THROWS_WITH(EnsembleTs<Tower>(std::span<const Tower>(none)),
                    Catch::Contains("EnsembleTs.members: expected >= 1 models, got 0"));
  CHECK_THROWS_AS(EnsembleUcb<Tower>(std::span<const Tower>(none)), ConfigError);
  const std::vector<Tower> one{make_tower(8)};
  CHECK_THROWS_AS(EnsembleUcb<Tower>(std::span<const Tower>(one)), ConfigError);
  const std::vector<Tower> two{make_tower(8), make_tower(9)};
  CHECK_THROWS_WITH(EnsembleUcb(two, {.scale = -1.0}),
                    Catch::Contains("EnsembleUcb.scale: expected a value in [0, 1e+12], got -1"));
  CHECK_THROWS_AS(EnsembleTs<Tower>(std::vector<const Tower*>{&t, nullptr}), ConfigError);
  const Tower wider = make_tower(10, 4, 7);
  CHECK_THROWS_WITH(EnsembleTs<Tower>(std::vector<const Tower*>{&t, &wider}),
                    Catch::Contains("EnsembleTs.members[1] item_dim: expected 6, got 7"));

  CHECK_THROWS_WITH(GradientTs(t, {.lambda = 0.0}),
                    Catch::Contains("GradientTs.lambda: expected a value in (0, 1e+12], got 0"));
  CHECK_THROWS_WITH(GradientUcb(t, {.nu = -2.0}),
                    Catch::Contains("GradientUcb.nu: expected a value in (0, 1e+12], got -2"));

  GradientTs ts(t);
  Rng rng(20);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 3, rng);
  CHECK_THROWS_WITH(ts.observe({user, items, 0}, 3, true),
                    Catch::Contains("GradientTs.observe: shown candidate index: expected in [0, 3), got 3"));
  CHECK_THROWS_AS(ts.observe({user, items, 0}, -1, true), InputError);
}

TEST_CASE("an ensemble of members with their own embeddings, stacked: each member reads its rows", "[baselines]") {
  // Two towers of different input sizes would not stack; three of one shape do.
  std::vector<Tower> towers;
  for (std::uint64_t m = 0; m < 3; ++m) towers.push_back(make_tower(400 + m));
  const std::size_t du = towers[0].user_dim(), di = towers[0].item_dim();
  std::vector<StackedMember<Tower>> members;
  for (std::size_t m = 0; m < 3; ++m) members.push_back(StackedMember<Tower>::of(towers[m], m, 3));
  Rng rng(8);
  const Index n = 4;
  const Matrix user = random_matrix(static_cast<Index>(3 * du), 1, rng);
  const Matrix items = random_matrix(static_cast<Index>(3 * di), n, rng);
  for (std::size_t m = 0; m < 3; ++m) {
    INFO("member " << m);
    const Matrix own_user = user.middleRows(static_cast<Index>(m * du), static_cast<Index>(du));
    const Matrix own_items = items.middleRows(static_cast<Index>(m * di), static_cast<Index>(di));
    StackedMember<Tower>::Workspace ws;
    TowerWorkspace tws;
    RowVector z(n), expected(n), p(n), q(n);
    members[m].logits(user, items, nullptr, ws, z);
    towers[m].logits(own_user, own_items, nullptr, tws, expected);
    CHECK(z == expected);
    Matrix g, g_user, own_g, own_g_user;
    members[m].probability_gradient(user, items, nullptr, ws, p, &g, &g_user);
    towers[m].probability_gradient(own_user, own_items, nullptr, tws, q, &own_g, &own_g_user);
    REQUIRE(g.rows() == static_cast<Index>(3 * di));
    CHECK(g.middleRows(static_cast<Index>(m * di), static_cast<Index>(di)) == own_g);
    CHECK(g_user.middleRows(static_cast<Index>(m * du), static_cast<Index>(du)) == own_g_user);
    // The other members' rows do not move this member's score.
    CHECK(g.cwiseAbs().sum() == Approx(own_g.cwiseAbs().sum()));
  }
  // The ensemble policies take them as members.
  const EnsembleUcb<StackedMember<Tower>> ucb(members, {.scale = 1.0});
  EnsembleUcb<StackedMember<Tower>>::Workspace ucb_ws;
  ScoredRequest out;
  ucb.score(Request{user, items, 3}, out, ucb_ws);
  CHECK(out.size() == n);
  CHECK_THROWS_AS(StackedMember<Tower>(towers[0], 1, 0, du, 3 * di), DimensionError);  // user rows [1, 5) of 4
}
