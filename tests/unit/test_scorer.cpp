// The AGE scorer end to end (METHOD.md, "One request, step by step"): breakdown, ranking,
// top-k, reproducibility per request id and across threads, validation, the ablation arms,
// and no allocation in steady state.

// First: configures Eigen and replaces operator new (one file per binary).
#include "allocation_watch.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <thread>
#include <vector>

#include "age/explore/ablation.hpp"
#include "age/explore/scorer.hpp"
#include "age/model/embedding_model.hpp"
#include "explore_models.hpp"

using namespace age;

using age_test::allocations_during;

namespace {
struct World {
  EmbeddingCtrModel model;
  Tower dgu;
  std::vector<SideInput> item_inputs;
  SideInput user_input;
  Vector user;
  Matrix items;

  World() {
    FeatureLayout layout;
    layout.add_categorical("user_id", Side::User, 1000, 8)
        .add_multi_hot("user_tags", Side::User, 100, 4, Pooling::Mean)
        .add_categorical("item_id", Side::Item, 1000, 8)
        .add_dense("item_stats", Side::Item, 2);
    model = EmbeddingCtrModel(layout, {32, 16});
    Rng rng(1);
    model.initialize(rng, 0.5);
    user_input = SideInput{FieldInput{{42}, {}}, FieldInput{{1, 5, 9}, {}}};
    for (std::uint64_t i = 0; i < 24; ++i)
      item_inputs.push_back(SideInput{FieldInput{{100 + i}, {}},
                                      FieldInput{{}, {static_cast<float>(i) / 24.0f, 0.5f}}});
    model.embed_request(user_input, item_inputs, user, items);
    // A DGU at the median base score, so that about half the candidates are explored.
    TowerWorkspace ws;
    RowVector base(items.cols());
    predict_probabilities(model, user, items, nullptr, ws, base);
    std::sort(base.data(), base.data() + base.size());
    const Scalar median = base[base.size() / 2];
    dgu = make_dgu_tower(model.item_dim(), 8);
    dgu.edit().bias(1).setConstant(std::log(median / (1 - median)));
  }

  Request request(std::uint64_t id) const { return Request{user, items, id}; }
};

bool identical(const ScoredRequest& a, const ScoredRequest& b) {
  return a.base == b.base && a.delta == b.delta && a.gate == b.gate && a.explored == b.explored &&
         a.ranking == b.ranking;
}
}  // namespace

static_assert(Explorer<AgeTs<EmbeddingCtrModel>>);
static_assert(Explorer<AgeUcb<Tower>>);
static_assert(Explorer<AgeTsFgm<EmbeddingCtrModel>> && Explorer<AgeUcbFgm<EmbeddingCtrModel>>);
static_assert(std::same_as<AgeScorer<Tower>, AgeScorer<Tower, McDropoutTs, Pgd, DguGate>>);

TEST_CASE("AGE-TS end to end: breakdown, explored scores, ranking and top-k", "[scorer]") {
  const World w;
  const AgeTs<EmbeddingCtrModel> scorer(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 20}, 5);
  const Request request = w.request(77);
  const ScoredRequest out = scorer.score(request);
  const Index n = w.items.cols();
  REQUIRE(out.size() == n);

  // 1. base = the model's prediction from the raw features.
  ModelWorkspace mws;
  RowVector predicted(n);
  w.model.predict(w.user_input, w.item_inputs, mws, predicted);
  CHECK((out.base - predicted).cwiseAbs().maxCoeff() < 1e-6f);

  // 2. delta = MC-Dropout TS with the request's uncertainty stream.
  RowVector delta(n);
  McDropoutTs::Workspace<DefaultEngine<EmbeddingCtrModel>> ts_ws;
  Rng u_rng = scorer.uncertainty_rng(77);
  test::compute_uncertainty(McDropoutTs{0.1}, w.model, w.user, w.items, out.base, u_rng, ts_ws, delta);
  // The scorer's masked pass reuses the no-dropout one (request passes): float rounding.
  CHECK((out.delta - delta).cwiseAbs().maxCoeff() < 1e-6f);
  CHECK(out.delta.minCoeff() < 0);  // signed
  CHECK(out.delta.maxCoeff() > 0);

  // 3. gate = DGU; 4. explored = PGD on the open candidates, base on the closed ones.
  std::vector<std::uint8_t> gate(static_cast<std::size_t>(n));
  DguGate::Workspace g_ws;
  DguGate(w.dgu).evaluate(w.model, request, out.base, g_ws, gate);
  CHECK(out.gate == gate);
  MoveWorkspace m_ws;
  Rng p_rng = scorer.perturbation_rng(77);
  const RowVector all_moved = test::explore(Pgd{.lambda = 20}, w.model, w.user, w.items, out.delta, p_rng, m_ws).explored;
  int open = 0;
  for (Index i = 0; i < n; ++i) {
    if (gate[static_cast<std::size_t>(i)]) {
      ++open;
      CHECK(out.explored[i] == Approx(all_moved[i]).margin(1e-6));
      CHECK(out.explored[i] != out.base[i]);
    } else {
      CHECK(out.explored[i] == out.base[i]);
    }
  }
  CHECK(open >= 6);
  CHECK(open <= 18);

  // Ranking: a permutation, by explored score, best first; top-k is its head.
  std::vector<Index> sorted = out.ranking;
  std::sort(sorted.begin(), sorted.end());
  for (Index i = 0; i < n; ++i) CHECK(sorted[static_cast<std::size_t>(i)] == i);
  for (std::size_t r = 1; r < out.ranking.size(); ++r)
    CHECK(out.explored[out.ranking[r - 1]] >= out.explored[out.ranking[r]]);
  ScoredRequest reranked = out;
  reranked.rank();
  CHECK(reranked.ranking == out.ranking);
  const auto top = out.top_k(3);
  REQUIRE(top.size() == 3);
  CHECK(std::equal(top.begin(), top.end(), out.ranking.begin()));
  CHECK(out.best() == out.ranking.front());
  CHECK(out.top_k(100).size() == static_cast<std::size_t>(n));
  // Exploration changes the order here (otherwise it would be pointless to test).
  std::vector<Index> by_base(static_cast<std::size_t>(n));
  std::iota(by_base.begin(), by_base.end(), Index{0});
  std::stable_sort(by_base.begin(), by_base.end(), [&](Index a, Index b) { return out.base[a] > out.base[b]; });
  INFO("base " << out.base << "\nexplored " << out.explored);
  CHECK(by_base != out.ranking);
}

TEST_CASE("the same request id explores identically, another id or seed explores differently", "[scorer]") {
  const World w;
  const AgeTs<EmbeddingCtrModel> scorer(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.5}, 5);
  AgeTs<EmbeddingCtrModel>::Workspace ws;
  ScoredRequest a, b, c;
  scorer.score(w.request(3), a, ws);
  scorer.score(w.request(4), c, ws);  // something else in between, same workspace
  scorer.score(w.request(3), b, ws);
  CHECK(identical(a, b));
  CHECK(identical(a, scorer.score(w.request(3))));  // a fresh workspace
  CHECK(a.delta != c.delta);
  const AgeTs<EmbeddingCtrModel> reseeded(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.5}, 6);
  CHECK(reseeded.score(w.request(3)).delta != a.delta);
}

TEST_CASE("two threads score the same requests identically", "[scorer]") {
  const World w;
  const auto scorer = age_ucb(w.model, w.dgu, AgeSettings{.lambda = 0.5, .dropout_rate = 0.1, .seed = 9});
  const int requests = 48;
  std::vector<ScoredRequest> reference(requests);
  {
    decltype(scorer)::Workspace ws;
    for (int r = 0; r < requests; ++r) scorer.score(w.request(static_cast<std::uint64_t>(r)), reference[r], ws);
  }
  std::vector<ScoredRequest> forward(requests), backward(requests);
  std::thread t1([&] {
    decltype(scorer)::Workspace ws;
    for (int r = 0; r < requests; ++r) scorer.score(w.request(static_cast<std::uint64_t>(r)), forward[r], ws);
  });
  std::thread t2([&] {
    decltype(scorer)::Workspace ws;
    for (int r = requests - 1; r >= 0; --r) scorer.score(w.request(static_cast<std::uint64_t>(r)), backward[r], ws);
  });
  t1.join();
  t2.join();
  for (int r = 0; r < requests; ++r) {
    INFO("request " << r);
    CHECK(identical(forward[r], reference[r]));
    CHECK(identical(backward[r], reference[r]));
    CHECK(reference[r].delta.minCoeff() >= 0);  // UCB
  }
}

TEST_CASE("invalid settings and inputs are rejected with the field named", "[scorer]") {
  const World w;
  using Ts = AgeTs<EmbeddingCtrModel>;
  const DguGate gate(w.dgu);
  CHECK_THROWS_WITH(Ts(w.model, gate, {}, Pgd{.lambda = -1e-3}), Catch::Contains("Pgd.lambda"));
  CHECK_THROWS_WITH(Ts(w.model, gate, McDropoutTs{1.0}), Catch::Contains("dropout rate"));
  CHECK_THROWS_WITH(Ts(w.model, gate, {}, Pgd{.steps = 0}), Catch::Contains("Pgd.steps"));
  CHECK_THROWS_AS(AgeUcb<EmbeddingCtrModel>(w.model, gate, McDropoutUcb{.samples = 0}), ConfigError);
  CHECK_THROWS_AS(Ts(w.model), ConfigError);  // a DGU gate needs its tower
  const Tower wrong = make_dgu_tower(3);
  CHECK_THROWS_AS(Ts(w.model, DguGate(wrong)), DimensionError);

  const Ts scorer(w.model, gate);
  const Matrix bad_items = Matrix::Zero(w.items.rows() + 1, 3);
  CHECK_THROWS_WITH(scorer.score(Request{w.user, bad_items, 1}),
                    Catch::Contains("item_dim") && Catch::Contains("expected 10, got 11"));
  const Matrix bad_user = Matrix::Zero(3, 1);
  CHECK_THROWS_AS(scorer.score(Request{bad_user, w.items, 1}), DimensionError);
  const Matrix no_items(w.items.rows(), 0);
  CHECK_THROWS_AS(scorer.score(Request{w.user, no_items, 1}), InputError);
  const std::vector<std::uint64_t> too_few(3, 0);
  CHECK_THROWS_WITH(scorer.score(Request{w.user, w.items, 1, too_few}),
                    Catch::Contains("impressions") && Catch::Contains("expected 24, got 3"));
}

TEST_CASE("the paper's ablation arms build and behave as configured", "[scorer]") {
  const World w;
  const AgeSettings s{.lambda = 0.5, .dropout_rate = 0.1, .seed = 2};
  const Request request = w.request(11);
  const ScoredRequest full = age_ts(w.model, w.dgu, s).score(request);

  const ScoredRequest no_gate = age_ts_without_gate(w.model, s).score(request);
  CHECK(std::all_of(no_gate.gate.begin(), no_gate.gate.end(), [](auto g) { return g == 1; }));
  CHECK(no_gate.delta == full.delta);  // same uncertainty stream

  for (const double t : {0.005, 0.01, 0.02}) {
    const ScoredRequest fixed = age_ts_fixed_threshold(w.model, t, s).score(request);
    for (Index i = 0; i < fixed.size(); ++i)
      CHECK((fixed.gate[static_cast<std::size_t>(i)] != 0) == (static_cast<double>(fixed.base[i]) > t));
  }

  const ScoredRequest no_delta = age_ts_without_delta(w.model, w.dgu, s).score(request);
  CHECK(no_delta.gate == full.gate);
  CHECK(no_delta.delta != full.delta);

  const ScoredRequest no_dir = age_ts_without_direction(w.model, w.dgu, s).score(request);
  CHECK(no_dir.delta == full.delta);
  CHECK(no_dir.explored != full.explored);

  const ScoredRequest fgm = age_ts_fgm(w.model, w.dgu, s).score(request);
  CHECK(fgm.delta == full.delta);
  const ScoredRequest ucb_fgm = age_ucb_fgm(w.model, w.dgu, s).score(request);
  CHECK(ucb_fgm.delta.minCoeff() >= 0);
  const ScoredRequest ucb_no_gate = age_ucb_without_gate(w.model, s).score(request);
  CHECK(ucb_no_gate.delta == ucb_fgm.delta);

  const auto capped = age_ts_impression_capped(w.model, w.dgu, 3000, s);
  std::vector<std::uint64_t> shown(24, 10);
  shown[0] = shown[1] = 5000;
  const ScoredRequest cap = capped.score(Request{w.user, w.items, 11, shown});
  CHECK(cap.gate[0] == 0);
  CHECK(cap.gate[1] == 0);
  for (std::size_t i = 2; i < 24; ++i) CHECK(cap.gate[i] == full.gate[i]);
  CHECK_THROWS_AS(capped.score(request), InputError);  // counts missing
}

TEST_CASE("whole-input perturbation and per-candidate users go through the scorer", "[scorer]") {
  const World w;
  const AgeTsWithoutGate<EmbeddingCtrModel> items_only(w.model, {}, McDropoutTs{0.1}, Pgd{.lambda = 0.5}, 1);
  // The whole input moves on the plain engine (the request passes move the item part only).
  const AgeScorer<EmbeddingCtrModel, McDropoutTs, Pgd, AlwaysOpen, PlainEngine<EmbeddingCtrModel>> whole(
      w.model, {}, McDropoutTs{0.1}, Pgd{.lambda = 0.5, .target = PerturbTarget::whole_input}, 1);
  const ScoredRequest a = items_only.score(w.request(5));
  const ScoredRequest b = whole.score(w.request(5));
  // Same uncertainty stream; items_only reuses its no-dropout pass (request passes) and
  // whole does not, hence float rounding.
  CHECK((a.delta - b.delta).cwiseAbs().maxCoeff() < 1e-6f);
  CHECK(a.explored != b.explored);
  // One user column per candidate, all equal to the shared one: the same scores.
  const Matrix users = w.user.replicate(1, w.items.cols());
  const ScoredRequest c = whole.score(Request{users, w.items, 5});
  CHECK((c.explored - b.explored).cwiseAbs().maxCoeff() < 1e-6f);
  // Per-candidate users with a closed gate on some candidates (the gathered path).
  const AgeTs<EmbeddingCtrModel> gated(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.5}, 1);
  const ScoredRequest d = gated.score(Request{users, w.items, 5});
  const ScoredRequest e = gated.score(w.request(5));
  CHECK(d.gate == e.gate);
  CHECK((d.explored - e.explored).cwiseAbs().maxCoeff() < 1e-6f);
}


TEST_CASE("the scorer and its policies allocate nothing once warmed up", "[scorer]") {
  // A model whose own passes allocate nothing, so that what is measured is the scorer, the
  // uncertainty, perturbation and gate policies.
  Rng rng(12);
  Vector b(6), a(6), c(3);
  for (Index j = 0; j < 6; ++j) {
    b[j] = static_cast<Scalar>(rng.normal());
    a[j] = static_cast<Scalar>(rng.uniform(0.5, 2.0));
  }
  c.setConstant(0.1f);
  const test::MaskedQuadraticModel model(b, a, c);
  const Matrix user = Matrix::Ones(3, 1);
  Matrix items(6, 30);
  for (Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<Scalar>(rng.normal());
  using M = test::MaskedQuadraticModel;
  AgeScorer<M, McDropoutTs, Pgd, FixedThresholdGate> ts(model, {0.5}, McDropoutTs{0.2}, Pgd{.lambda = 0.5}, 5);
  AgeScorer<M, McDropoutUcb, Fgm, AlwaysOpen> ucb(model, {}, McDropoutUcb{0.2}, Fgm{.lambda = 0.5}, 5);
  AgeScorer<M, GaussianNoise, RandomDirection, AllOf<FixedThresholdGate, AlwaysOpen>> ablation(
      model, {FixedThresholdGate{0.5}, AlwaysOpen{}}, GaussianNoise{0.2}, RandomDirection{.lambda = 0.5}, 5);
  decltype(ts)::Workspace ts_ws;
  decltype(ucb)::Workspace ucb_ws;
  decltype(ablation)::Workspace ab_ws;
  ScoredRequest out;
  auto score_all = [&](std::uint64_t id) {
    ts.score(Request{user, items, id}, out, ts_ws);
    ucb.score(Request{user, items, id}, out, ucb_ws);
    ablation.score(Request{user, items, id}, out, ab_ws);
  };

  SECTION("gathering the open candidates: the same request again") {
    score_all(1);  // warm-up
    CHECK(allocations_during([&] {
            for (int r = 0; r < 5; ++r) score_all(1);
          }) == 0);
  }
  SECTION("without gathering: any request of the same size") {
    ts.set_gather_open(false);
    ablation.set_gather_open(false);
    score_all(1);
    CHECK(allocations_during([&] {
            for (std::uint64_t id = 2; id < 30; ++id) score_all(id);
          }) == 0);
    // The same scores as with gathering, up to the rounding of a differently sized batch.
    ScoredRequest gathered;
    ts.score(Request{user, items, 7}, out, ts_ws);
    AgeScorer<M, McDropoutTs, Pgd, FixedThresholdGate>(model, {0.5}, McDropoutTs{0.2}, Pgd{.lambda = 0.5}, 5)
        .score(Request{user, items, 7}, gathered, ts_ws);
    CHECK(out.gate == gathered.gate);
    CHECK((out.explored - gathered.explored).cwiseAbs().maxCoeff() < 1e-6f);
  }
}

TEST_CASE("the library's model allocates nothing once warmed up", "[scorer]") {
  const World w;
  ScoredRequest out;
  SECTION("AGE-UCB, forward passes only") {
    const AgeScorer<EmbeddingCtrModel, McDropoutUcb, NoPerturbation, DguGate> ucb(w.model, DguGate(w.dgu),
                                                                                  McDropoutUcb{0.1});
    decltype(ucb)::Workspace ws;
    ucb.score(w.request(1), out, ws);
    CHECK(allocations_during([&] {
            for (std::uint64_t id = 2; id < 10; ++id) ucb.score(w.request(id), out, ws);
          }) == 0);
    CHECK(out.explored == out.base);
  }
  SECTION("AGE-TS with PGD: input gradients and moved passes too") {
    AgeTs<EmbeddingCtrModel> ts(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.5});
    ts.set_gather_open(false);
    decltype(ts)::Workspace ws;
    ts.score(w.request(1), out, ws);
    CHECK(allocations_during([&] {
            for (std::uint64_t id = 2; id < 10; ++id) ts.score(w.request(id), out, ws);
          }) == 0);
  }
}

namespace {
// A model's plain CtrModel passes without its request passes: a scorer over it takes the
// plain path, which the request-pass path must reproduce.
template <class M>
struct PlainPasses {
  using Workspace = typename M::Workspace;
  using Mask = typename M::Mask;
  const M* model;

  std::size_t user_dim() const { return model->user_dim(); }
  std::size_t item_dim() const { return model->item_dim(); }
  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    model->logits(user, items, mask, ws, out);
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    model->probability_gradient(user, items, mask, ws, prob, d_items, d_user);
  }
  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const { model->sample_mask(p, columns, rng, mask); }
};

static_assert(CtrModel<PlainPasses<EmbeddingCtrModel>> && !RequestPassModel<PlainPasses<EmbeddingCtrModel>>);
static_assert(AgeTs<EmbeddingCtrModel>::uses_request_passes && AgeUcbFgm<Tower>::uses_request_passes);
static_assert(!AgeTs<PlainPasses<EmbeddingCtrModel>>::uses_request_passes);
static_assert(has_request_passes_v<Tower> && !has_request_passes_v<PlainPasses<EmbeddingCtrModel>>);
// Every optional shortcut of the tower reaches the engine.
static_assert(RequestPassEngine<EmbeddingCtrModel>::masked_first_pass &&
              RequestPassEngine<EmbeddingCtrModel>::normalized_moves);
// A policy written against the engine concept takes the request passes too: the fast path
// depends on the model only (the scorer's engine), not on which policies are plugged in.
static_assert(AgeScorer<Tower, GaussianNoise, RandomDirection, AlwaysOpen>::uses_request_passes);

// Scores `request` with the request-pass scorer and with the same scorer over the plain
// passes; both, with and without gathering the open candidates, must agree.
template <class U, class P, class G>
void check_same_as_plain(const World& w, const G& gate, const U& u, const P& p, const Request& request) {
  using Plain = PlainPasses<EmbeddingCtrModel>;
  const Plain plain{&w.model};
  for (bool gather : {true, false}) {
    AgeScorer<EmbeddingCtrModel, U, P, G> fast(w.model, gate, u, p, 21);
    AgeScorer<Plain, U, P, G> reference(plain, gate, u, p, 21);
    fast.set_gather_open(gather);
    reference.set_gather_open(gather);
    const ScoredRequest a = fast.score(request), b = reference.score(request);
    INFO("gather " << gather << "\nfast      " << a.explored << "\nreference " << b.explored);
    // The same no-dropout pass (the request passes sum the output layer in another order).
    CHECK((a.base - b.base).cwiseAbs().maxCoeff() < 1e-6f);
    CHECK(a.gate == b.gate);
    CHECK((a.delta - b.delta).cwiseAbs().maxCoeff() < 1e-6f);
    CHECK((a.explored - b.explored).cwiseAbs().maxCoeff() < 1e-6f);
    for (Index i = 0; i < a.size(); ++i)
      if (!a.gate[static_cast<std::size_t>(i)]) CHECK(a.explored[i] == a.base[i]);
  }
}
}  // namespace

TEST_CASE("the request passes give the plain path's scores", "[scorer]") {
  const World w;
  const DguGate dgu(w.dgu);
  const Request request = w.request(31);
  SECTION("AGE-TS with PGD, FGM, a random PGD start and per-candidate masks") {
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, Pgd{.lambda = 5}, request);
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, Fgm{.lambda = 5}, request);
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, Pgd{.lambda = 5, .steps = 4, .random_start = 0.5}, request);
    check_same_as_plain(w, dgu, McDropoutTs{.rate = 0.1, .per_candidate_masks = true}, Fgm{.lambda = 5}, request);
  }
  SECTION("AGE-UCB, square root, every candidate open") {
    check_same_as_plain(w, AlwaysOpen{}, McDropoutUcb{.rate = 0.1, .samples = 7}, Fgm{.lambda = 50}, request);
    check_same_as_plain(w, dgu, McDropoutUcb{.rate = 0.3, .samples = 5, .sqrt = true}, Pgd{.lambda = 2}, request);
  }
  SECTION("ablations: noise for delta, a random direction, no move") {
    check_same_as_plain(w, dgu, GaussianNoise{.rate = 0.1}, Pgd{.lambda = 5}, request);
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, RandomDirection{.lambda = 5}, request);
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, NoPerturbation{}, request);
  }
  SECTION("per-candidate users") {
    const Matrix users = w.user.replicate(1, w.items.cols());
    check_same_as_plain(w, dgu, McDropoutTs{0.1}, Pgd{.lambda = 5}, Request{users, w.items, 31});
  }
  SECTION("the whole input moves: only an engine that moves the user part takes it") {
    const Pgd whole{.lambda = 5, .target = PerturbTarget::whole_input};
    CHECK(moves_user(whole));
    CHECK_THROWS_AS((AgeTs<EmbeddingCtrModel>(w.model, dgu, McDropoutTs{0.1}, whole)), ConfigError);
    CHECK_THROWS_WITH((AgeTs<EmbeddingCtrModel>(w.model, dgu, McDropoutTs{0.1}, whole)),
                      Catch::Contains("whole_input") && Catch::Contains("PlainEngine"));
    // PlainEngine over the model with request passes gives what the plain-only model gives.
    const PlainPasses<EmbeddingCtrModel> plain{&w.model};
    AgeScorer<EmbeddingCtrModel, McDropoutTs, Pgd, DguGate, PlainEngine<EmbeddingCtrModel>> on_plain(
        w.model, dgu, McDropoutTs{0.1}, whole, 21);
    AgeTs<PlainPasses<EmbeddingCtrModel>> reference(plain, dgu, McDropoutTs{0.1}, whole, 21);
    const ScoredRequest a = on_plain.score(request), b = reference.score(request);
    CHECK(a.explored == b.explored);
    CHECK(a.delta == b.delta);
    int moved = 0;
    for (Index i = 0; i < a.size(); ++i) moved += a.explored[i] != a.base[i] ? 1 : 0;
    CHECK(moved > 0);
  }
}

TEST_CASE("warmed up once, scoring allocates nothing whatever the number of open candidates", "[scorer]") {
  // Gathering the open candidates (the default): the number of open candidates changes
  // from request to request; the request passes' buffers are sized for all N up front.
  // (N itself stays fixed: ScoredRequest's vectors are resized to N.)
  const World w;
  const Index n = w.items.cols();
  Rng rng(17);
  std::vector<Matrix> requests;
  std::vector<Index> opened;
  AgeTs<EmbeddingCtrModel> ts(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Pgd{.lambda = 0.5}, 3);
  AgeUcbFgm<EmbeddingCtrModel> ucb(w.model, DguGate(w.dgu), McDropoutUcb{0.1}, Fgm{.lambda = 0.5}, 3);
  ScoredRequest out;
  for (int r = 0; r < 12; ++r) {  // candidates drawn from the world's, with repeats
    Matrix items(w.items.rows(), n);
    for (Index j = 0; j < n; ++j) items.col(j) = w.items.col(static_cast<Index>(rng.below(static_cast<std::uint64_t>(n))));
    requests.push_back(items);
    out = ts.score(Request{w.user, items, 1});
    opened.push_back(static_cast<Index>(std::count(out.gate.begin(), out.gate.end(), 1)));
  }
  decltype(ts)::Workspace ts_ws;
  decltype(ucb)::Workspace ucb_ws;
  ts.score(Request{w.user, requests[0], 1}, out, ts_ws);  // warm-up: one request
  ucb.score(Request{w.user, requests[0], 1}, out, ucb_ws);
  CHECK(allocations_during([&] {
          for (std::size_t r = 0; r < requests.size(); ++r) {
            const Request request{w.user, requests[r], 10 + r};
            ts.score(request, out, ts_ws);
            ucb.score(request, out, ucb_ws);
          }
        }) == 0);
  std::sort(opened.begin(), opened.end());
  CHECK(std::unique(opened.begin(), opened.end()) - opened.begin() >= 4);  // the gates differed
}

TEST_CASE("ScoredRequest::rank(): descending, ties by lower index, -0 with +0, NaN last", "[scorer]") {
  const Scalar nan = std::numeric_limits<Scalar>::quiet_NaN(), inf = std::numeric_limits<Scalar>::infinity();
  ScoredRequest out;
  out.explored = RowVector(12);
  out.explored << 0.5f, nan, -0.0f, 0.25f, inf, 0.0f, -inf, 0.5f, nan, -1e-30f, 1e-30f, 0.25f;
  out.rank();
  // Written out by hand: inf; 0.5 (1, 7); 0.25 (3, 11); 1e-30; -0 and +0 tied (2, 5);
  // -1e-30; -inf; then the NaNs by index.
  const std::vector<Index> expected{4, 0, 7, 3, 11, 10, 2, 5, 9, 6, 1, 8};
  CHECK(out.ranking == expected);
  // The same order from a stable sort with an explicit comparator, on random scores with
  // many ties.
  Rng rng(21, 1);
  out.explored = RowVector(500);
  for (Index i = 0; i < 500; ++i) out.explored[i] = static_cast<Scalar>(std::floor(rng.uniform(0, 40)));
  out.rank();
  std::vector<Index> reference(500);
  std::iota(reference.begin(), reference.end(), Index{0});
  std::stable_sort(reference.begin(), reference.end(),
                   [&](Index a, Index b) { return out.explored[a] > out.explored[b]; });
  CHECK(out.ranking == reference);
  // Above 256 candidates rank() sorts by radix: the special values, ties, negative and
  // positive scores there too, against the stable sort with NaN last.
  const Scalar special[] = {nan, inf, -inf, 0.0f, -0.0f, 1e-30f, -1e-30f, 0.5f, -0.5f};
  out.explored = RowVector(700);
  for (Index i = 0; i < 700; ++i)
    out.explored[i] = i % 7 == 0 ? special[static_cast<std::size_t>(i / 7) % 9]
                                 : static_cast<Scalar>(std::floor(rng.uniform(-30, 30)) / 8);
  out.rank();
  reference.resize(700);
  std::iota(reference.begin(), reference.end(), Index{0});
  std::stable_sort(reference.begin(), reference.end(), [&](Index a, Index b) {
    const Scalar x = out.explored[a], y = out.explored[b];
    if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
    return x > y;
  });
  CHECK(out.ranking == reference);
}

TEST_CASE("the scorer's ranking is ScoredRequest::rank()'s order, ties by lower index", "[scorer]") {
  const World w;
  // Duplicated candidates score identically: ties everywhere.
  Matrix items(w.items.rows(), 3 * w.items.cols());
  items << w.items, w.items, w.items;
  const AgeTsFgm<EmbeddingCtrModel> scorer(w.model, DguGate(w.dgu), McDropoutTs{0.1}, Fgm{.lambda = 0.5}, 8);
  const ScoredRequest out = scorer.score(Request{w.user, items, 4});
  ScoredRequest reranked = out;
  reranked.rank();
  CHECK(reranked.ranking == out.ranking);
  const Index n = w.items.cols();
  for (std::size_t r = 1; r < out.ranking.size(); ++r) {
    const Index a = out.ranking[r - 1], b = out.ranking[r];
    if (out.explored[a] == out.explored[b]) CHECK(a < b);
  }
  // Many ties were broken (the base scores of the copies of a candidate are equal).
  int ties = 0;
  for (std::size_t r = 1; r < out.ranking.size(); ++r)
    ties += out.explored[out.ranking[r - 1]] == out.explored[out.ranking[r]] ? 1 : 0;
  CHECK(ties >= n / 2);
}

TEST_CASE("certified linear moves leave the scores of FGM, PGD and random starts unchanged", "[scorer]") {
  // The same world twice, one tower with Tower::set_linear_moves(false): every moved pass
  // in full. Move sizes from the paper's lambda' (all certified) to large (few certified).
  const World on;
  World off;
  off.model.tower().set_linear_moves(false);
  REQUIRE(on.model.tower().linear_moves());
  int moved = 0;
  for (double lambda : {1e-3, 0.3, 3.0}) {
    INFO("lambda' = " << lambda);
    const AgeTsFgm<EmbeddingCtrModel> fgm_on(on.model, DguGate(on.dgu), McDropoutTs{0.1}, Fgm{.lambda = lambda}, 5);
    const AgeTsFgm<EmbeddingCtrModel> fgm_off(off.model, DguGate(off.dgu), McDropoutTs{0.1}, Fgm{.lambda = lambda}, 5);
    const AgeTs<EmbeddingCtrModel> pgd_on(on.model, DguGate(on.dgu), McDropoutTs{0.1}, Pgd{.lambda = lambda}, 5);
    const AgeTs<EmbeddingCtrModel> pgd_off(off.model, DguGate(off.dgu), McDropoutTs{0.1}, Pgd{.lambda = lambda}, 5);
    const AgeTs<EmbeddingCtrModel> start_on(on.model, DguGate(on.dgu), McDropoutTs{0.1},
                                            Pgd{.lambda = lambda, .random_start = 0.5}, 5);
    const AgeTs<EmbeddingCtrModel> start_off(off.model, DguGate(off.dgu), McDropoutTs{0.1},
                                             Pgd{.lambda = lambda, .random_start = 0.5}, 5);
    // All N candidates moved (closed ones discarded) as well as the open ones gathered.
    AgeTsFgm<EmbeddingCtrModel> fgm_all(on.model, DguGate(on.dgu), McDropoutTs{0.1}, Fgm{.lambda = lambda}, 5);
    fgm_all.set_gather_open(false);
    for (std::uint64_t id = 1; id <= 4; ++id) {
      const ScoredRequest a = fgm_on.score(on.request(id)), b = fgm_off.score(off.request(id));
      CHECK((fgm_all.score(on.request(id)).explored - b.explored).cwiseAbs().maxCoeff() < 1e-6f);
      const ScoredRequest c = pgd_on.score(on.request(id)), d = pgd_off.score(off.request(id));
      const ScoredRequest e = start_on.score(on.request(id)), f = start_off.score(off.request(id));
      CHECK((a.explored - b.explored).cwiseAbs().maxCoeff() < 1e-6f);
      CHECK((c.explored - d.explored).cwiseAbs().maxCoeff() < 1e-6f);
      CHECK((e.explored - f.explored).cwiseAbs().maxCoeff() < 1e-6f);
      moved += ((a.explored - a.base).array() != 0).count() + ((c.explored - c.base).array() != 0).count();
    }
  }
  CHECK(moved > 50);  // the moves did change scores
}
