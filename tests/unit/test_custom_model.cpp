// Models written outside the library (examples/custom_model.hpp) work with the scorer; the
// finite-difference adapter gives a logits-only model a correct gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../../examples/custom_model.hpp"
#include "age/explore/ablation.hpp"
#include "age/explore/scorer.hpp"
#include "age/model/finite_difference.hpp"
#include "explore_models.hpp"

using namespace age;
using example::FactorizationMachine;
using example::LegacyEngine;

namespace {
// A model with logits only and no dropout: z = sum of squares of [u; x] minus 1.
struct PlainBlackBox {
  std::size_t user_dim() const { return 2; }
  std::size_t item_dim() const { return 3; }
  void logits(ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<RowVector> out) const {
    for (Index n = 0; n < items.cols(); ++n)
      out[n] = items.col(n).squaredNorm() + user.col(user.cols() == 1 ? 0 : n).squaredNorm() - 1.0f;
  }
};

Matrix normal_matrix(Rng& rng, Index rows, Index cols) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

// Max relative difference of two gradient matrices, relative to the largest entry.
double relative_error(const Matrix& a, const Matrix& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / static_cast<double>(b.cwiseAbs().maxCoeff());
}
}  // namespace

static_assert(CtrModel<FactorizationMachine> && DropoutCtrModel<FactorizationMachine>);
static_assert(!CtrModel<LegacyEngine> && LogitModel<LegacyEngine>);
static_assert(DropoutCtrModel<FiniteDifferenceModel<LegacyEngine>>);
static_assert(CtrModel<FiniteDifferenceModel<PlainBlackBox>> && !DropoutCtrModel<FiniteDifferenceModel<PlainBlackBox>>);
// MC-Dropout needs masks: a model without them is refused at compile time, not given delta 0.
static_assert(!UncertaintyPolicy<McDropoutTs, DefaultEngine<FiniteDifferenceModel<PlainBlackBox>>>);
static_assert(UncertaintyPolicy<GaussianNoise, DefaultEngine<FiniteDifferenceModel<PlainBlackBox>>>);
static_assert(Explorer<AgeTs<FactorizationMachine>> && Explorer<AgeUcb<FiniteDifferenceModel<LegacyEngine>>>);

TEST_CASE("the factorization machine's analytic gradient matches finite differences", "[custom-model]") {
  const FactorizationMachine fm(5, 7, 4, 3);
  Rng rng(1);
  const Matrix user = normal_matrix(rng, 5, 1), items = normal_matrix(rng, 7, 6);
  FactorizationMachine::Workspace ws;
  RowVector prob(6);
  Matrix d_items, d_user;

  for (const int masking : {0, 1, 2}) {  // none, shared, per candidate
    DropoutMask mask;
    if (masking > 0) fm.sample_mask(0.3, masking == 1 ? 1 : 6, rng, mask);
    const DropoutMask* m = masking > 0 ? &mask : nullptr;
    fm.probability_gradient(user, items, m, ws, prob, &d_items, &d_user);
    // Reference: central differences in one-column calls, with the candidate's mask column.
    for (Index n = 0; n < 6; ++n) {
      DropoutMask one;
      if (m) one.layers = {mask.layers[0].col(mask.columns() == 1 ? 0 : n)};
      auto p_at = [&](const Matrix& u, const Matrix& x) {
        RowVector z(1);
        fm.logits(u, x, m ? &one : nullptr, ws, z);
        return 1.0 / (1.0 + std::exp(-static_cast<double>(z[0])));
      };
      Matrix x = items.col(n), u = user;
      for (Index j = 0; j < 7; ++j) {
        const Scalar keep = x(j, 0);
        x(j, 0) = keep + 1e-3f;
        const double plus = p_at(u, x);
        x(j, 0) = keep - 1e-3f;
        const double minus = p_at(u, x);
        x(j, 0) = keep;
        CHECK(d_items(j, n) == Approx((plus - minus) / 2e-3).margin(2e-4));
      }
      for (Index j = 0; j < 5; ++j) {
        const Scalar keep = u(j, 0);
        u(j, 0) = keep + 1e-3f;
        const double plus = p_at(u, x);
        u(j, 0) = keep - 1e-3f;
        const double minus = p_at(u, x);
        u(j, 0) = keep;
        CHECK(d_user(j, n) == Approx((plus - minus) / 2e-3).margin(2e-4));
      }
      CHECK(prob[n] == Approx(p_at(u, x)).margin(1e-6));
    }
  }
}

TEST_CASE("the finite-difference adapter reproduces an analytic gradient", "[custom-model]") {
  // Smooth models with known gradients (a ReLU tower would put kinks within reach of the
  // probes, where central differences average two slopes).
  Rng rng(2);
  const Matrix user = normal_matrix(rng, 5, 1), items = normal_matrix(rng, 7, 10);
  const FactorizationMachine fm(5, 7, 4, 9);
  const FiniteDifferenceModel<FactorizationMachine> adapted(fm, 1e-3);
  FiniteDifferenceModel<FactorizationMachine>::Workspace fd_ws;
  FactorizationMachine::Workspace ws;
  RowVector p_fd(10), p(10);
  Matrix gi_fd, gu_fd, gi, gu;

  SECTION("no mask") {
    adapted.probability_gradient(user, items, nullptr, fd_ws, p_fd, &gi_fd, &gu_fd);
    fm.probability_gradient(user, items, nullptr, ws, p, &gi, &gu);
  }
  SECTION("the same per-candidate mask is passed through") {
    DropoutMask mask;
    adapted.sample_mask(0.3, 10, rng, mask);
    adapted.probability_gradient(user, items, &mask, fd_ws, p_fd, &gi_fd, &gu_fd);
    fm.probability_gradient(user, items, &mask, ws, p, &gi, &gu);
  }
  SECTION("per-candidate user columns") {
    const Matrix users = normal_matrix(rng, 5, 10);
    adapted.probability_gradient(users, items, nullptr, fd_ws, p_fd, &gi_fd, &gu_fd);
    fm.probability_gradient(users, items, nullptr, ws, p, &gi, &gu);
  }
  CHECK(p_fd == p);
  // Float logits: rounding of about 6e-8 * |z| / 1e-3 per probe.
  CHECK(relative_error(gi_fd, gi) < 2e-3);
  CHECK(relative_error(gu_fd, gu) < 2e-3);
}

TEST_CASE("the adapter works on a curved model without masks and rejects a bad step", "[custom-model]") {
  test::QuadraticModel q;
  q.b = Vector::LinSpaced(4, -1.0f, 1.0f);
  q.a = Matrix::Identity(4, 4) * 2.0f;
  q.c = Vector::Constant(2, 0.3f);
  Rng rng(5);
  const Matrix user = normal_matrix(rng, 2, 1), items = normal_matrix(rng, 4, 6) * 0.5f;
  const FiniteDifferenceModel<test::QuadraticModel> adapted(q);
  static_assert(std::same_as<FiniteDifferenceModel<test::QuadraticModel>::Mask, NoDropout>);
  FiniteDifferenceModel<test::QuadraticModel>::Workspace fd_ws;
  test::QuadraticModel::Workspace ws;
  RowVector p_fd(6), p(6);
  Matrix gi_fd, gu_fd, gi, gu;
  adapted.probability_gradient(user, items, nullptr, fd_ws, p_fd, &gi_fd, &gu_fd);
  q.probability_gradient(user, items, nullptr, ws, p, &gi, &gu);
  CHECK(relative_error(gi_fd, gi) < 2e-3);
  CHECK(relative_error(gu_fd, gu) < 2e-3);
  CHECK_THROWS_WITH(FiniteDifferenceModel<test::QuadraticModel>(q, 0.0),
                    Catch::Contains("FiniteDifferenceModel.step") && Catch::Contains("got 0"));
}

TEST_CASE("AGE over the adapter matches AGE over the model's own gradient", "[custom-model]") {
  Rng rng(3);
  const FactorizationMachine fm(5, 7, 4, 9);
  const Matrix user = normal_matrix(rng, 5, 1), items = normal_matrix(rng, 7, 12);
  const FiniteDifferenceModel<FactorizationMachine> adapted(fm);
  const AgeSettings s{.lambda = 2.0, .dropout_rate = 0.3, .per_candidate_masks = true, .seed = 4};
  const ScoredRequest direct = age_ts_without_gate(fm, s).score(Request{user, items, 8});
  const ScoredRequest through = age_ts_without_gate(adapted, s).score(Request{user, items, 8});
  CHECK(through.base == direct.base);
  CHECK(through.delta == direct.delta);  // the same masks, passed through
  CHECK((through.explored - direct.explored).cwiseAbs().maxCoeff() < 1e-3f);
  CHECK((direct.explored - direct.base).cwiseAbs().maxCoeff() > 1e-2f);  // the moves are not trivial
}

TEST_CASE("the example's models are explored by AgeScorer", "[custom-model]") {
  const std::size_t du = 6, di = 8;
  Rng rng(2024);
  const Matrix user = normal_matrix(rng, du, 1), items = normal_matrix(rng, di, 6);
  const std::vector<std::uint64_t> shown{12, 40000, 150, 2999, 7, 3000};

  SECTION("factorization machine: AGE-TS, PGD, impression cap") {
    const FactorizationMachine fm(du, di, 4, 1);
    const AgeScorer<FactorizationMachine, McDropoutTs, Pgd, ImpressionCapGate> scorer(
        fm, ImpressionCapGate{3000}, McDropoutTs{.rate = 0.1}, Pgd{.lambda = 5.0}, 42);
    const ScoredRequest out = scorer.score(Request{user, items, 1004, shown});
    CHECK(out.gate == std::vector<std::uint8_t>{1, 0, 1, 1, 1, 0});
    for (Index i = 0; i < 6; ++i) {
      if (!out.gate[static_cast<std::size_t>(i)]) {
        CHECK(out.explored[i] == out.base[i]);
      } else {
        CHECK((out.explored[i] > out.base[i]) == (out.delta[i] > 0));  // TS: the sign sets the side
      }
    }
    const ScoredRequest again = scorer.score(Request{user, items, 1004, shown});
    CHECK(again.explored == out.explored);
    CHECK(again.ranking == out.ranking);
  }
  SECTION("black box through finite differences: AGE-UCB, FGM") {
    const LegacyEngine engine(du, di, 16, 2);
    const FiniteDifferenceModel<LegacyEngine> adapted(engine);
    const AgeScorer<FiniteDifferenceModel<LegacyEngine>, McDropoutUcb, Fgm, AlwaysOpen> scorer(
        adapted, {}, McDropoutUcb{.rate = 0.1, .sqrt = true}, Fgm{.lambda = 1.0}, 42);
    const ScoredRequest out = scorer.score(Request{user, items, 1004});
    for (Index i = 0; i < 6; ++i) {
      CHECK(out.delta[i] > 0);
      CHECK(out.explored[i] > out.base[i]);  // UCB moves up the gradient
    }
    // The adapter's gradient points where the engine's score rises: compare with a direct
    // finite-difference probe of the engine along the move.
    MoveWorkspace ws;
    Rng stream(1);
    test::plain_move(Fgm{.lambda = 1.0}, adapted, user, items, out.delta, stream, ws);
    for (Index n = 0; n < 6; ++n) {
      const Vector g = test::fd_probability_gradient(adapted, user, items, n, 1e-3);
      CHECK(test::cosine(ws.d_items.col(n), g) > 0.999);
    }
  }
  SECTION("a black box without dropout: noise of a fixed scale instead of MC-Dropout") {
    const PlainBlackBox box;
    const FiniteDifferenceModel<PlainBlackBox> adapted(box);
    const AgeScorer<FiniteDifferenceModel<PlainBlackBox>, GaussianNoise, Pgd, AlwaysOpen> scorer(
        adapted, {}, GaussianNoise{.scale = 0.1}, Pgd{.lambda = 0.5}, 1);
    const Matrix u = normal_matrix(rng, 2, 1), x = normal_matrix(rng, 3, 5);
    const ScoredRequest out = scorer.score(Request{u, x, 3});
    for (Index i = 0; i < 5; ++i) CHECK((out.explored[i] > out.base[i]) == (out.delta[i] > 0));
    // Without a fixed scale there is nothing to match: refused at scoring time.
    const AgeScorer<FiniteDifferenceModel<PlainBlackBox>, GaussianNoise, Pgd, AlwaysOpen> unscaled(adapted);
    CHECK_THROWS_WITH(unscaled.score(Request{u, x, 3}), Catch::Contains("GaussianNoise.scale"));
  }
}
