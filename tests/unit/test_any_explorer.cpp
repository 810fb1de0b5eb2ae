// AnyExplorer, the run-time choice of policy: a boxed policy scores bit for bit like the
// same policy called directly with a workspace of its own (over several requests, so the
// box's workspace is reused), its errors arrive as the same exception or Status, and
// observe() reaches a LearningExplorer and nothing else.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "age/explore/ablation.hpp"
#include "age/explore/any_explorer.hpp"
#include "age/explore/baselines.hpp"
#include "age/model/tower.hpp"

using namespace age;

namespace {

constexpr Index kUserDim = 4, kItemDim = 6;

struct World {
  Tower model{kUserDim, kItemDim, {16, 8}};
  Tower dgu;
  Matrix user, items;

  World() {
    Rng rng(11);
    model.initialize(rng);
    user = Matrix::Random(kUserDim, 1);
    items = Matrix::Random(kItemDim, 30);
    // A DGU at the median base score, so that about half the candidates are explored and
    // AGE-TS's scores differ from the model's.
    TowerWorkspace ws;
    RowVector base(items.cols());
    predict_probabilities(model, user, items, nullptr, ws, base);
    std::sort(base.data(), base.data() + base.size());
    const Scalar median = base[base.size() / 2];
    dgu = make_dgu_tower(kItemDim, rng, 4);
    Tower::Edit e = dgu.edit();
    e.weight(1).setZero();
    e.bias(1).setConstant(std::log(median / (1 - median)));
  }

  // Request k: the first 30 - k candidates, so that the workspaces see several sizes.
  Request request(std::uint64_t k) const { return Request{user, items.leftCols(30 - static_cast<Index>(k)), 100 + k}; }
};

bool identical(const ScoredRequest& a, const ScoredRequest& b) {
  return a.base == b.base && a.delta == b.delta && a.gate == b.gate && a.explored == b.explored &&
         a.ranking == b.ranking;
}

// Scores requests 0..5 through the box and through the unboxed policy; all identical.
template <class E>
void check_same_scores(AnyExplorer& boxed, const E& direct, const World& w) {
  typename E::Workspace ws;
  ScoredRequest a, b;
  for (std::uint64_t k = 0; k < 6; ++k) {
    boxed.score(w.request(k), a);
    direct.score(w.request(k), b, ws);
    INFO("request " << k);
    CHECK(identical(a, b));
    REQUIRE(boxed.try_score(w.request(k), a).ok());
    CHECK(identical(a, b));
  }
}

}  // namespace

TEST_CASE("A boxed Greedy and a boxed AGE-TS score exactly like the unboxed ones", "[any-explorer]") {
  const World w;
  const Greedy<Tower> greedy(w.model);
  const AgeSettings settings{.lambda = 0.5, .dropout_rate = 0.1, .seed = 3};
  const auto ts = age_ts(w.model, w.dgu, settings);

  std::unique_ptr<AnyExplorer> boxed_greedy = box(greedy);
  std::unique_ptr<AnyExplorer> boxed_ts = box(ts);
  check_same_scores(*boxed_greedy, greedy, w);
  check_same_scores(*boxed_ts, ts, w);
  CHECK_FALSE(boxed_greedy->learns());
  CHECK_FALSE(boxed_ts->learns());

  // The comparison means something: AGE-TS explored some candidates.
  ScoredRequest out;
  boxed_ts->score(w.request(0), out);
  CHECK(std::count(out.gate.begin(), out.gate.end(), std::uint8_t{1}) > 0);
  CHECK(out.explored != out.base);

  // A box built with a workspace handed in scores the same.
  std::unique_ptr<AnyExplorer> with_ws = box(ts, AgeTs<Tower>::Workspace{});
  check_same_scores(*with_ws, ts, w);

  // Errors: the policy's exception from score(), its Status from try_score().
  const Matrix wrong = Matrix::Random(kItemDim + 1, 3);
  CHECK_THROWS_AS(boxed_ts->score(Request{w.user, wrong, 0}, out), DimensionError);
  const Status s = boxed_ts->try_score(Request{w.user, wrong, 0}, out);
  CHECK(s.code() == StatusCode::dimension);
  // A box stays usable after a rejected request.
  check_same_scores(*boxed_ts, ts, w);
}

TEST_CASE("observe() through the box reaches a LearningExplorer and only that", "[any-explorer]") {
  const World w;
  GradientConfig config;
  config.nu = 0.5;
  config.seed = 5;
  GradientTs<Tower> direct(w.model, config), fresh(w.model, config);
  auto owned = std::make_unique<ExplorerBox<GradientTs<Tower>>>(GradientTs<Tower>(w.model, config));
  ExplorerBox<GradientTs<Tower>>& gbox = *owned;
  std::unique_ptr<AnyExplorer> boxed = std::move(owned);
  CHECK(boxed->learns());

  for (std::uint64_t k = 0; k < 4; ++k) {
    boxed->observe(w.request(k), static_cast<Index>(k), k % 2 == 0);
    direct.observe(w.request(k), static_cast<Index>(k), k % 2 == 0);
  }
  CHECK(gbox.explorer().observations() == 4);
  CHECK(direct.observations() == 4);
  // The boxed policy learned what the direct one learned: the same scores, which differ
  // from those of a policy that observed nothing.
  check_same_scores(*boxed, direct, w);
  ScoredRequest a, b;
  GradientTs<Tower>::Workspace ws;
  boxed->score(w.request(0), a);
  fresh.score(w.request(0), b, ws);
  CHECK(a.delta != b.delta);
  // A bad shown index is the policy's error.
  CHECK_THROWS_AS(boxed->observe(w.request(0), 99, true), InputError);

  // For a policy that does not learn, observe() is a no-op.
  std::unique_ptr<AnyExplorer> greedy = box(Greedy<Tower>(w.model));
  greedy->observe(w.request(0), 99, true);
  CHECK_FALSE(greedy->learns());
}
