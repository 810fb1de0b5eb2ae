// MC-Dropout uncertainty ((M9)-(M11), METHOD.md "MC-Dropout uncertainty") on towers
// whose dropout distribution is known in closed form, and the "without delta_y" ablation.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "age/explore/uncertainty.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower.hpp"
#include "explore_models.hpp"

using namespace age;

namespace {
double sig(double z) { return 1.0 / (1.0 + std::exp(-z)); }

double binomial_pmf(int n, int k, double q) {
  return std::exp(std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0) + k * std::log(q) +
                  (n - k) * std::log(1.0 - q));
}

// Tower(1, 1, {H}) whose H hidden units all equal the item value x (= 1 in the tests),
// each with output weight c, output bias b: logit = b + c * sum_k a_k. Under a dropout
// mask with rate p, K ~ Binomial(H, 1 - p) units survive, scaled by 1 / (1 - p):
//   z_M = b + c * x * K / (1 - p),   z = b + c * x * H.
Tower identical_units(std::size_t h, Scalar c, Scalar b) {
  Tower t(1, 1, {h});
  {
    Tower::Edit e = t.edit();
    e.weight(0).col(0).setZero();  // the user input is ignored
    e.weight(0).col(1).setOnes();
    e.bias(0).setZero();
    e.weight(1).setConstant(c);
    e.bias(1).setConstant(b);
  }
  return t;
}

struct Moments {
  double mean = 0, sd = 0;
};
Moments moments(const RowVector& v) {
  Moments m;
  const double n = static_cast<double>(v.size());
  for (Index i = 0; i < v.size(); ++i) m.mean += v[i] / n;
  for (Index i = 0; i < v.size(); ++i) m.sd += (v[i] - m.mean) * (v[i] - m.mean) / (n - 1);
  m.sd = std::sqrt(m.sd);
  return m;
}
}  // namespace

TEST_CASE("TS deltas are signed, with the mean and spread of the exact dropout distribution", "[mc-dropout]") {
  const int h = 10;
  const double c = 0.5, b = -5.0;
  const Tower tower = identical_units(h, static_cast<Scalar>(c), static_cast<Scalar>(b));
  const Matrix user = Matrix::Zero(1, 1);
  McDropoutTs::Workspace<test::EngineOf<Tower>> ws;

  for (const double p : {0.1, 0.01}) {
    // Exact distribution of delta = sigmoid(z_M) - sigmoid(z).
    const double base = sig(b + c * h);
    double mean = 0.0, second = 0.0;
    for (int k = 0; k <= h; ++k) {
      const double d = sig(b + c * k / (1.0 - p)) - base;
      const double w = binomial_pmf(h, k, 1.0 - p);
      mean += w * d;
      second += w * d * d;
    }
    const double sd = std::sqrt(second - mean * mean);

    // 20000 identical candidates with one mask each: 20000 independent draws.
    const Index n = 20000;
    const Matrix items = Matrix::Ones(1, n);
    RowVector base_row = RowVector::Constant(n, static_cast<Scalar>(base)), delta(n);
    Rng rng(42, 7);
    const McDropoutTs ts{p, /*per_candidate_masks=*/true};
    ts.validate();
    test::compute_uncertainty(ts, tower, user, items, base_row, rng, ws, delta);
    const Moments got = moments(delta);
    INFO("p = " << p << ": exact mean " << mean << " sd " << sd << ", sampled mean " << got.mean << " sd " << got.sd);
    // Mean within 4 standard errors; the sample sd within 5% (its relative standard error
    // is below 1.5% here for both rates).
    CHECK(std::abs(got.mean - mean) < 4.0 * sd / std::sqrt(static_cast<double>(n)));
    CHECK(got.sd == Approx(sd).epsilon(0.05));
    // Signed: both sides occur (a unit dropped lowers this model's score, none dropped raises it).
    CHECK(delta.minCoeff() < 0);
    CHECK(delta.maxCoeff() > 0);
  }
}

TEST_CASE("TS: a shared mask is one draw for the whole request, per-candidate masks differ", "[mc-dropout]") {
  const Tower tower = identical_units(10, 0.5f, -5.0f);
  const Matrix user = Matrix::Zero(1, 1);
  const Matrix items = Matrix::Ones(1, 64);
  const RowVector base = RowVector::Constant(64, static_cast<Scalar>(sig(0.0)));
  McDropoutTs::Workspace<test::EngineOf<Tower>> ws;
  RowVector delta(64);

  Rng rng(1, 2);
  test::compute_uncertainty(McDropoutTs{0.1}, tower, user, items, base, rng, ws, delta);
  CHECK(ws.mask.columns() == 1);
  CHECK((delta.array() == delta[0]).all());

  Rng rng2(1, 2);
  test::compute_uncertainty(McDropoutTs{0.1, true}, tower, user, items, base, rng2, ws, delta);
  CHECK(ws.mask.columns() == 64);
  CHECK(delta.minCoeff() < delta.maxCoeff());

  // Across requests the shared draw follows the same distribution: mean over 3000 requests.
  double mean = 0.0;
  const int requests = 3000;
  for (int r = 0; r < requests; ++r) {
    Rng stream(9, static_cast<std::uint64_t>(r));
    test::compute_uncertainty(McDropoutTs{0.1}, tower, user, items.leftCols(2), base.head(2), stream, ws, delta.head(2));
    mean += delta[0] / requests;
  }
  double exact = 0.0, second = 0.0;
  for (int k = 0; k <= 10; ++k) {
    const double d = sig(-5.0 + 0.5 * k / 0.9) - sig(0.0);
    exact += binomial_pmf(10, k, 0.9) * d;
    second += binomial_pmf(10, k, 0.9) * d * d;
  }
  CHECK(std::abs(mean - exact) < 4.0 * std::sqrt((second - exact * exact) / requests));
}

TEST_CASE("TS in two halves: the same mask draws and deltas as compute()", "[mc-dropout]") {
  // sample_first_pass_mask() + the engine's begin(..., mask, ...) + delta_from_masked_logits(),
  // the AGE scorer's one-pass form, against compute() on a request begun plainly: the same
  // draws from the request's stream (the next draw agrees too) and the same delta_y up to
  // float rounding, shared and per-candidate masks, on both engines.
  Rng init(17);
  Tower tower(5, 7, {48, 32});
  tower.initialize(init);
  const Index n = 11;
  const Matrix user = Matrix::Random(5, 1), items = Matrix::Random(7, n);
  const Request request{user, items};
  auto check = [&]<class E>() {
    for (bool per_candidate : {false, true}) {
      INFO("per-candidate masks " << per_candidate << ", request passes " << E::uses_request_passes);
      const McDropoutTs ts{.rate = 0.05, .per_candidate_masks = per_candidate};
      typename E::Workspace ws_split, ws_whole;
      McDropoutTs::Workspace<E> u_split, u_whole;
      E split_engine(tower, ws_split), whole_engine(tower, ws_whole);
      RowVector base_split(n), base_whole(n), delta_split(n), delta_whole(n);
      for (std::uint64_t r = 0; r < 20; ++r) {
        Rng split(3, r), whole(3, r);
        const DropoutMask& mask = ts.sample_first_pass_mask(split_engine, n, split, u_split);
        split_engine.begin(request, base_split, mask, delta_split);
        sigmoid_in_place(base_split);
        ts.delta_from_masked_logits(base_split, delta_split);

        whole_engine.begin(request, base_whole);
        sigmoid_in_place(base_whole);
        ts.compute(whole_engine, base_whole, whole, u_whole, delta_whole);

        CHECK(base_split == base_whole);
        CHECK((delta_split - delta_whole).cwiseAbs().maxCoeff() < 1e-6f);
        CHECK(u_split.mask.layers[0] == u_whole.mask.layers[0]);
        CHECK(split() == whole());
      }
    }
  };
  static_assert(RequestPassEngine<Tower>::masked_first_pass);
  check.operator()<RequestPassEngine<Tower>>();
  check.operator()<PlainEngine<Tower>>();
}

TEST_CASE("dropout acts on theta only: a tower without hidden units has no uncertainty", "[mc-dropout]") {
  Rng rng(3);
  Tower linear(2, 3, {});
  linear.initialize(rng);
  const Matrix user = Matrix::Random(2, 1), items = Matrix::Random(3, 5);
  RowVector base(5), delta(5);
  TowerWorkspace model_ws;
  predict_probabilities(linear, user, items, nullptr, model_ws, base);
  McDropoutTs::Workspace<test::EngineOf<Tower>> ws;
  test::compute_uncertainty(McDropoutTs{0.5}, linear, user, items, base, rng, ws, delta);
  CHECK(delta.isZero(0));
}

TEST_CASE("UCB is the mean squared deviation around the NO-dropout prediction", "[mc-dropout]") {
  // One hidden unit, p = 0.5: z_M is b (unit dropped) or b + 2c (kept, scaled by 2),
  // while the no-dropout logit is b + c. Around the centre f(h | theta):
  //   E[(f_M - f)^2] = ((s(b) - s(b + c))^2 + (s(b + 2c) - s(b + c))^2) / 2
  // which differs from the spread around the sample mean, (s(b + 2c) - s(b))^2 / 4.
  const double b = -4.0, c = 3.0;
  const Tower tower = identical_units(1, static_cast<Scalar>(c), static_cast<Scalar>(b));
  const double centre = sig(b + c);
  const double around_centre =
      0.5 * (std::pow(sig(b) - centre, 2) + std::pow(sig(b + 2 * c) - centre, 2));
  const double around_mean = 0.25 * std::pow(sig(b + 2 * c) - sig(b), 2);
  REQUIRE(around_centre - around_mean > 0.03);

  const Index n = 2000;
  const Matrix user = Matrix::Zero(1, 1), items = Matrix::Ones(1, n);
  const RowVector base = RowVector::Constant(n, static_cast<Scalar>(centre));
  McDropoutUcb::Workspace<test::EngineOf<Tower>> ws;
  RowVector delta(n), rooted(n);
  const McDropoutUcb ucb{0.5, 20, false, /*per_candidate_masks=*/true};
  Rng rng(5, 1);
  test::compute_uncertainty(ucb, tower, user, items, base, rng, ws, delta);
  CHECK(delta.minCoeff() >= 0);
  // 40000 squared deviations (sd 0.155): the mean's standard error is below 1e-3.
  const double mean = moments(delta).mean;
  INFO("around centre " << around_centre << ", around mean " << around_mean << ", got " << mean);
  CHECK(mean == Approx(around_centre).margin(4e-3));
  CHECK(std::abs(mean - around_mean) > 0.02);

  // The sqrt option is the root of the same samples.
  Rng rng2(5, 1);
  test::compute_uncertainty(McDropoutUcb{0.5, 20, true, true}, tower, user, items, base, rng2, ws, rooted);
  CHECK((rooted - delta.cwiseSqrt()).cwiseAbs().maxCoeff() < 1e-7f);
}

TEST_CASE("uncertainty settings are validated", "[mc-dropout]") {
  CHECK_THROWS_WITH(McDropoutTs{1.0}.validate(), Catch::Contains("dropout rate") && Catch::Contains("got 1"));
  CHECK_THROWS_AS(McDropoutTs{-0.1}.validate(), ConfigError);
  CHECK_THROWS_WITH((McDropoutUcb{0.01, 0}.validate()), Catch::Contains("McDropoutUcb.samples: expected >= 1, got 0"));
  CHECK_THROWS_AS((GaussianNoise{0.01, false, -1.0}.validate()), ConfigError);
  CHECK_NOTHROW(McDropoutTs{0.0}.validate());
  CHECK(McDropoutTs{}.rate == 0.01);
  CHECK(McDropoutUcb{}.samples == 20);
}

TEST_CASE("without delta_y: Gaussian noise of the request's TS scale, or of a fixed scale", "[mc-dropout]") {
  const Tower tower = identical_units(10, 0.5f, -5.0f);
  const Index n = 20000;
  const Matrix user = Matrix::Zero(1, 1), items = Matrix::Ones(1, n);
  const RowVector base = RowVector::Constant(n, static_cast<Scalar>(sig(0.0)));
  RowVector ts_delta(n), noise(n);

  SECTION("matched scale: the RMS of the TS deltas the same stream gives") {
    McDropoutTs::Workspace<test::EngineOf<Tower>> ts_ws;
    Rng rng(8, 8);
    test::compute_uncertainty(McDropoutTs{0.1, true}, tower, user, items, base, rng, ts_ws, ts_delta);
    const double rms = std::sqrt(static_cast<double>(ts_delta.squaredNorm()) / n);
    GaussianNoise::Workspace<test::EngineOf<Tower>> ws;
    Rng rng2(8, 8);
    test::compute_uncertainty(GaussianNoise{0.1, true}, tower, user, items, base, rng2, ws, noise);
    const Moments m = moments(noise);
    CHECK(std::abs(m.mean) < 4.0 * rms / std::sqrt(static_cast<double>(n)));
    CHECK(m.sd == Approx(rms).epsilon(0.03));
  }
  SECTION("fixed scale") {
    GaussianNoise::Workspace<test::EngineOf<Tower>> ws;
    Rng rng(8, 9);
    test::compute_uncertainty(GaussianNoise{0.01, false, 0.05}, tower, user, items, base, rng, ws, noise);
    const Moments m = moments(noise);
    CHECK(std::abs(m.mean) < 4.0 * 0.05 / std::sqrt(static_cast<double>(n)));
    CHECK(m.sd == Approx(0.05).epsilon(0.03));
  }
}
