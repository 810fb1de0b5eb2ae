// Bad input as an attacker or a careless caller would give it (issue 20), on the scoring
// side: models that are not usable (default-constructed, moved from) and finite but absurd
// settings and weights. Each must end in an age::Error (or a non-ok Status), never a crash
// or a NaN score with an ok status. (Weight files: test_io_hardening.cpp; saving:
// test_crash_safe.cpp; R6B logs: test_r6b.cpp; the debug check of shared workspaces:
// test_workspace_use.cpp.)
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "age/age.hpp"
#include "small_model.hpp"
#include "status_checks.hpp"

using namespace age;

namespace {

constexpr double kHuge = 1e300;

// REQUIRE that fn throws exactly the age::Error subclass E with a message containing
// every one of `parts`.
template <class E>
void require_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  REQUIRE_THROWS_AS(fn(), E);
  REQUIRE_THROWS_AS(fn(), Error);
  for (const std::string& p : parts) REQUIRE_THROWS_WITH(fn(), Catch::Contains(p));
}

using age_test::require_status;

using age_test::small_layout;
using age_test::small_model;

Matrix random_matrix(Index rows, Index cols, std::uint64_t seed) {
  Rng rng(seed);
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

// Every weight of the tower multiplied by `factor` (finite, but the products overflow).
void scale_weights(Tower& tower, Scalar factor) {
  Tower::Edit e = tower.edit();
  for (std::size_t l = 0; l < tower.num_layers(); ++l) e.weight(l) *= factor;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Models that are not usable
// ---------------------------------------------------------------------------------------

TEST_CASE("a moved-from model, tower or layout is empty, as a default-constructed one is", "[hardening]") {
  EmbeddingCtrModel a = small_model();
  REQUIRE_FALSE(a.empty());
  EmbeddingCtrModel b = std::move(a);
  CHECK(a.empty());  // NOLINT(bugprone-use-after-move): what is checked
  CHECK(a.user_dim() == 0);
  CHECK(a.item_dim() == 0);
  CHECK(a.layout().size() == 0);
  CHECK(a.layout().user_dim() == 0);
  CHECK(a.tower().num_layers() == 0);
  CHECK(a.tower().hidden().empty());
  CHECK_FALSE(b.empty());
  CHECK(b.item_dim() == 4);

  EmbeddingCtrModel c = small_model(2);
  c = std::move(b);  // move assignment empties the source too
  CHECK(b.empty());  // NOLINT(bugprone-use-after-move)
  CHECK_FALSE(c.empty());
  a = small_model(3);  // an empty model can be assigned to and is usable again
  CHECK_FALSE(a.empty());

  Tower t(2, 3, {4});
  Tower u = std::move(t);
  CHECK(t.empty());  // NOLINT(bugprone-use-after-move)
  CHECK(t.user_dim() == 0);
  CHECK(t.item_dim() == 0);
  CHECK(t.parameter_count() == 0);
  CHECK(t.gradient_table_bytes() == 0);
  CHECK_FALSE(u.empty());
  CHECK(Tower().empty());
  CHECK(EmbeddingCtrModel().empty());

  FeatureLayout layout = small_layout();
  FeatureLayout moved = std::move(layout);
  CHECK(layout.size() == 0);  // NOLINT(bugprone-use-after-move)
  CHECK(layout.user_dim() == 0);
  CHECK(layout.item_dim() == 0);
  CHECK(layout.fields_on(Side::User) == 0);
  CHECK(moved.user_dim() == 3);
}

TEST_CASE("every entry point refuses an empty model with a ConfigError, try_score with a config Status",
          "[hardening]") {
  const EmbeddingCtrModel empty;
  const SideInput user{FieldInput{{1}, {}}};
  const std::vector<SideInput> items{SideInput{FieldInput{{2}, {}}}};
  const std::vector<std::string> parts{"got an empty one", "default-constructed or moved from"};

  Vector u;
  Matrix x;
  require_error<ConfigError>([&] { empty.embed_request(user, items, u, x); }, {"embed_request", "got an empty one"});
  ModelWorkspace mws;
  RowVector prob(1);
  require_error<ConfigError>([&] { empty.predict(user, items, mws, prob); }, parts);
  EmbeddingCtrModel empty_copy;
  Rng rng(1);
  require_error<ConfigError>([&] { empty_copy.initialize(rng); }, {"initialize", "got an empty one"});

  // The embedding-level passes, with a request whose shape the empty model would accept.
  const Matrix no_rows(0, 3), user0(0, 1);
  TowerWorkspace tws;
  RowVector out(3);
  require_error<ConfigError>([&] { empty.logits(user0, no_rows, nullptr, tws, out); }, {"tower logits", "empty"});
  require_error<ConfigError>([&] { empty.begin_request(user0, no_rows, tws, out); }, {"tower begin_request"});
  Matrix d;
  require_error<ConfigError>([&] { empty.probability_gradient(user0, no_rows, nullptr, tws, out, &d); },
                             {"tower probability_gradient"});
  DropoutMask mask;
  require_error<ConfigError>([&] { empty.sample_mask(0.1, 1, rng, mask); }, {"tower sample_mask"});

  // Scorers and baselines built over an empty model.
  require_error<ConfigError>([&] { AgeTsWithoutGate<EmbeddingCtrModel>(empty, AlwaysOpen{}); },
                             {"AgeScorer: model", "got an empty one"});
  require_error<ConfigError>([&] { GradientTs<EmbeddingCtrModel>{empty}; }, {"GradientTs: model", "empty"});
  const EmbeddingCtrModel good = small_model();
  require_error<ConfigError>(
      [&] { EnsembleUcb<EmbeddingCtrModel>(std::vector<const EmbeddingCtrModel*>{&good, &empty}); },
      {"EnsembleUcb.members[1]: model", "got an empty one"});
  EmbeddingCtrModel trainee;
  require_error<ConfigError>([&] { OnlineTrainer<Adam>{trainee}; }, {"trainer: model", "got an empty one"});
  Greedy<EmbeddingCtrModel> greedy(empty);  // noexcept construction; refused when it scores
  ScoredRequest scored;
  const Request request{user0, no_rows, 1};
  require_error<ConfigError>([&] { greedy.score(request, scored, tws); }, {"explorer: model", "got an empty one"});
  require_status(age::try_score(greedy, request, scored, tws), StatusCode::config, {"got an empty one"});
}

TEST_CASE("a model or DGU tower moved from after its scorer was built: an error, never a crash", "[hardening]") {
  EmbeddingCtrModel model = small_model();
  Tower dgu = make_dgu_tower(model.item_dim(), 4);
  const AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.1}, 7);
  const AgeUcbWithoutGate<EmbeddingCtrModel> ucb(model, AlwaysOpen{}, McDropoutUcb{0.1});
  const Greedy<EmbeddingCtrModel> greedy(model);
  const EpsilonGreedy<EmbeddingCtrModel> egreedy(model, {.epsilon = 1.0});
  const RandomPolicy<EmbeddingCtrModel> random(model);
  const GradientUcb<EmbeddingCtrModel> gradient(model);
  const Matrix user = random_matrix(3, 1, 1), items = random_matrix(4, 5, 2);
  const Request request{user, items, 3};
  AgeTs<EmbeddingCtrModel>::Workspace ws;
  AgeUcbWithoutGate<EmbeddingCtrModel>::Workspace ucb_ws;
  TowerWorkspace tws;
  GradientWorkspace gws;
  ScoredRequest out;
  REQUIRE(scorer.try_score(request, out, ws).ok());

  SECTION("the DGU tower moved from") {
    const Tower taken = std::move(dgu);
    require_error<ConfigError>([&] { scorer.score(request, out, ws); }, {"DguGate: tower", "got an empty one"});
    require_status(scorer.try_score(request, out, ws), StatusCode::config, {"DguGate: tower", "empty"});
    CHECK(taken.item_dim() == 4);
  }
  SECTION("the model moved from") {
    const EmbeddingCtrModel taken = std::move(model);
    require_status(scorer.try_score(request, out, ws), StatusCode::config, {"AgeScorer: model", "got an empty one"});
    require_error<ConfigError>([&] { scorer.score(request, out, ws); }, {"AgeScorer: model"});
    require_status(ucb.try_score(request, out, ucb_ws), StatusCode::config, {"got an empty one"});
    for (const auto& score : std::vector<std::function<void()>>{
             [&] { greedy.score(request, out, tws); }, [&] { egreedy.score(request, out, tws); },
             [&] { random.score(request, out, tws); }, [&] { gradient.score(request, out, gws); }})
      require_error<ConfigError>(score, {"got an empty one"});
    require_status(age::try_score(greedy, request, out, tws), StatusCode::config, {"empty"});
    // Assigned again, the same scorer works again (it keeps a pointer to the object).
    model = taken;
    CHECK(scorer.try_score(request, out, ws).ok());
  }
  SECTION("a moved-from model's embed_request refuses instead of returning without writing") {
    const EmbeddingCtrModel taken = std::move(model);
    Vector u = Vector::Constant(3, 42.0f);
    Matrix x;
    const SideInput user_in{FieldInput{{1}, {}}};
    const std::vector<SideInput> items_in{SideInput{FieldInput{{2}, {}}}};
    require_error<ConfigError>([&] { model.embed_request(user_in, items_in, u, x); },  // NOLINT(bugprone-use-after-move)
                               {"EmbeddingCtrModel embed_request", "moved from"});
    Vector u2;
    taken.embed_request(user_in, items_in, u2, x);
    CHECK(u2.size() == 3);
  }
}

TEST_CASE("a tower that is empty is refused by the gate, the trainer and its own passes", "[hardening]") {
  const EmbeddingCtrModel model = small_model();
  const Tower no_dgu;
  require_error<ConfigError>([&] { AgeTs<EmbeddingCtrModel>(model, DguGate(no_dgu)); },
                             {"DguGate: tower", "got an empty one"});
  EmbeddingCtrModel trained = small_model();
  OnlineTrainer<Adam> trainer(trained);
  Tower item_tower;
  require_error<ConfigError>([&] { trainer.attach_item_tower(item_tower); }, {"trainer: item tower", "empty"});
  const EmbeddingCtrModel taken = std::move(trained);
  const Sample sample{SideInput{FieldInput{{1}, {}}}, SideInput{FieldInput{{2}, {}}}, 1.0f};
  require_error<ConfigError>([&] { trainer.step(sample); }, {"trainer: step", "empty"});

  Tower tower(2, 3, {4});
  Tower other = std::move(tower);
  Rng rng(1);
  require_error<ConfigError>([&] { tower.initialize(rng); }, {"tower initialize", "moved from"});  // NOLINT
  const Matrix user(2, 1), items(3, 2);
  TowerWorkspace ws;
  RowVector out(2);
  require_error<ConfigError>([&] { tower.logits(user, items, nullptr, ws, out); }, {"tower logits"});  // NOLINT
  require_error<ConfigError>([&] { tower.forward(user, items, nullptr, ws); }, {"tower forward"});      // NOLINT
  const AgeTsWithoutGate<Tower> scorer(other, AlwaysOpen{});
  other = Tower();
  AgeTsWithoutGate<Tower>::Workspace sws;
  ScoredRequest scored;
  require_status(scorer.try_score(Request{user, items, 1}, scored, sws), StatusCode::config,
                 {"AgeScorer: model", "got an empty one"});
}

// ---------------------------------------------------------------------------------------
// Finite but absurd settings and weights
// ---------------------------------------------------------------------------------------

TEST_CASE("absurd but finite settings are refused where they are set, naming setting and value", "[hardening]") {
  const Tower model(3, 5, {8, 4});
  const Tower dgu = make_dgu_tower(5, 4);
  const DguGate gate(dgu);
  const std::vector<Tower> members(2, model);
  EmbeddingCtrModel emb = small_model();
  EmbeddingTables tables(small_layout());
  const double max_double = std::numeric_limits<double>::max();
  struct Row {
    const char* name;
    std::function<void()> build;
    std::vector<std::string> parts;
  };
  const std::vector<Row> rows{
      {"PGD lambda' near the double maximum", [&] { AgeTs<Tower>(model, gate, {}, Pgd{.lambda = max_double}); },
       {"Pgd.lambda", "[0, 1e+12]", "got 1.79769e+308"}},
      {"FGM lambda' 1e300", [&] { AgeTsFgm<Tower>(model, gate, {}, Fgm{.lambda = kHuge}); },
       {"Fgm.lambda", "got 1e+300"}},
      {"random-direction lambda' 1e13",
       [&] { AgeTsWithoutDirection<Tower>(model, gate, {}, RandomDirection{.lambda = 1e13}); },
       {"RandomDirection.lambda", "got 1e+13"}},
      {"PGD step scale 1e300", [&] { AgeTs<Tower>(model, gate, {}, Pgd{.step_scale = kHuge}); },
       {"Pgd.step_scale", "(0, 1e+12]", "got 1e+300"}},
      {"noise scale 1e300",
       [&] { AgeTsWithoutDelta<Tower>(model, gate, GaussianNoise{.scale = kHuge}); },
       {"GaussianNoise.scale", "got 1e+300"}},
      {"ensemble bonus scale 1e300",
       [&] { EnsembleUcb<Tower>(std::span<const Tower>(members), {.scale = kHuge}); },
       {"EnsembleUcb.scale", "got 1e+300"}},
      {"gradient nu 1e300", [&] { GradientUcb<Tower>(model, {.nu = kHuge}); }, {"GradientUcb.nu", "got 1e+300"}},
      {"gradient lambda 1e300", [&] { GradientTs<Tower>(model, {.lambda = kHuge}); }, {"GradientTs.lambda"}},
      {"Adam lr 1e300", [] { TowerOptimizer<Adam>(Adam{.lr = kHuge}); }, {"adam: lr", "got 1e+300"}},
      {"Adagrad lr_decay 1e300", [] { TowerOptimizer<Adagrad>(Adagrad{.lr_decay = kHuge}); }, {"adagrad: lr_decay"}},
      {"initialize with an enormous std", [&] { Rng r(1); emb.initialize(r, kHuge); },
       {"embedding_std", "[0, 1e+12]", "got 1e+300"}},
      {"embedding tables with an enormous std", [&] { Rng r(1); tables.initialize_normal(r, 1e15); },
       {"stddev", "got 1e+15"}},
      {"finite-difference step 1e300", [&] { FiniteDifferenceModel<Tower>(model, kHuge); },
       {"FiniteDifferenceModel.step", "got 1e+300"}},
      {"settings of the ablations", [&] { age_ts(model, dgu, AgeSettings{.lambda = kHuge}); }, {"Pgd.lambda"}},
      {"a constant delta 1e300", [] { ConstantDelta{.value = kHuge}.validate(); },
       {"ConstantDelta.value", "[-1e+12, 1e+12]", "got 1e+300"}},
      {"a constant delta -1e300", [] { ConstantDelta{.value = -kHuge}.validate(); },
       {"ConstantDelta.value", "got -1e+300"}},
      {"impression half count 1e300",
       [] { ImpressionScaled<ConstantDelta>{.half_count = kHuge}.validate(); },
       {"ImpressionScaled.half_count", "(0, 1e+12]", "got 1e+300"}},
      {"impression power 1e300", [] { ImpressionScaled<ConstantDelta>{.power = kHuge}.validate(); },
       {"ImpressionScaled.power", "got 1e+300"}},
      {"additive bonus scale 1e300", [] { AdditiveBonus{.scale = kHuge}.validate(); },
       {"AdditiveBonus.scale", "got 1e+300"}},
      {"propensity draws 1e12", [] { PropensityOptions{.draws = 1'000'000'000'000}.validate(); },
       {"PropensityOptions.draws", "expected 1 to 100000000", "got 1000000000000"}},
      {"a calibration grid reaching 1e300",
       [&] {
         const std::vector<Request> requests{Request{Vector::Zero(3), Matrix::Zero(5, 2), 1}};
         const std::vector<double> lambdas{1.0, kHuge};
         (void)calibrate_lambda([&](double l) { return AgeTs<Tower>(model, gate, {}, Pgd{.lambda = l}); },
                                std::span<const Request>(requests), std::span<const double>(lambdas));
       },
       {"calibrate_lambda: lambdas[1]", "[0, 1e+12]", "got 1e+300"}},
  };
  for (const Row& row : rows) {
    DYNAMIC_SECTION(row.name) { require_error<ConfigError>(row.build, row.parts); }
  }
  SECTION("the bound itself is accepted") {
    CHECK_NOTHROW(AgeTs<Tower>(model, gate, {}, Pgd{.lambda = kMaxSettingScale, .step_scale = kMaxSettingScale}));
    Rng r(1);
    CHECK_NOTHROW(emb.initialize(r, kMaxSettingScale));
    CHECK(kMaxSettingScale == 1e12);
    // The largest lambda' a calibration grid probes (1e7) is accepted.
    CHECK_NOTHROW(AgeTsFgm<Tower>(model, gate, {}, Fgm{.lambda = 1e7}));
  }
}

TEST_CASE("scores that overflow float are an InputError / input Status, never NaN with an ok status",
          "[hardening]") {
  Tower model(3, 5, {8, 4});
  Rng rng(11);
  model.initialize(rng);
  scale_weights(model, 1e30f);  // finite weights whose products overflow
  const Tower dgu = make_dgu_tower(5, 4);
  const Matrix user = random_matrix(3, 1, 4), items = random_matrix(5, 6, 5);
  const Request request{user, items, 9};
  ScoredRequest out;
  const std::vector<std::string> parts{"scores: ", "expected a finite value", "float overflows"};

  const AgeTs<Tower> ts(model, DguGate(dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.1});
  AgeTs<Tower>::Workspace ws;
  require_error<InputError>([&] { ts.score(request, out, ws); }, parts);
  require_status(ts.try_score(request, out, ws), StatusCode::input, parts);
  require_status(age::try_score(ts, request, out, ws), StatusCode::input, parts);
  const AgeUcbWithoutGate<Tower> ucb(model, AlwaysOpen{}, McDropoutUcb{0.1});
  AgeUcbWithoutGate<Tower>::Workspace ucb_ws;
  require_status(ucb.try_score(request, out, ucb_ws), StatusCode::input, parts);

  TowerWorkspace tws;
  const Greedy<Tower> greedy(model);
  require_error<InputError>([&] { greedy.score(request, out, tws); }, parts);
  require_status(age::try_score(greedy, request, out, tws), StatusCode::input, parts);
  require_error<InputError>([&] { EpsilonGreedy<Tower>(model, {.epsilon = 1.0}).score(request, out, tws); }, parts);
  require_error<InputError>([&] { RandomPolicy<Tower>(model).score(request, out, tws); }, parts);
  const std::vector<Tower> members(2, model);
  EnsembleUcb<Tower>::Workspace ews;
  require_error<InputError>([&] { EnsembleUcb<Tower>(std::span<const Tower>(members)).score(request, out, ews); },
                            parts);
  EnsembleTs<Tower>::Workspace etws;
  require_error<InputError>([&] { EnsembleTs<Tower>(std::span<const Tower>(members)).score(request, out, etws); },
                            parts);
  GradientWorkspace gws;
  require_error<InputError>([&] { GradientTs<Tower>(model).score(request, out, gws); }, parts);

}

TEST_CASE("ScoredRequest::check_finite names the part and the candidate", "[hardening]") {
  ScoredRequest out;
  out.resize(70);  // a whole number of vectors and a tail
  out.base.setConstant(0.5f);
  out.delta.setZero();
  out.explored.setConstant(0.25f);
  CHECK(out.check_finite().ok());
  for (const Index i : {Index(0), Index(33), Index(69)}) {
    ScoredRequest bad = out;
    bad.explored[i] = std::numeric_limits<Scalar>::quiet_NaN();
    require_status(bad.check_finite(), StatusCode::input, {"explored[" + std::to_string(i) + "]", "got nan"});
    bad = out;
    bad.delta[i] = -std::numeric_limits<Scalar>::infinity();
    require_status(bad.check_finite(), StatusCode::input, {"delta[" + std::to_string(i) + "]", "got -inf"});
  }
  ScoredRequest base_bad = out;
  base_bad.base[5] = std::numeric_limits<Scalar>::infinity();
  require_status(base_bad.check_finite(), StatusCode::input, {"base[5]", "got inf"});
}
