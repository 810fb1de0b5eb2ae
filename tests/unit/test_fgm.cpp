// FGM ((M6), (M12), METHOD.md "FGM and PGD"): dh = lambda' * delta_y * g / ||g||, and the
// "AGE without g~" ablation (random unit direction).
#include <catch2/catch.hpp>

#include <cmath>

#include "age/explore/perturbation.hpp"
#include "age/model/tower.hpp"
#include "explore_models.hpp"

using namespace age;

namespace {
struct Fixture {
  Tower tower{3, 5, {16, 8}};
  Matrix user = Matrix::Zero(3, 1);
  Matrix items = Matrix::Zero(5, 6);
  RowVector delta{6};
  Fixture() {
    Rng rng(11);
    tower.initialize(rng);
    for (Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<Scalar>(rng.normal());
    for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
    delta << 0.3f, -0.2f, 0.05f, -0.4f, 0.1f, 0.25f;
  }
};
}  // namespace

TEST_CASE("FGM moves along the finite-difference gradient by lambda' * |delta_y|", "[fgm]") {
  Fixture f;
  const double lambda = 0.05;
  MoveWorkspace ws;
  Rng rng(1);

  SECTION("item part") {
    const Fgm fgm{lambda};
    REQUIRE(test::plain_move(fgm, f.tower, f.user, f.items, f.delta, rng, ws).moved);
    REQUIRE(ws.d_items.rows() == 5);
    REQUIRE(ws.d_items.cols() == 6);
    for (Index n = 0; n < 6; ++n) {
      const Vector g = test::fd_probability_gradient(f.tower, f.user, f.items, n, 1e-3);
      const Vector d = ws.d_items.col(n);
      // Same line as the gradient, on the side of delta's sign (a negative delta moves against it).
      CHECK(test::cosine(d, g) * (f.delta[n] < 0 ? -1.0 : 1.0) > 0.9995);
      CHECK(d.norm() == Approx(lambda * std::abs(f.delta[n])).epsilon(1e-5));
    }
  }
  SECTION("whole input: user and item parts move together, one radius") {
    const Fgm fgm{lambda, PerturbTarget::whole_input};
    REQUIRE(test::plain_move(fgm, f.tower, f.user, f.items, f.delta, rng, ws).moved);
    REQUIRE(ws.d_user.rows() == 3);
    REQUIRE(ws.d_user.cols() == 6);
    for (Index n = 0; n < 6; ++n) {
      const Vector g = test::fd_probability_gradient(f.tower, f.user, f.items, n, 1e-3, true);
      Vector d(8);
      d << ws.d_items.col(n), ws.d_user.col(n);
      CHECK(test::cosine(d, g) * (f.delta[n] < 0 ? -1.0 : 1.0) > 0.9995);
      CHECK(d.norm() == Approx(lambda * std::abs(f.delta[n])).epsilon(1e-5));
    }
  }
}

TEST_CASE("FGM raises the score for a positive delta and lowers it for a negative one", "[fgm]") {
  Fixture f;
  const Fgm fgm{0.05};
  MoveWorkspace ws;
  Rng rng(1);
  // The plain engine, which leaves the move in ws for the check below.
  const test::Explored e = test::plain_move(fgm, f.tower, f.user, f.items, f.delta, rng, ws);
  const RowVector& base = e.base;
  const RowVector& explored = e.explored;
  for (Index n = 0; n < 6; ++n) {
    INFO("candidate " << n);
    if (f.delta[n] > 0)
      CHECK(explored[n] > base[n]);
    else
      CHECK(explored[n] < base[n]);
    // y_e is f at h + dh, recomputed on its own.
    Matrix moved = f.items.col(n) + ws.d_items.col(n);
    CHECK(explored[n] == Approx(test::probability_of(f.tower, f.user, moved, 0)).margin(1e-6));
  }
}

TEST_CASE("FGM: a zero gradient or a zero delta gives no move and no NaN", "[fgm]") {
  Fixture f;
  MoveWorkspace ws;
  Rng rng(1);

  SECTION("zero gradient: a tower whose weights are all zero") {
    const Tower flat(3, 5, {4});  // constructed, never initialised: all parameters 0
    const test::Explored e = test::plain_move(Fgm{0.05}, flat, f.user, f.items, f.delta, rng, ws);
    CHECK(ws.d_items.isZero(0));
    CHECK(ws.d_items.allFinite());
    CHECK(e.explored == e.base);
    // The request passes' one-pass form: no move either.
    const test::Explored r = test::explore(Fgm{0.05}, flat, f.user, f.items, f.delta, rng, ws);
    CHECK(r.explored == r.base);
  }
  SECTION("zero delta: explored is exactly the base, on both engines") {
    RowVector zero = RowVector::Zero(6);
    const test::Explored e = test::plain_move(Fgm{0.05}, f.tower, f.user, f.items, zero, rng, ws);
    CHECK_FALSE(e.moved);
    CHECK(e.explored == e.base);
    CHECK(ws.d_items.leftCols(6).isZero(0));
    const test::Explored r = test::explore(Fgm{0.05}, f.tower, f.user, f.items, zero, rng, ws);
    CHECK(r.explored == r.base);
  }
}

TEST_CASE("FGM and RandomDirection reject a negative lambda'", "[fgm]") {
  CHECK_THROWS_AS(Fgm{-1e-3}.validate(), ConfigError);
  CHECK_THROWS_WITH(Fgm{-1e-3}.validate(), Catch::Contains("Fgm.lambda") && Catch::Contains("-0.001"));
  CHECK_THROWS_AS(RandomDirection{std::nan("")}.validate(), ConfigError);
  CHECK_NOTHROW(Fgm{0.0}.validate());
}

TEST_CASE("without g~: a random unit direction of the same length, uncorrelated with the gradient", "[fgm]") {
  // 400 identical candidates: the same gradient, independent directions.
  Fixture f;
  const Index n = 400;
  Matrix items = f.items.col(0).replicate(1, n);
  RowVector delta = RowVector::Constant(n, 0.2f);
  delta.tail(n / 2).setConstant(-0.2f);
  const double lambda = 0.05;
  MoveWorkspace ws;
  Rng rng(5);
  REQUIRE(test::plain_move(RandomDirection{lambda}, f.tower, f.user, items, delta, rng, ws).moved);
  const Vector g = test::fd_probability_gradient(f.tower, f.user, items, 0, 1e-3);
  double sum_cos = 0.0, sum_cos2 = 0.0;
  for (Index i = 0; i < n; ++i) {
    const Vector d = ws.d_items.col(i);
    CHECK(d.norm() == Approx(lambda * 0.2).epsilon(1e-5));
    const double c = test::cosine(d, g);
    sum_cos += c;
    sum_cos2 += c * c;
  }
  // For a uniform direction in 5 dimensions E[cos] = 0 and E[cos^2] = 1/5, so the mean
  // cosine has standard deviation sqrt(0.2 / 400) = 0.022; allow 4 of them.
  CHECK(std::abs(sum_cos / n) < 0.09);
  CHECK(sum_cos2 / n == Approx(0.2).margin(0.05));

  // Same stream, same directions.
  MoveWorkspace again;
  Rng rng2(5);
  test::plain_move(RandomDirection{lambda}, f.tower, f.user, items, delta, rng2, again);
  CHECK(again.d_items == ws.d_items);
}
