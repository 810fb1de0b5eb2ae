// The count-aware extensions (METHOD.md, "Extensions beyond the paper"): ImpressionScaled
// and ConstantDelta uncertainties, the AdditiveBonus control, and the engine's request().
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/explore/engine.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/perturbation.hpp"
#include "age/explore/scorer.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/model/tower.hpp"

using namespace age;

namespace {

struct Fixture {
  Tower tower{3, 5, {16, 8}};
  Matrix user{3, 1}, items{5, 6};
  std::vector<std::uint64_t> shown{0, 1, 3, 10, 100, 5000};

  Fixture() {
    Rng rng(5);
    tower.initialize(rng);
    for (Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<Scalar>(rng.normal());
    for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
  }
  Request request(std::uint64_t id = 9) const { return Request{user, items, id, shown}; }
};

// ImpressionScaled's delta against the inner policy's, drawn with the same Rng, on engine E.
template <class E>
void check_scaling(const Fixture& f) {
  const Request r = f.request();
  RequestSession<Tower, E> session(f.tower, r);
  CHECK(session.engine().request().impressions.size() == f.shown.size());
  const McDropoutTs ts{0.2, true};
  typename McDropoutTs::template Workspace<E> ws;
  RowVector inner(6), scaled(6);
  Rng a(3), b(3);
  ts.compute(session.engine(), session.base(), a, ws, inner);
  const ImpressionScaled<McDropoutTs> count{ts, 4.0, 0.5};
  count.compute(session.engine(), session.base(), b, ws, scaled);
  CHECK(inner.cwiseAbs().maxCoeff() > 0);  // the masks did change the prediction
  for (Index i = 0; i < 6; ++i) {
    const double factor = std::pow(1.0 + static_cast<double>(f.shown[static_cast<std::size_t>(i)]) / 4.0, -0.5);
    CHECK(count.factor(f.shown[static_cast<std::size_t>(i)]) == Approx(factor));
    CHECK(scaled[i] == Approx(inner[i] * factor).epsilon(1e-6));
  }
}

}  // namespace

TEST_CASE("ImpressionScaled multiplies the inner delta by (1 + c / c0)^-power", "[count_aware]") {
  Fixture f;
  SECTION("request-pass engine") { check_scaling<RequestPassEngine<Tower>>(f); }
  SECTION("plain engine") { check_scaling<PlainEngine<Tower>>(f); }
}

TEST_CASE("Count-aware AGE: a long move for an unseen item, a short one for a known item", "[count_aware]") {
  Fixture f;
  // A constant delta_y of 1: the FGM move of candidate n is lambda' (1 + c_n)^(-1/2) long,
  // so |y_e - y| falls with the impressions for candidates whose gradient is alike.
  using Scorer = AgeScorer<Tower, ImpressionScaled<ConstantDelta>, Fgm, AlwaysOpen>;
  const Scorer scorer(f.tower, AlwaysOpen{}, ImpressionScaled<ConstantDelta>{ConstantDelta{1.0}, 1.0}, Fgm{.lambda = 0.5});
  const ScoredRequest out = scorer.score(f.request());
  for (Index i = 0; i < 6; ++i) {
    const double expected = 1.0 / std::sqrt(1.0 + static_cast<double>(f.shown[static_cast<std::size_t>(i)]));
    CHECK(out.delta[i] == Approx(expected).epsilon(1e-6));
    CHECK(out.explored[i] >= out.base[i]);  // a positive delta moves up the gradient
  }
  // The item shown 5000 times barely moves; the unseen one moves by ~lambda' ||grad f||.
  CHECK(std::fabs(out.explored[5] - out.base[5]) < 0.05 * std::fabs(out.explored[0] - out.base[0]));

  // Without impressions the policy names what is missing.
  const Request bare{f.user, f.items, 1};
  CHECK_THROWS_WITH(scorer.score(bare), Catch::Contains("ImpressionScaled") && Catch::Contains("impressions"));
  CHECK_THROWS_AS((ImpressionScaled<ConstantDelta>{ConstantDelta{1.0}, 0.0}.validate()), ConfigError);
  CHECK_THROWS_AS((ImpressionScaled<ConstantDelta>{ConstantDelta{1.0}, 1.0, -1.0}.validate()), ConfigError);
  CHECK_THROWS_AS(ConstantDelta{std::nan("")}.validate(), ConfigError);
}

TEST_CASE("The controls: the same radius in a random direction, and a bonus without a move", "[count_aware]") {
  Fixture f;
  using Count = ImpressionScaled<ConstantDelta>;
  const Count count{ConstantDelta{1.0}, 1.0};
  // Short moves (at most 0.02 against embeddings of norm ~2), where first order holds.
  const AgeScorer<Tower, Count, Fgm, AlwaysOpen> age(f.tower, AlwaysOpen{}, count, Fgm{.lambda = 0.02}, 4);
  const AgeScorer<Tower, Count, RandomDirection, AlwaysOpen> random(f.tower, AlwaysOpen{}, count,
                                                                     RandomDirection{.lambda = 0.02}, 4);
  const AgeScorer<Tower, Count, AdditiveBonus, AlwaysOpen> bonus(f.tower, AlwaysOpen{}, count, AdditiveBonus{0.1}, 4);
  const ScoredRequest a = age.score(f.request()), r = random.score(f.request()), b = bonus.score(f.request());
  for (Index i = 0; i < 6; ++i) {
    CHECK(r.delta[i] == a.delta[i]);  // the same radius lambda' * delta
    CHECK(b.explored[i] == Approx(b.base[i] + 0.1f * b.delta[i]).epsilon(1e-6));
    // FGM along the gradient gains at least as much as any direction of the same length.
    CHECK(a.explored[i] - a.base[i] >= r.explored[i] - r.base[i] - 1e-6f);
    CHECK(a.explored[i] > a.base[i]);
  }
  CHECK_THROWS_AS(AdditiveBonus{-1.0}.validate(), ConfigError);
}
