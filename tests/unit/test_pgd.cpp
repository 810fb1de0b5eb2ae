// PGD on the L2 ball of radius lambda' * |delta_y| ((M13), (M14), METHOD.md "FGM and PGD").
#include <catch2/catch.hpp>

#include <cmath>

#include "age/explore/perturbation.hpp"
#include "age/model/tower.hpp"
#include "explore_models.hpp"

using namespace age;

namespace {
double move_norm(const MoveWorkspace& ws, Index n, bool whole) {
  double sq = static_cast<double>(ws.d_items.col(n).squaredNorm());
  if (whole) sq += static_cast<double>(ws.d_user.col(n).squaredNorm());
  return std::sqrt(sq);
}

Matrix random_matrix(Rng& rng, Index rows, Index cols) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

// A convex quadratic logit: the gradient turns as the point moves, so following it for
// several steps reaches a higher value on the sphere than one step does.
test::QuadraticModel curved_model() {
  test::QuadraticModel m;
  m.b = Vector(4);
  m.b << 1.0f, 0.2f, -0.3f, 0.1f;
  m.a = Matrix::Zero(4, 4);
  m.a.diagonal() << 0.5f, 6.0f, 4.0f, 8.0f;
  m.c = Vector::Zero(2);
  return m;
}
}  // namespace

TEST_CASE("PGD never leaves the ball", "[pgd]") {
  Rng rng(3);
  Tower tower(3, 6, {16, 8});
  tower.initialize(rng);
  const Matrix user = random_matrix(rng, 3, 1);
  const Matrix items = random_matrix(rng, 6, 50);
  RowVector delta(50);
  for (Index i = 0; i < 50; ++i) delta[i] = static_cast<Scalar>(rng.normal(0.0, 0.3));
  const double lambda = 0.5;
  MoveWorkspace ws;

  for (const bool whole : {false, true})
    for (const double start : {0.0, 0.9})
      for (const double scale : {0.5, 2.5, 20.0})
        for (const std::size_t steps : {std::size_t{1}, std::size_t{3}, std::size_t{7}}) {
          const Pgd pgd{lambda, whole ? PerturbTarget::whole_input : PerturbTarget::items, steps, scale, start};
          pgd.validate();
          Rng stream(9);
          test::plain_move(pgd, tower, user, items, delta, stream, ws);
          for (Index n = 0; n < 50; ++n) {
            INFO("whole " << whole << " start " << start << " scale " << scale << " steps " << steps << " n " << n);
            const double eps = lambda * std::abs(delta[n]);
            CHECK(move_norm(ws, n, whole) <= eps * (1 + 1e-5) + 1e-12);
            CHECK(ws.d_items.allFinite());
          }
        }
}

TEST_CASE("PGD reaches a higher f than FGM at the same radius on a curved model", "[pgd]") {
  const test::QuadraticModel model = curved_model();
  Rng rng(21);
  const Index n = 40;
  const Matrix user = Matrix::Zero(2, 1);
  const Matrix items = random_matrix(rng, 4, n) * Scalar(0.3);
  const RowVector delta = RowVector::Constant(n, 1.0f);
  const double lambda = 0.4;  // eps = 0.4
  MoveWorkspace ws;
  Rng stream(1);
  const RowVector fgm = test::explore(Fgm{lambda}, model, user, items, delta, stream, ws).explored;
  // T = 3, alpha = 2.5 eps / 3
  const RowVector pgd = test::explore(Pgd{lambda}, model, user, items, delta, stream, ws).explored;
  int strictly_higher = 0;
  double mean_gain = 0.0;
  for (Index i = 0; i < n; ++i) {
    CHECK(move_norm(ws, i, false) <= 0.4 * (1 + 1e-5));
    CHECK(pgd[i] >= fgm[i] - 1e-6f);
    strictly_higher += pgd[i] > fgm[i] + 1e-5f ? 1 : 0;
    mean_gain += static_cast<double>(pgd[i] - fgm[i]) / n;
  }
  CHECK(strictly_higher >= 30);
  CHECK(mean_gain > 1e-3);
}

TEST_CASE("PGD with T = 1 and alpha = radius is FGM", "[pgd]") {
  Rng rng(4);
  Tower tower(3, 6, {16});
  tower.initialize(rng);
  const Matrix user = random_matrix(rng, 3, 1);
  const Matrix items = random_matrix(rng, 6, 20);
  RowVector delta(20);
  for (Index i = 0; i < 20; ++i) delta[i] = static_cast<Scalar>(rng.normal(0.0, 0.3));
  MoveWorkspace fgm_ws, pgd_ws;
  Rng stream(1);
  for (const bool whole : {false, true}) {
    const PerturbTarget target = whole ? PerturbTarget::whole_input : PerturbTarget::items;
    test::plain_move(Fgm{0.1, target}, tower, user, items, delta, stream, fgm_ws);
    test::plain_move(Pgd{0.1, target, 1, 1.0}, tower, user, items, delta, stream, pgd_ws);
    CHECK((pgd_ws.d_items - fgm_ws.d_items).cwiseAbs().maxCoeff() < 1e-7f);
    if (whole) CHECK((pgd_ws.d_user - fgm_ws.d_user).cwiseAbs().maxCoeff() < 1e-7f);
    // A longer single step is projected back onto the same point.
    test::plain_move(Pgd{0.1, target, 1, 2.5}, tower, user, items, delta, stream, pgd_ws);
    CHECK((pgd_ws.d_items - fgm_ws.d_items).cwiseAbs().maxCoeff() < 1e-6f);
  }
}

TEST_CASE("PGD on a model linear in h stays on the FGM point, a negative delta flips the move", "[pgd]") {
  test::QuadraticModel linear = curved_model();
  linear.a.setZero();
  const Matrix user = Matrix::Zero(2, 1);
  Rng rng(8);
  const Matrix items = random_matrix(rng, 4, 3);
  RowVector delta(3);
  delta << 0.5f, -0.5f, 0.25f;
  MoveWorkspace fgm_ws, pgd_ws;
  Rng stream(1);
  test::plain_move(Fgm{0.2}, linear, user, items, delta, stream, fgm_ws);
  test::plain_move(Pgd{0.2, PerturbTarget::items, 5}, linear, user, items, delta, stream, pgd_ws);
  CHECK((pgd_ws.d_items - fgm_ws.d_items).cwiseAbs().maxCoeff() < 1e-6f);
  // Candidate 1 has the negative delta: its move points against b (the gradient's direction).
  CHECK(test::cosine(pgd_ws.d_items.col(1), linear.b) == Approx(-1.0).margin(1e-6));
  CHECK(test::cosine(pgd_ws.d_items.col(0), linear.b) == Approx(1.0).margin(1e-6));
}

TEST_CASE("PGD settings are validated", "[pgd]") {
  CHECK_THROWS_WITH((Pgd{1e-3, PerturbTarget::items, 0}.validate()), Catch::Contains("Pgd.steps: expected >= 1, got 0"));
  CHECK_THROWS_AS((Pgd{-1.0}.validate()), ConfigError);
  CHECK_THROWS_AS((Pgd{1e-3, PerturbTarget::items, 3, 0.0}.validate()), ConfigError);
  CHECK_THROWS_AS((Pgd{1e-3, PerturbTarget::items, 3, 2.5, 1.5}.validate()), ConfigError);
  CHECK_NOTHROW(Pgd{}.validate());
  CHECK(Pgd{}.steps == 3);
  CHECK(Pgd{}.step_scale == 2.5);
  CHECK(Pgd{}.lambda == 1e-3);
}
