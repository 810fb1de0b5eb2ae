// Validation at the public entry points: every bad request, setting, size or file gets an
// age::Error (or a Status) of the right type whose message names the field and the actual
// value; the non-throwing scoring form agrees with score() and allocates nothing once
// warmed up; weight files over the size limit are refused before they are read; R6B lines
// with a NUL byte are refused by name.

// First: configures Eigen and replaces operator new (one file per binary).
#include "allocation_watch.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "age/age.hpp"
#include "age/sim/r6b.hpp"

#ifdef AGE_HAVE_IO
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "status_checks.hpp"
#endif

using namespace age;

using age_test::allocations_during;

namespace {

constexpr Index kUserDim = 3, kItemDim = 5, kCandidates = 5;

Matrix random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

// A small trained-looking tower, its DGU and one good request.
struct World {
  Tower model{kUserDim, kItemDim, {8, 4}};
  Tower dgu = make_dgu_tower(kItemDim, 4);
  Matrix user, items;

  World() {
    Rng rng(7);
    model.initialize(rng);
    dgu.initialize(rng);
    user = random_matrix(kUserDim, 1, rng);
    items = random_matrix(kItemDim, kCandidates, rng);
  }
};


// REQUIRE that fn throws exactly the age::Error subclass matching `code` (and so an
// age::Error), with a message containing every one of `parts`.
void require_error(StatusCode code, const std::function<void()>& fn, const std::vector<std::string>& parts) {
  switch (code) {
    case StatusCode::dimension: REQUIRE_THROWS_AS(fn(), DimensionError); break;
    case StatusCode::input: REQUIRE_THROWS_AS(fn(), InputError); break;
    case StatusCode::config: REQUIRE_THROWS_AS(fn(), ConfigError); break;
    case StatusCode::format: REQUIRE_THROWS_AS(fn(), FormatError); break;
    case StatusCode::io: REQUIRE_THROWS_AS(fn(), IoError); break;
    default: FAIL("unexpected code " << to_string(code));
  }
  REQUIRE_THROWS_AS(fn(), Error);
  for (const std::string& p : parts) REQUIRE_THROWS_WITH(fn(), Catch::Contains(p));
}

using age_test::require_status;

bool identical(const ScoredRequest& a, const ScoredRequest& b) {
  return a.base == b.base && a.delta == b.delta && a.gate == b.gate && a.explored == b.explored &&
         a.ranking == b.ranking;
}

// One row of the bad-request table.
struct BadRequest {
  const char* name;
  Matrix user, items;
  std::vector<std::uint64_t> impressions;
  Index max_candidates;
  StatusCode code;
  std::vector<std::string> parts;  // the field and the actual value, as the message says them
};

std::vector<BadRequest> bad_requests(const World& w) {
  std::vector<BadRequest> rows;
  const Index none = kDefaultMaxCandidates;
  rows.push_back({"no candidates", w.user, Matrix(kItemDim, 0), {}, none, StatusCode::input,
                  {"request: items", "at least 1 candidate", "got 0"}});
  rows.push_back({"more candidates than max_candidates", w.user, w.items, {}, 4, StatusCode::input,
                  {"request: items", "max_candidates", "at most 4", "got 5"}});
  rows.push_back({"item rows differ from item_dim", w.user, Matrix::Zero(kItemDim + 1, kCandidates), {}, none,
                  StatusCode::dimension, {"items rows (item_dim)", "expected 5, got 6"}});
  rows.push_back({"user rows differ from user_dim", Matrix::Zero(kUserDim - 1, 1), w.items, {}, none,
                  StatusCode::dimension, {"user rows (user_dim)", "expected 3, got 2"}});
  rows.push_back({"user columns neither 1 nor N", Matrix::Zero(kUserDim, 2), w.items, {}, none,
                  StatusCode::dimension, {"user columns", "expected 1 or 5, got 2"}});
  rows.push_back({"impressions not one per candidate", w.user, w.items, {1, 2, 3}, none, StatusCode::dimension,
                  {"impressions", "expected 5, got 3"}});
  Matrix nan_items = w.items;
  nan_items(2, 3) = std::numeric_limits<Scalar>::quiet_NaN();
  rows.push_back({"NaN item embedding", w.user, nan_items, {}, none, StatusCode::input,
                  {"request: items(2, 3)", "expected a finite value", "got nan"}});
  Matrix inf_items = w.items;
  inf_items(0, 4) = -std::numeric_limits<Scalar>::infinity();
  rows.push_back({"-inf item embedding", w.user, inf_items, {}, none, StatusCode::input,
                  {"request: items(0, 4)", "got -inf"}});
  Matrix inf_user = w.user;
  inf_user(1, 0) = std::numeric_limits<Scalar>::infinity();
  rows.push_back({"+inf user embedding", inf_user, w.items, {}, none, StatusCode::input,
                  {"request: user(1, 0)", "got inf"}});
  Matrix nan_users = Matrix::Zero(kUserDim, kCandidates);
  nan_users(2, 4) = std::numeric_limits<Scalar>::quiet_NaN();
  rows.push_back({"NaN in a per-candidate user column", nan_users, w.items, {}, none, StatusCode::input,
                  {"request: user(2, 4)", "got nan"}});
  return rows;
}

}  // namespace

TEST_CASE("bad requests: score() throws the typed error, try_score() returns its status", "[validation]") {
  const World w;
  for (const BadRequest& row : bad_requests(w)) {
    DYNAMIC_SECTION(row.name) {
      const Request request{row.user, row.items, 1, row.impressions};

      AgeTs<Tower> scorer(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.1}, 3);
      scorer.set_max_candidates(row.max_candidates);
      AgeTs<Tower>::Workspace ws;
      ScoredRequest out;
      require_error(row.code, [&] { scorer.score(request, out, ws); }, row.parts);
      require_status(scorer.try_score(request, out, ws), row.code, row.parts);
      require_status(scorer.check_request(request), row.code, row.parts);
      require_status(age::try_score(scorer, request, out, ws), row.code, row.parts);

      // The baselines check requests the same way.
      Greedy<Tower> greedy(w.model);
      greedy.set_max_candidates(row.max_candidates);
      Tower::Workspace tws;
      require_error(row.code, [&] { greedy.score(request, out, tws); }, row.parts);
      require_status(age::try_score(greedy, request, out, tws), row.code, row.parts);

      EpsilonGreedy<Tower> egreedy(w.model, {.epsilon = 0.5});
      egreedy.set_max_candidates(row.max_candidates);
      require_error(row.code, [&] { egreedy.score(request, out, tws); }, row.parts);

      RandomPolicy<Tower> random(w.model);
      random.set_max_candidates(row.max_candidates);
      require_error(row.code, [&] { random.score(request, out, tws); }, row.parts);

      const std::vector<Tower> members(3, w.model);
      EnsembleUcb<Tower> ensemble{std::span<const Tower>(members)};
      ensemble.set_max_candidates(row.max_candidates);
      EnsembleUcb<Tower>::Workspace ews;
      require_error(row.code, [&] { ensemble.score(request, out, ews); }, row.parts);
      require_status(age::try_score(ensemble, request, out, ews), row.code, row.parts);

      GradientUcb<Tower> gradient(w.model);
      gradient.set_max_candidates(row.max_candidates);
      GradientWorkspace gws;
      require_error(row.code, [&] { gradient.score(request, out, gws); }, row.parts);
      require_status(age::try_score(gradient, request, out, gws), row.code, row.parts);
    }
  }
}

TEST_CASE("the finiteness check finds a non-finite entry in the vector part and the tail", "[validation]") {
  // 70 rows: whole steps of 4 vectors and a tail at every vector width; a column range of
  // a larger matrix (outer stride 75).
  const Matrix base = Matrix::Constant(75, 9, std::numeric_limits<Scalar>::max());
  const auto block = base.topRows(70);
  CHECK(detail::all_finite(block));
  for (const Scalar bad : {std::numeric_limits<Scalar>::quiet_NaN(), std::numeric_limits<Scalar>::infinity(),
                           -std::numeric_limits<Scalar>::infinity()}) {
    for (const Index row : {Index(0), Index(17), Index(63), Index(64), Index(69)}) {
      Matrix m = base;
      m(row, 5) = bad;
      CAPTURE(bad, row);
      CHECK_FALSE(detail::all_finite(m.topRows(70)));
    }
    Matrix outside = base;
    outside(72, 5) = bad;  // below the range: not part of the checked block
    CHECK(detail::all_finite(outside.topRows(70)));
  }
}

TEST_CASE("a request claiming 1e12 candidates is refused before any element is read", "[validation]") {
  const World w;
  // A view that claims 1e12 columns over a buffer of one: reading past the first column
  // would be out of bounds, so the candidate bound must come before every other check.
  const std::vector<Scalar> one_column(static_cast<std::size_t>(kItemDim), 0.5f);
  const Index huge = 1'000'000'000'000;
  const Eigen::Map<const Matrix> items(one_column.data(), kItemDim, huge);
  const Request request{w.user, items, 1};
  const std::vector<std::string> parts{"max_candidates", "at most 100000", "got 1000000000000"};

  const AgeTs<Tower> scorer(w.model, DguGate(w.dgu));
  AgeTs<Tower>::Workspace ws;
  ScoredRequest out;
  require_error(StatusCode::input, [&] { scorer.score(request, out, ws); }, parts);
  require_status(scorer.try_score(request, out, ws), StatusCode::input, parts);
  const Greedy<Tower> greedy(w.model);
  Tower::Workspace tws;
  require_error(StatusCode::input, [&] { greedy.score(request, out, tws); }, parts);
  CHECK(scorer.max_candidates() == kDefaultMaxCandidates);
  CHECK(kDefaultMaxCandidates == 100000);
}

TEST_CASE("try_score on a good request: ok and exactly the scores of score()", "[validation]") {
  const World w;
  const Request request{w.user, w.items, 11};
  const AgeTs<Tower> ts(w.model, DguGate(w.dgu), McDropoutTs{0.2}, Pgd{.lambda = 0.5}, 4);
  const AgeUcbFgm<Tower> ucb(w.model, DguGate(w.dgu), McDropoutUcb{0.2}, Fgm{.lambda = 0.5}, 4);
  AgeTs<Tower>::Workspace ts_ws;
  AgeUcbFgm<Tower>::Workspace ucb_ws;
  ScoredRequest thrown, status_form;

  ts.score(request, thrown, ts_ws);
  const Status s = ts.try_score(request, status_form, ts_ws);
  CHECK(s.ok());
  CHECK(s.code() == StatusCode::ok);
  CHECK(std::string(s.message()).empty());
  CHECK(identical(thrown, status_form));
  CHECK(age::try_score(ts, request, status_form, ts_ws).ok());
  CHECK(identical(thrown, status_form));

  ucb.score(request, thrown, ucb_ws);
  CHECK(ucb.try_score(request, status_form, ucb_ws).ok());
  CHECK(identical(thrown, status_form));

  const Greedy<Tower> greedy(w.model);
  Tower::Workspace tws;
  greedy.score(request, thrown, tws);
  CHECK(age::try_score(greedy, request, status_form, tws).ok());
  CHECK(identical(thrown, status_form));

  // The check is a bound, not a change of behaviour: exactly max_candidates is accepted.
  AgeTs<Tower> capped(w.model, DguGate(w.dgu), McDropoutTs{0.2}, Pgd{.lambda = 0.5}, 4);
  capped.set_max_candidates(kCandidates);
  CHECK(capped.try_score(request, status_form, ts_ws).ok());
}

TEST_CASE("try_score allocates nothing once warmed up, on good and on bad requests", "[validation]") {
  const World w;
  Rng rng(3);
  const Matrix items = random_matrix(kItemDim, 40, rng);
  Matrix bad_items = items;
  bad_items(4, 17) = std::numeric_limits<Scalar>::quiet_NaN();
  const AgeTs<Tower> ts(w.model, DguGate(w.dgu), McDropoutTs{0.2}, Pgd{.lambda = 0.5}, 4);
  AgeTs<Tower>::Workspace ws;
  ScoredRequest out;
  REQUIRE(ts.try_score(Request{w.user, items, 1}, out, ws).ok());  // warm-up
  bool all_ok = true;
  StatusCode bad_code = StatusCode::ok;
  CHECK(allocations_during([&] {
          for (int r = 0; r < 5; ++r) all_ok = ts.try_score(Request{w.user, items, 1}, out, ws).ok() && all_ok;
          bad_code = ts.try_score(Request{w.user, bad_items, 1}, out, ws).code();
        }) == 0);
  CHECK(all_ok);
  CHECK(bad_code == StatusCode::input);
}

TEST_CASE("Status: fixed-size message, typed codes, raise() round trip", "[validation]") {
  const Status ok;
  CHECK(ok.ok());
  CHECK(static_cast<bool>(ok));
  CHECK_NOTHROW(ok.raise());

  // Messages longer than the buffer are cut and marked.
  const std::string long_message(1000, 'x');
  const Status cut(StatusCode::input, long_message);
  CHECK(std::string(cut.message()).size() == Status::kMessageCapacity - 1);
  CHECK_THAT(std::string(cut.message()), Catch::EndsWith("..."));
  const Status formatted = Status::format(StatusCode::config, "%s: expected %d, got %s", "field", 1, long_message.c_str());
  CHECK_THAT(std::string(formatted.message()), Catch::StartsWith("field: expected 1, got xxx") && Catch::EndsWith("..."));

  auto status_of = [](auto&& throwing) {
    try {
      throwing();
    } catch (...) {
      return Status::from_current_exception();
    }
    return Status();
  };
  CHECK(status_of([] { throw DimensionError("d"); }).code() == StatusCode::dimension);
  CHECK(status_of([] { throw ConfigError("c"); }).code() == StatusCode::config);
  CHECK(status_of([] { throw InputError("i"); }).code() == StatusCode::input);
  CHECK(status_of([] { throw FormatError("f"); }).code() == StatusCode::format);
  CHECK(status_of([] { throw IoError("o"); }).code() == StatusCode::io);
  CHECK(status_of([] { throw Error("e"); }).code() == StatusCode::other);
  CHECK(status_of([] { throw std::bad_alloc(); }).code() == StatusCode::resource);
  CHECK(status_of([] { throw std::out_of_range("r"); }).code() == StatusCode::internal);
  CHECK(status_of([] { throw 42; }).code() == StatusCode::internal);
  CHECK(std::string(status_of([] { throw InputError("field: expected 1, got 2"); }).message()) ==
        "field: expected 1, got 2");

  require_error(StatusCode::dimension, [] { Status(StatusCode::dimension, "x: expected 1, got 2").raise(); },
                {"x: expected 1, got 2"});
  require_error(StatusCode::input, [] { Status(StatusCode::input, "y").raise(); }, {"y"});
  require_error(StatusCode::config, [] { Status(StatusCode::config, "z").raise(); }, {"z"});
}

namespace {
struct BadSetting {
  const char* name;
  std::function<void()> build;
  std::vector<std::string> parts;
};
}  // namespace

TEST_CASE("settings out of range are refused at construction", "[validation]") {
  const World w;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const DguGate gate(w.dgu);
  const std::vector<Tower> members(2, w.model);
  EmbeddingCtrModel emb(FeatureLayout().add_categorical("id", Side::Item, 10, 2), {4});
  const std::vector<BadSetting> rows{
      {"dropout rate 1", [&] { AgeTs<Tower>(w.model, gate, McDropoutTs{1.0}); }, {"dropout rate", "[0, 1)", "got 1"}},
      {"dropout rate < 0", [&] { AgeTs<Tower>(w.model, gate, McDropoutTs{-0.1}); }, {"dropout rate", "got -0.1"}},
      {"dropout rate NaN", [&] { AgeUcb<Tower>(w.model, gate, McDropoutUcb{nan}); }, {"dropout rate", "got nan"}},
      {"UCB samples 0", [&] { AgeUcb<Tower>(w.model, gate, McDropoutUcb{0.01, 0}); },
       {"McDropoutUcb.samples", "got 0"}},
      {"lambda' < 0", [&] { AgeTs<Tower>(w.model, gate, {}, Pgd{.lambda = -1.0}); }, {"Pgd.lambda", "got -1"}},
      {"lambda' infinite", [&] { AgeTsFgm<Tower>(w.model, gate, {}, Fgm{.lambda = inf}); }, {"Fgm.lambda", "got inf"}},
      {"PGD T = 0", [&] { AgeTs<Tower>(w.model, gate, {}, Pgd{.steps = 0}); }, {"Pgd.steps", "got 0"}},
      {"PGD step scale 0", [&] { AgeTs<Tower>(w.model, gate, {}, Pgd{.step_scale = 0.0}); },
       {"Pgd.step_scale", "got 0"}},
      {"DGU gate without tower", [&] { AgeTs<Tower>(w.model, DguGate()); }, {"DguGate: tower", "got none"}},
      {"fixed threshold > 1",
       [&] { AgeScorer<Tower, McDropoutTs, Pgd, FixedThresholdGate>(w.model, FixedThresholdGate{1.5}); },
       {"FixedThresholdGate.threshold", "got 1.5"}},
      {"max_candidates 0", [&] { AgeTs<Tower>(w.model, gate).set_max_candidates(0); }, {"max_candidates", "got 0"}},
      {"max_candidates < 0", [&] { Greedy<Tower>(w.model).set_max_candidates(-3); }, {"max_candidates", "got -3"}},
      {"epsilon > 1", [&] { EpsilonGreedy<Tower>(w.model, {.epsilon = 1.5}); }, {"EpsilonGreedy.epsilon", "got 1.5"}},
      {"epsilon < 0", [&] { EpsilonGreedy<Tower>(w.model, {.epsilon = -0.5}); }, {"EpsilonGreedy.epsilon", "got -0.5"}},
      {"ensemble size 0", [&] { EnsembleTs<Tower>(std::span<const Tower>()); }, {"EnsembleTs.members", "got 0"}},
      {"UCB ensemble of 1", [&] { EnsembleUcb<Tower>(std::span<const Tower>(members).first(1)); },
       {"EnsembleUcb.members", "expected >= 2", "got 1"}},
      {"ensemble scale < 0", [&] { EnsembleUcb<Tower>(std::span<const Tower>(members), {.scale = -1.0}); },
       {"EnsembleUcb.scale", "got -1"}},
      {"gradient nu 0", [&] { GradientUcb<Tower>(w.model, {.nu = 0.0}); }, {"GradientUcb.nu", "(0, 1e+12]", "got 0"}},
      {"gradient nu < 0", [&] { GradientTs<Tower>(w.model, {.nu = -1.0}); }, {"GradientTs.nu", "got -1"}},
      {"gradient lambda 0", [&] { GradientTs<Tower>(w.model, {.lambda = 0.0}); }, {"GradientTs.lambda", "got 0"}},
      {"tower hidden size 0", [] { Tower(3, 5, {8, 0}); }, {"tower: hidden[1]", "got 0"}},
      {"tower item_dim 0", [] { Tower(3, 0, {8}); }, {"tower: item_dim", "got 0"}},
      {"DGU hidden 0", [] { make_dgu_tower(5, 0); }, {"DGU tower: hidden", "got 0"}},
      {"field dim 0", [] { FeatureLayout().add_categorical("cat", Side::Item, 10, 0); }, {"'cat'", "dim", "got 0"}},
      {"field rows 0", [] { FeatureLayout().add_multi_hot("tags", Side::User, 0, 4); }, {"'tags'", "rows", "got 0"}},
      {"embedding stddev < 0", [&] { Rng r(1); emb.initialize(r, -1.0); }, {"embedding_std", "got -1"}},
      {"embedding stddev inf", [&] { Rng r(1); emb.initialize(r, inf); }, {"embedding_std", "got inf"}},
      {"Adam lr 0", [] { TowerOptimizer<Adam>(Adam{.lr = 0.0}); }, {"adam: lr", "got 0"}},
      {"SGD lr < 0", [] { TowerOptimizer<Sgd>(Sgd{.lr = -1.0}); }, {"sgd: lr", "got -1"}},
      {"Adam lr inf", [] { TowerOptimizer<Adam>(Adam{.lr = std::numeric_limits<double>::infinity()}); },
       {"adam: lr", "got inf"}},
      {"Adam beta1 1", [] { TowerOptimizer<Adam>(Adam{.beta1 = 1.0}); }, {"adam: beta1", "got 1"}},
      {"trainer dropout 1", [&] { OnlineTrainer<Adam>(emb, Adam{}, TrainerOptions{.dropout = 1.0}); },
       {"trainer: dropout", "got 1"}},
      {"finite-difference step 0", [&] { FiniteDifferenceModel<Tower>(w.model, 0.0); },
       {"FiniteDifferenceModel.step", "got 0"}},
      {"dropout mask columns 0",
       [&] {
         Rng r(1);
         DropoutMask m;
         w.model.sample_mask(0.1, 0, r, m);
       },
       {"dropout mask: columns", "got 0"}},
  };
  for (const BadSetting& row : rows) {
    DYNAMIC_SECTION(row.name) { require_error(StatusCode::config, row.build, row.parts); }
  }
  // The impression cap is unsigned: "a cap < 0" cannot be written.
  STATIC_REQUIRE(std::is_unsigned_v<decltype(ImpressionCapGate::limit)>);
}

TEST_CASE("absurd sizes are an age::Error naming the size, never std::bad_alloc", "[validation]") {
  const std::size_t huge = 1'000'000'000'000;  // 1e12
  const std::vector<BadSetting> rows{
      {"tower of 1e12 hidden units", [&] { Tower(3, 5, {huge}); }, {"tower: layer 0 weights", "1000000000000"}},
      {"tower of 1e12 user_dim", [&] { Tower(huge, 5, {8}); }, {"tower: user_dim", "1000000000000"}},
      {"tower of 1e12 item_dim", [&] { Tower(3, huge, {8}); }, {"tower: item_dim", "1000000000000"}},
      {"tower of 2^20 x 2^20 units", [&] { Tower(3, 5, {std::size_t{1} << 20, std::size_t{1} << 20}); },
       {"tower: layer 1 weights", "1048576 x 1048576"}},
      {"embedding table of 1e12 rows",
       [&] { EmbeddingTables(FeatureLayout().add_categorical("item_id", Side::Item, huge, 8)); },
       {"'item_id'", "table", "8 x 1000000000000"}},
      {"embedding model of 1e12 rows",
       [&] { EmbeddingCtrModel(FeatureLayout().add_multi_hot("tags", Side::User, huge, 4), {8}); },
       {"'tags'", "4 x 1000000000000"}},
      {"dense field of 1e12 values", [&] { FeatureLayout().add_dense("wide", Side::Item, huge); },
       {"'wide'", "1000000000000"}},
      {"dropout mask of 1e12 columns",
       [&] {
         Rng r(1);
         DropoutMask m;
         sample_dropout_mask(std::vector<std::size_t>{8}, 0.1, static_cast<Index>(huge), r, m);
       },
       {"dropout mask layer", "8 x 1000000000000"}},
  };
  for (const BadSetting& row : rows) {
    DYNAMIC_SECTION(row.name) { require_error(StatusCode::config, row.build, row.parts); }
  }
}

TEST_CASE("dense features: NaN and infinite values are refused naming the field and the value", "[validation]") {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 10, 2).add_dense("item_stats", Side::Item, 3);
  const EmbeddingTables tables(layout);
  Vector out(3);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Row {
    const char* name;
    std::vector<float> values;
    std::vector<std::string> parts;
  };
  const std::vector<Row> rows{
      {"NaN", {0.1f, nan, 0.3f}, {"dense field 'item_stats'", "values[1]", "expected a finite value", "got nan"}},
      {"+inf", {inf, 0.2f, 0.3f}, {"dense field 'item_stats'", "values[0]", "got inf"}},
      {"-inf", {0.1f, 0.2f, -inf}, {"dense field 'item_stats'", "values[2]", "got -inf"}},
  };
  for (const Row& row : rows) {
    DYNAMIC_SECTION(row.name) {
      const SideInput item{FieldInput{{}, row.values}};
      require_error(StatusCode::input, [&] { tables.embed(Side::Item, item, out); }, row.parts);
    }
  }
  SECTION("wrong number of values") {
    const SideInput item{FieldInput{{}, {0.1f, 0.2f}}};
    require_error(StatusCode::dimension, [&] { tables.embed(Side::Item, item, out); },
                  {"dense field 'item_stats'", "expected 3, got 2"});
  }
  SECTION("an empty candidate list from raw features") {
    EmbeddingCtrModel model(layout, {4});
    ModelWorkspace ws;
    RowVector prob(0);
    const SideInput user{FieldInput{{1}, {}}};
    require_error(StatusCode::input, [&] { model.predict(user, std::span<const SideInput>(), ws, prob); },
                  {"request: items", "got 0"});
  }
}

TEST_CASE("R6B: a NUL byte in a line is a FormatError naming the column, LineError is an age::Error",
          "[validation]") {
  STATIC_REQUIRE(std::is_base_of_v<FormatError, sim::detail::LineError>);
  sim::R6bEvent event;
  const std::string good = "1 id-1 0 |user 1 |id-1";
  REQUIRE_NOTHROW(sim::parse_r6b_line(good, event));
  std::string with_nul = good;
  with_nul.insert(6, 1, '\0');  // after "1 id-1"
  CHECK_THROWS_AS(sim::parse_r6b_line(with_nul, event), sim::detail::LineError);
  CHECK_THROWS_AS(sim::parse_r6b_line(with_nul, event), FormatError);
  CHECK_THROWS_AS(sim::parse_r6b_line(with_nul, event), Error);
  CHECK_THROWS_WITH(sim::parse_r6b_line(with_nul, event),
                    Catch::Contains("NUL byte at column 7") && Catch::Contains("expected text without NUL bytes"));
  // Every other malformed line is an age::Error too.
  CHECK_THROWS_AS(sim::parse_r6b_line("x id-1 0 |user |id-1", event), FormatError);
  CHECK_THROWS_WITH(sim::parse_r6b_line("x id-1 0 |user |id-1", event),
                    Catch::Contains("timestamp") && Catch::Contains("got 'x'"));
}

#ifdef AGE_HAVE_ZLIB
TEST_CASE("R6B reader: a line with a NUL byte is refused (strict) or skipped and counted, exactly", "[validation]") {
  const std::string path = std::string(AGE_TEST_DATA_DIR) + "/fuzz-regression/r6b_file/nul_byte_ends_line_early.txt";
  SECTION("strict: FormatError naming the file, the line and the column") {
    sim::R6bReader reader(path);
    sim::R6bEvent event;
    CHECK_THROWS_AS(reader.next(event), FormatError);
    sim::R6bReader again(path);
    CHECK_THROWS_WITH(again.next(event), Catch::Contains(path + ":1: NUL byte at column 21"));
  }
  SECTION("skip_malformed: the NUL line is skipped, the next line is read whole") {
    sim::R6bReader reader(path, {.skip_malformed = true});
    sim::R6bEvent event;
    REQUIRE(reader.next(event));
    CHECK(event.timestamp == 2);
    CHECK(event.displayed == 2);
    REQUIRE(event.candidates.size() == 1);
    CHECK(event.candidates[0] == 2);
    CHECK_FALSE(reader.next(event));
    CHECK(reader.line_number() == 2);
    CHECK(reader.events() == 1);
    CHECK(reader.skipped() == 1);
    CHECK_THAT(reader.first_skipped(), Catch::Contains(":1: NUL byte at column 21"));
  }
}
#else
TEST_CASE("R6B reader NUL-byte check needs zlib", "[validation]") {
  WARN("skipped: this test binary is not linked with zlib (AGE_HAVE_ZLIB), the R6B reader is not run");
}
#endif

#ifdef AGE_HAVE_IO
namespace {
std::vector<char> file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("load_model refuses a file over max_file_bytes before reading it, and leaves it untouched",
          "[validation]") {
  const std::filesystem::path dir = std::filesystem::path(AGE_TEST_BINARY_DIR) / "validation_files";
  std::filesystem::create_directories(dir);
  const std::filesystem::path path = dir / "small_model.safetensors";
  EmbeddingCtrModel model(FeatureLayout().add_categorical("user_id", Side::User, 16, 2).add_categorical(
                              "item_id", Side::Item, 16, 2),
                          {4});
  Rng rng(5);
  model.initialize(rng);
  save_model(path, model);
  save_tower(dir / "small_tower.safetensors", model.tower());
  const std::vector<char> before = file_bytes(path);
  const auto size = static_cast<std::uint64_t>(std::filesystem::file_size(path));
  REQUIRE(size == before.size());
  REQUIRE(size > 100);

  SafetensorsReadOptions options;
  CHECK(options.max_file_bytes == (std::uint64_t{4} << 30));
  options.max_file_bytes = size - 1;
  const std::vector<std::string> parts{path.string(), "file size", "at most " + std::to_string(size - 1),
                                       "got " + std::to_string(size)};
  require_error(StatusCode::io, [&] { load_model(path, nullptr, options); }, parts);
  require_error(StatusCode::io, [&] { read_safetensors(path, options); }, parts);
  const auto tower_path = dir / "small_tower.safetensors";
  require_error(StatusCode::io, [&] { load_tower(tower_path, "tower", SafetensorsReadOptions{.max_file_bytes = 10}); },
                {tower_path.string(), "at most 10"});
  CHECK(file_bytes(path) == before);

  options.max_file_bytes = size;  // exactly at the limit: loads
  const EmbeddingCtrModel back = load_model(path, nullptr, options);
  CHECK(back.tower().weight(0) == model.tower().weight(0));
  CHECK(file_bytes(path) == before);
}

TEST_CASE("safetensors: absurd header lengths and shapes are FormatErrors", "[validation]") {
  // An 8-byte little-endian header length of 2^60 followed by a tiny header.
  std::string raw(8, '\0');
  raw[7] = '\x10';
  raw += "{}";
  const std::vector<std::uint8_t> bytes(raw.begin(), raw.end());
  require_error(StatusCode::format, [&] { parse_safetensors(bytes, "buf"); },
                {"buf", "header length 1152921504606846976", "exceeds the limit"});

  const std::string absurd =
      R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})";
  std::string file(8, '\0');
  file[0] = static_cast<char>(absurd.size());
  file += absurd;
  file += std::string(4, '\0');
  const std::vector<std::uint8_t> shaped(file.begin(), file.end());
  require_error(StatusCode::format, [&] { parse_safetensors(shaped, "buf"); }, {"tensor 't'", "shape"});
}
#else
TEST_CASE("weight-file limits need the io headers", "[validation]") {
  WARN("skipped: nlohmann_json not found, load_model's size limit not tested");
}
#endif

TEST_CASE("indexes into towers, layouts and tables out of range are age::Errors", "[validation]") {
  const World w;
  Tower tower = w.model;
  require_error(StatusCode::input, [&] { (void)tower.weight(3); }, {"tower: weight layer", "expected an index < 3", "got 3"});
  require_error(StatusCode::input, [&] { (void)w.model.bias(7); }, {"tower: bias layer", "got 7"});
  require_error(StatusCode::input, [&] { (void)w.model.in_size(4); }, {"tower: layer", "got 4"});
  FeatureLayout layout;
  layout.add_categorical("id", Side::Item, 4, 2);
  require_error(StatusCode::input, [&] { (void)layout.field(1); }, {"feature layout: field", "expected an index < 1", "got 1"});
  const EmbeddingTables tables(layout);
  require_error(StatusCode::input, [&] { (void)tables.table(2); }, {"embedding table: field", "got 2"});
  const std::vector<Tower> members(2, w.model);
  const EnsembleTs<Tower> ensemble{std::span<const Tower>(members)};
  require_error(StatusCode::input, [&] { (void)ensemble.member(2); }, {"ensemble: member", "got 2"});
}
