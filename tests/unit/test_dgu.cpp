// The Dynamic Gating Unit and the other gates ((M15)-(M18), METHOD.md "Dynamic Gating Unit").
#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

#include "age/explore/gate.hpp"
#include "age/explore/scorer.hpp"
#include "age/model/embedding_model.hpp"
#include "age/train/trainer.hpp"

using namespace age;

namespace {
// A DGU whose output is sigmoid(b) for every item: zero weights, output bias b.
Tower constant_dgu(std::size_t item_dim, Scalar b) {
  Tower t = make_dgu_tower(item_dim, 4);
  t.edit().bias(1).setConstant(b);
  return t;
}

SideInput one_id(std::uint64_t id) { return SideInput{FieldInput{{id}, {}}}; }
}  // namespace

TEST_CASE("the DGU learns each item's average CTR over users, trained jointly by the online trainer", "[dgu]") {
  // 12 items with known CTR c_i; a user multiplies it by 0.5 or 1.5 (half the users each),
  // so the average over users is exactly c_i while the main model sees user effects.
  const std::size_t n_items = 12, n_users = 16;
  std::vector<double> ctr(n_items);
  for (std::size_t i = 0; i < n_items; ++i) ctr[i] = 0.02 + 0.025 * static_cast<double>(i);

  FeatureLayout layout;
  layout.add_categorical("user", Side::User, 4096, 4).add_categorical("item", Side::Item, 4096, 4);
  std::set<std::size_t> rows;
  for (std::size_t i = 0; i < n_items; ++i) rows.insert(hash_row("item", i, 4096));
  REQUIRE(rows.size() == n_items);  // no two items share an embedding row

  EmbeddingCtrModel model(layout, {16});
  Rng init(1);
  model.initialize(init, 0.5);  // distinct item embeddings from the start
  Tower dgu = make_dgu_tower(model.item_dim(), 16);
  dgu.initialize(init);

  OnlineTrainer<Adam> trainer(model, Adam{.lr = 1e-2}, TrainerOptions{.dropout = 0.01, .seed = 3});
  trainer.attach_item_tower(dgu, Adam{.lr = 1e-2});
  Rng data(2);
  std::vector<Sample> batch(128);
  auto draw_batch = [&] {
    for (auto& s : batch) {
      const std::uint64_t u = data.below(n_users), i = data.below(n_items);
      const double p = ctr[i] * (u % 2 == 0 ? 0.5 : 1.5);
      s = Sample{one_id(u), one_id(i), data.bernoulli(p) ? 1.0f : 0.0f};
    }
  };
  for (int step = 0; step < 700; ++step) {
    draw_batch();
    trainer.step(batch);
  }
  // A smaller step to settle the estimate (re-attaching resets the DGU's optimizer state).
  trainer.attach_item_tower(dgu, Adam{.lr = 1e-3});
  for (int step = 0; step < 1000; ++step) {
    draw_batch();
    trainer.step(batch);
  }

  Vector user;
  Matrix items;
  std::vector<SideInput> item_inputs;
  for (std::size_t i = 0; i < n_items; ++i) item_inputs.push_back(one_id(i));
  model.embed_request(one_id(0), item_inputs, user, items);
  const DguGate gate(dgu);
  DguGate::Workspace ws;
  RowVector average(static_cast<Index>(n_items));
  gate.average_ctr(items, ws, average);
  // 218k samples, ~18k per item: the item's click frequency has a standard error of at
  // most 0.005; the tolerance leaves room for the optimiser's noise.
  double mean_abs_error = 0.0;
  for (std::size_t i = 0; i < n_items; ++i) {
    INFO("item " << i << ": true average CTR " << ctr[i] << ", DGU " << average[static_cast<Index>(i)]);
    CHECK(std::abs(average[static_cast<Index>(i)] - ctr[i]) < 0.03);
    mean_abs_error += std::abs(average[static_cast<Index>(i)] - ctr[i]) / static_cast<double>(n_items);
  }
  CHECK(mean_abs_error < 0.015);
  // It follows the items' differences, not just the overall rate (which spans 0.02..0.295).
  double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < n_items; ++i) {
    mx += ctr[i] / n_items;
    my += average[static_cast<Index>(i)] / n_items;
  }
  for (std::size_t i = 0; i < n_items; ++i) {
    const double dx = ctr[i] - mx, dy = average[static_cast<Index>(i)] - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  CHECK(sxy / std::sqrt(sxx * syy) > 0.98);
}

TEST_CASE("the DGU gate opens when base pCTR > DGU output, strictly", "[dgu]") {
  Rng rng(4);
  Tower model(2, 3, {8});
  model.initialize(rng);
  const Tower dgu = constant_dgu(3, -1.0f);
  const Scalar average = sigmoid(-1.0f);
  const Matrix user = Matrix::Zero(2, 1), items = Matrix::Random(3, 3);
  RowVector base(3);
  base << average - 0.01f, average, average + 0.01f;
  std::vector<std::uint8_t> open(3);
  DguGate::Workspace ws;

  DguGate(dgu).evaluate(model, Request{user, items, 0}, base, ws, open);
  CHECK(open == std::vector<std::uint8_t>{0, 0, 1});
  DguGate(dgu, /*open_on_equal=*/true).evaluate(model, Request{user, items, 0}, base, ws, open);
  CHECK(open == std::vector<std::uint8_t>{0, 1, 1});

  CHECK_THROWS_WITH(DguGate().validate(), Catch::Contains("DguGate: tower"));
  const Tower with_user(1, 3, {4});
  CHECK_THROWS_AS(DguGate(with_user).validate(), DimensionError);
  const Tower too_wide = constant_dgu(5, 0.0f);
  CHECK_THROWS_WITH(DguGate(too_wide).validate(model),
                    Catch::Contains("item_dim") && Catch::Contains("expected 3, got 5"));
}

TEST_CASE("a closed gate returns exactly the base score, an open one explores", "[dgu]") {
  Rng rng(6);
  Tower model(3, 4, {16, 8});
  model.initialize(rng);
  const Index n = 40;
  Matrix user(3, 1), items(4, n);
  for (Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<Scalar>(rng.normal());
  for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
  TowerWorkspace model_ws;
  RowVector base(n);
  predict_probabilities(model, user, items, nullptr, model_ws, base);
  // A DGU at the median base score: about half the candidates open.
  RowVector sorted = base;
  std::sort(sorted.data(), sorted.data() + n);
  const Scalar median = sorted[n / 2];
  const Tower dgu = constant_dgu(4, std::log(median / (1 - median)));

  const AgeTs<Tower> scorer(model, DguGate(dgu), McDropoutTs{0.2}, Pgd{.lambda = 2.0}, 17);
  const ScoredRequest out = scorer.score(Request{user, items, 99});
  int closed = 0, moved = 0;
  for (Index i = 0; i < n; ++i) {
    const bool open = out.gate[static_cast<std::size_t>(i)] != 0;
    CHECK(open == (base[i] > sigmoid(std::log(median / (1 - median)))));
    CHECK(out.base[i] == base[i]);
    if (!open) {
      ++closed;
      CHECK(out.explored[i] == out.base[i]);  // bit for bit
    } else if (out.explored[i] != out.base[i]) {
      ++moved;
      CHECK((out.explored[i] > out.base[i]) == (out.delta[i] > 0));
    }
  }
  CHECK(closed >= 15);
  CHECK(moved >= 15);
}

TEST_CASE("fixed threshold, impression cap, always-open and all-of gates", "[dgu]") {
  Rng rng(4);
  Tower model(2, 3, {8});
  model.initialize(rng);
  const Matrix user = Matrix::Zero(2, 1), items = Matrix::Random(3, 4);
  RowVector base(4);
  base << 0.004f, 0.01f, 0.015f, 0.03f;
  std::vector<std::uint8_t> open(4);
  const std::vector<std::uint64_t> shown{0, 2999, 3000, 10};
  const Request request{user, items, 1, shown};

  FixedThresholdGate::Workspace none;
  FixedThresholdGate{0.01}.evaluate(model, request, base, none, open);
  CHECK(open == std::vector<std::uint8_t>{0, 0, 1, 1});  // strict: 0.01 stays closed
  FixedThresholdGate{0.005}.evaluate(model, request, base, none, open);
  CHECK(open == std::vector<std::uint8_t>{0, 1, 1, 1});
  CHECK_THROWS_AS(FixedThresholdGate{1.5}.validate(), ConfigError);

  ImpressionCapGate::Workspace cap_ws;
  ImpressionCapGate{}.evaluate(model, request, base, cap_ws, open);
  CHECK(open == std::vector<std::uint8_t>{1, 1, 0, 1});  // open while shown < 3000
  CHECK_THROWS_WITH(ImpressionCapGate{}.evaluate(model, Request{user, items, 1}, base, cap_ws, open),
                    Catch::Contains("request.impressions") && Catch::Contains("expected 4, got 0"));

  AlwaysOpen::Workspace always_ws;
  AlwaysOpen{}.evaluate(model, request, base, always_ws, open);
  CHECK(open == std::vector<std::uint8_t>{1, 1, 1, 1});

  using Both = AllOf<FixedThresholdGate, ImpressionCapGate>;
  Both::Workspace both_ws;
  Both(FixedThresholdGate{0.005}, ImpressionCapGate{3000}).evaluate(model, request, base, both_ws, open);
  CHECK(open == std::vector<std::uint8_t>{0, 1, 0, 1});
  static_assert(GatePolicy<AllOf<DguGate, ImpressionCapGate>, Tower>);
  CHECK_THROWS_AS((AllOf<DguGate, AlwaysOpen>().validate()), ConfigError);  // the DGU has no tower
}

TEST_CASE("make_dgu_tower: zero weights for loading, random weights for training", "[dgu]") {
  const Tower for_loading = make_dgu_tower(6, 4);
  CHECK(for_loading.user_dim() == 0);
  CHECK(for_loading.item_dim() == 6);
  CHECK(for_loading.weight(0).isZero());
  Rng rng(3);
  const Tower for_training = make_dgu_tower(6, rng, 4);
  CHECK(for_training.hidden() == std::vector<std::size_t>{4});
  CHECK_FALSE(for_training.weight(0).isZero());
  CHECK(for_training.weight(0).cwiseAbs().maxCoeff() <= 1.0f / std::sqrt(6.0f));  // nn.Linear bound
}
