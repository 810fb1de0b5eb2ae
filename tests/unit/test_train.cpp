// The training stack: BCE and AUC, the optimizers' update rules, and the online trainer
// (learning, determinism, sparse row updates, the jointly trained item tower).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <type_traits>
#include <span>
#include <utility>
#include <vector>

#include "age/model/embedding_model.hpp"
#include "age/train/loss.hpp"
#include "age/train/optimizer.hpp"
#include "age/train/trainer.hpp"

using namespace age;

namespace {

// A known CTR function over users and items:
//   logit = -1.5 + user_bias[u] + item_bias[i] + 0.8 * <a_u, b_i>
// with latent a_u, b_i ~ N(0, I_3), user_bias ~ N(0, 0.3^2), item_bias ~ N(0, 0.5^2).
// The model sees the user id, the user's profile a_u (a dense field, as a user profile
// would be) and the item id: the item's latent b_i must be learned in its embedding and
// the interaction <a_u, b_i> by the tower. The true function's AUC is about 0.8.
struct World {
  static constexpr int kUsers = 200, kItems = 60, kLatent = 3;
  double bias = -1.5, scale = 0.8;
  std::vector<std::vector<double>> a, b;
  std::vector<double> user_bias, item_bias;

  explicit World(std::uint64_t seed) {
    Rng rng(seed);
    a.assign(kUsers, std::vector<double>(kLatent));
    b.assign(kItems, std::vector<double>(kLatent));
    for (auto& v : a)
      for (double& e : v) e = rng.normal();
    for (auto& v : b)
      for (double& e : v) e = rng.normal();
    for (int u = 0; u < kUsers; ++u) user_bias.push_back(rng.normal(0.0, 0.3));
    for (int i = 0; i < kItems; ++i) item_bias.push_back(rng.normal(0.0, 0.5));
  }

  double logit(int u, int i) const {
    const auto& au = a[static_cast<std::size_t>(u)];
    const auto& bi = b[static_cast<std::size_t>(i)];
    double dot = 0.0;
    for (std::size_t k = 0; k < kLatent; ++k) dot += au[k] * bi[k];
    return bias + user_bias[static_cast<std::size_t>(u)] + item_bias[static_cast<std::size_t>(i)] + scale * dot;
  }
  double ctr(int u, int i) const { return 1.0 / (1.0 + std::exp(-logit(u, i))); }

  // Tables far larger than the id counts: a hash collision would merge two items (or
  // users) into one row and cap what any model can learn.
  static FeatureLayout layout() {
    FeatureLayout l;
    l.add_categorical("user_id", Side::User, 1 << 14, 4)
        .add_dense("user_profile", Side::User, kLatent)
        .add_categorical("item_id", Side::Item, 1 << 14, 8);
    return l;
  }
  Sample sample(int u, int i, float label) const {
    std::vector<float> profile;
    for (double e : a[static_cast<std::size_t>(u)]) profile.push_back(static_cast<float>(e));
    return Sample{{FieldInput{{static_cast<std::uint64_t>(u)}, {}}, FieldInput{{}, std::move(profile)}},
                  {FieldInput{{static_cast<std::uint64_t>(i)}, {}}},
                  label};
  }
  // n impressions of uniformly random (user, item) pairs with clicks drawn from the true
  // CTR; `truth` receives the true CTR of each.
  std::vector<Sample> draw(int n, Rng& rng, std::vector<double>* truth = nullptr) const {
    std::vector<Sample> out;
    out.reserve(static_cast<std::size_t>(n));
    for (int k = 0; k < n; ++k) {
      const int u = static_cast<int>(rng.below(kUsers)), i = static_cast<int>(rng.below(kItems));
      const double p = ctr(u, i);
      if (truth) truth->push_back(p);
      out.push_back(sample(u, i, rng.bernoulli(p) ? 1.0f : 0.0f));
    }
    return out;
  }
};

std::vector<double> predict_all(const EmbeddingCtrModel& model, const std::vector<Sample>& data) {
  std::vector<double> out;
  ModelWorkspace ws;
  RowVector p(1);
  for (const Sample& s : data) {
    model.predict(s.user, std::span<const SideInput>(&s.item, 1), ws, p);
    out.push_back(p[0]);
  }
  return out;
}

std::vector<float> labels_of(const std::vector<Sample>& data) {
  std::vector<float> y;
  for (const Sample& s : data) y.push_back(s.label);
  return y;
}

template <Optimizer O>
void train_epoch(OnlineTrainer<O>& trainer, const std::vector<Sample>& data, std::size_t batch) {
  for (std::size_t k = 0; k + batch <= data.size(); k += batch)
    trainer.step(std::span<const Sample>(data.data() + k, batch));
}

bool same_parameters(const EmbeddingCtrModel& a, const EmbeddingCtrModel& b) {
  for (std::size_t f = 0; f < a.layout().size(); ++f)
    if (!(a.tables().table(f).array() == b.tables().table(f).array()).all()) return false;
  for (std::size_t l = 0; l < a.tower().num_layers(); ++l)
    if (!(a.tower().weight(l).array() == b.tower().weight(l).array()).all() ||
        !(a.tower().bias(l).array() == b.tower().bias(l).array()).all())
      return false;
  return true;
}

}  // namespace

TEST_CASE("BCE on logits is stable and its gradient is sigmoid(z) - y", "[train]") {
  CHECK(bce_with_logit(0.0, 1.0) == Approx(std::log(2.0)));
  CHECK(bce_with_logit(2.0, 0.0) == Approx(-std::log(1.0 - 1.0 / (1.0 + std::exp(-2.0)))));
  CHECK(bce_with_logit(-3.0, 1.0) == Approx(-std::log(1.0 / (1.0 + std::exp(3.0)))));
  // Far in the tails: no overflow, no log(0).
  CHECK(bce_with_logit(1000.0, 1.0) == Approx(0.0).margin(1e-300));
  CHECK(bce_with_logit(-1000.0, 1.0) == Approx(1000.0));
  CHECK(bce_with_logit(1000.0, 0.0) == Approx(1000.0));
  CHECK(std::isfinite(bce_with_logit(-1e6, 0.0)));

  RowVector z(3), y(3), d;
  z << 0.5f, -1.0f, 3.0f;
  y << 1.0f, 0.0f, 0.0f;
  const double loss = bce_loss(z, y, &d);
  CHECK(loss == Approx((bce_with_logit(0.5, 1) + bce_with_logit(-1, 0) + bce_with_logit(3, 0)) / 3));
  for (Index i = 0; i < 3; ++i) CHECK(d[i] == Approx((sigmoid(z[i]) - y[i]) / 3.0f));

  y[1] = 1.5f;
  CHECK_THROWS_WITH(bce_loss(z, y), Catch::Contains("label 1: expected a value in [0, 1], got 1.5"));
  CHECK_THROWS_AS(bce_loss(z, RowVector::Zero(2)), DimensionError);
}

TEST_CASE("AUC is rank-based and counts ties as one half", "[train]") {
  CHECK(auc(std::vector<double>{0.1, 0.4, 0.35, 0.8}, std::vector<int>{0, 0, 1, 1}) == Approx(0.75));
  CHECK(auc(std::vector<double>{0.9, 0.8, 0.1}, std::vector<int>{1, 1, 0}) == Approx(1.0));
  CHECK(auc(std::vector<double>{0.9, 0.8, 0.1}, std::vector<int>{0, 0, 1}) == Approx(0.0));
  CHECK(auc(std::vector<double>{0.5, 0.5, 0.5, 0.5}, std::vector<int>{0, 1, 0, 1}) == Approx(0.5));
  // One tied positive/negative pair among distinct scores: pairs (p, n) =
  // (0.7 > 0.2) 1, (0.7 > 0.5) 1, (0.5 = 0.5) 1/2, (0.5 > 0.2) 1 -> 3.5 / 4.
  CHECK(auc(std::vector<double>{0.2, 0.5, 0.5, 0.7}, std::vector<int>{0, 0, 1, 1}) == Approx(3.5 / 4.0));
  RowVector s(3);
  s << 0.3f, 0.1f, 0.2f;
  CHECK(auc(s, std::vector<float>{1, 0, 0}) == Approx(1.0));

  CHECK_THROWS_WITH(auc(std::vector<double>{0.1, 0.2}, std::vector<int>{1, 1}),
                    Catch::Contains("needs both classes: got 2 positives and 0 negatives"));
  CHECK_THROWS_WITH(auc(std::vector<double>{0.1, 0.2}, std::vector<double>{1, 0.5}),
                    Catch::Contains("label 1: expected 0 or 1, got 0.5"));
  CHECK_THROWS_AS(auc(std::vector<double>{0.1}, std::vector<int>{1, 0}), DimensionError);
}

TEST_CASE("optimizer settings are validated with messages naming the setting", "[train]") {
  CHECK_THROWS_WITH(Adam{.lr = 0.0}.validate(), "adam: lr: expected a value in (0, 1e+12], got 0");
  CHECK_THROWS_WITH(Adam{.beta1 = 1.0}.validate(), "adam: beta1: expected a value in [0, 1), got 1.000000");
  CHECK_THROWS_AS(Adam{.beta2 = -0.1}.validate(), ConfigError);
  CHECK_THROWS_WITH(Adam{.eps = 0.0}.validate(), Catch::Contains("adam: eps: expected a value in (0, "));
  CHECK_THROWS_AS(Adam{.lr = std::numeric_limits<double>::quiet_NaN()}.validate(), ConfigError);
  CHECK_THROWS_WITH(Sgd{.lr = -1.0}.validate(), Catch::Contains("sgd: lr: expected a value in (0, "));
  CHECK_THROWS_WITH(Sgd{.momentum = 1.0}.validate(), Catch::Contains("sgd: momentum: expected a value in [0, 1)"));
  CHECK_THROWS_WITH(Adagrad{.lr_decay = -1.0}.validate(), Catch::Contains("adagrad: lr_decay: expected a value in [0, "));
  CHECK_THROWS_WITH(Adagrad{.eps = -1.0}.validate(), Catch::Contains("adagrad: eps: expected a value in (0, "));
  CHECK_NOTHROW(Adam{}.validate());
  CHECK_NOTHROW(Sgd{}.validate());
  CHECK_NOTHROW(Adagrad{}.validate());

  EmbeddingCtrModel model(World::layout(), {4});
  CHECK_THROWS_AS(OnlineTrainer<Adam>(model, Adam{.lr = -1.0}), ConfigError);
  CHECK_THROWS_WITH(OnlineTrainer<Adam>(model, Adam{}, TrainerOptions{.dropout = 1.0}),
                    Catch::Contains("trainer: dropout: expected a value in [0, 1), got 1"));
  CHECK_THROWS_AS(OnlineTrainer<Adam>(model, Adam{}, TrainerOptions{.item_tower_dropout = -0.5}), ConfigError);
}

TEST_CASE("optimizer update rules match PyTorch on a dense parameter", "[train]") {
  // Parameter p0 and three gradients; the expected values are torch.optim's (PyTorch
  // 1.13, float64) after each step with the same settings. Step 1 of Adam can be checked by
  // hand: m_hat = g, v_hat = g^2, so p moves by lr * g / (|g| + eps) = lr * sign(g).
  const std::vector<float> p0{0.5f, -1.0f, 2.0f};
  const std::vector<std::vector<float>> grads{{0.1f, -0.2f, 0.3f}, {-0.05f, 0.4f, 0.0f}, {0.2f, 0.1f, -0.1f}};
  auto run = [&](const auto& opt) {
    Vector p = Eigen::Map<const Vector>(p0.data(), 3);
    ParameterState st;
    std::vector<std::vector<double>> trace;
    for (const auto& g : grads) {
      update_dense(opt, p, Eigen::Map<const Vector>(g.data(), 3), st);
      trace.push_back({p[0], p[1], p[2]});
    }
    CHECK(st.steps == std::vector<std::int64_t>{3});
    return trace;
  };
  auto expect = [](const std::vector<std::vector<double>>& got, const std::vector<std::vector<double>>& want) {
    for (std::size_t t = 0; t < want.size(); ++t)
      for (std::size_t i = 0; i < 3; ++i) {
        INFO("step " << t + 1 << ", entry " << i);
        CHECK(got[t][i] == Approx(want[t][i]).epsilon(1e-6).margin(1e-7));
      }
  };
  SECTION("SGD") {
    expect(run(Sgd{.lr = 0.1}), {{0.49, -0.98, 1.97}, {0.495, -1.02, 1.97}, {0.475, -1.03, 1.98}});
  }
  SECTION("SGD with momentum") {
    expect(run(Sgd{.lr = 0.1, .momentum = 0.9}),
           {{0.49, -0.98, 1.97}, {0.486, -1.002, 1.943}, {0.4624, -1.0318, 1.9287}});
  }
  SECTION("Adagrad with lr decay") {
    expect(run(Adagrad{.lr = 0.1, .lr_decay = 0.01}), {{0.4, -0.9, 1.9},
                                                       {0.444278574, -0.988557148, 1.9},
                                                       {0.358702931, -1.00995106, 1.93100272}});
  }
  SECTION("Adam") {
    expect(run(Adam{.lr = 0.1}), {{0.40000001, -0.900000005, 1.9},
                                  {0.373366309, -0.936610357, 1.83299418},
                                  {0.307555154, -0.978175475, 1.80408065}});
  }
  SECTION("Adam, strong bias correction (betas 0.5, 0.9, eps 1e-3)") {
    expect(run(Adam{.lr = 0.1, .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-3}),
           {{0.400990099, -0.900497512, 1.90033223},
            {0.400990099, -0.962574222, 1.85213345},
            {0.317755802, -1.0168381, 1.8602549}});
  }
}

TEST_CASE("sparse rows are updated lazily: a row's step count advances only when it is used", "[train]") {
  // Table of 4 rows (dim 3), every row starting at p0. Global step 1 uses rows 0 and 2,
  // step 2 only row 2, step 3 rows 0 and 2 again. Row 2 sees gradients g1, g2, g3 and must
  // equal dense Adam after 3 steps; row 0 sees g1, g2 (at global steps 1 and 3) and must
  // equal dense Adam after 2 steps -- with a global step count it would not. Rows 1 and 3
  // are never used and keep their bits.
  const Adam adam{.lr = 0.1};
  Matrix table(3, 4);
  for (Index r = 0; r < 4; ++r) table.col(r) << 0.5f, -1.0f, 2.0f;
  const Matrix before = table;
  std::vector<Vector> g(3, Vector(3));
  g[0] << 0.1f, -0.2f, 0.3f;
  g[1] << -0.05f, 0.4f, 0.0f;
  g[2] << 0.2f, 0.1f, -0.1f;
  ParameterState st;
  SparseRowGradient grad;

  grad.reset(3);
  grad.add(0, g[0]);
  grad.add(2, g[0] * 0.5f);
  grad.add(2, g[0] * 0.5f);  // two uses of a row in one batch are summed
  update_rows(adam, table, grad, st);
  grad.reset(3);
  grad.add(2, g[1]);
  update_rows(adam, table, grad, st);
  grad.reset(3);
  grad.add(2, g[2]);
  grad.add(0, g[1]);
  REQUIRE(grad.size() == 2);
  CHECK(grad.row(0) == 2);
  CHECK(grad.find(1) == nullptr);
  update_rows(adam, table, grad, st);

  CHECK(st.steps == std::vector<std::int64_t>{2, 0, 3, 0});
  const std::vector<double> row2{0.307555154, -0.978175475, 1.80408065};  // dense Adam, 3 steps
  const std::vector<double> row0{0.373366309, -0.936610357, 1.83299418};  // dense Adam, 2 steps
  for (Index k = 0; k < 3; ++k) {
    CHECK(table(k, 2) == Approx(row2[static_cast<std::size_t>(k)]).epsilon(1e-6));
    CHECK(table(k, 0) == Approx(row0[static_cast<std::size_t>(k)]).epsilon(1e-6));
    CHECK(table(k, 1) == before(k, 1));
    CHECK(table(k, 3) == before(k, 3));
  }
  // Unused rows' state stays zero too.
  CHECK(st.s1.col(1).isZero(0));
  CHECK(st.s2.col(3).isZero(0));
}

TEST_CASE("the online trainer learns a known CTR function", "[train]") {
  // One pass over a stream of 100,000 impressions (1,562 batches of 64), then 10,000 held
  // out. The true function's own AUC on the held-out clicks is the ceiling (about 0.8 by
  // construction; 0.80 for this seed). Over world seeds 11..15 the model reached 0.77 to
  // 0.80, 0.01 to 0.02 below the truth.
  const World world(13);
  Rng data_rng(14);
  const std::vector<Sample> train = world.draw(100000, data_rng);
  std::vector<double> truth;
  const std::vector<Sample> test = world.draw(10000, data_rng, &truth);
  const std::vector<float> y = labels_of(test);

  const double true_auc = auc(truth, y);
  INFO("true function's AUC " << true_auc);
  CHECK(true_auc > 0.77);
  CHECK(true_auc < 0.83);

  EmbeddingCtrModel model(World::layout(), {32, 16});
  Rng init(13);
  model.initialize(init, 0.05);
  const double auc_before = auc(predict_all(model, test), y);
  OnlineTrainer<Adam> trainer(model, Adam{.lr = 0.01}, TrainerOptions{.seed = 14});
  train_epoch(trainer, train, 64);
  CHECK(trainer.steps() == 1562);
  const double model_auc = auc(predict_all(model, test), y);
  INFO("held-out AUC before training " << auc_before << ", after " << model_auc);
  CHECK(model_auc > 0.75);
  CHECK(model_auc <= true_auc + 0.01);  // cannot beat the truth beyond sampling noise
}

TEST_CASE("training is deterministic for a seed", "[train]") {
  const World world(21);
  Rng data_rng(22);
  const std::vector<Sample> data = world.draw(2048, data_rng);
  auto trained = [&](std::uint64_t seed) {
    EmbeddingCtrModel model(World::layout(), {16, 8});
    Rng init(23);
    model.initialize(init, 0.05);
    // A high dropout rate, so that the seed visibly matters.
    OnlineTrainer<Adam> trainer(model, Adam{.lr = 0.01}, TrainerOptions{.dropout = 0.2, .seed = seed});
    train_epoch(trainer, data, 32);
    return model;
  };
  const EmbeddingCtrModel a = trained(5), b = trained(5), c = trained(6);
  CHECK(same_parameters(a, b));   // bit for bit
  CHECK(!same_parameters(a, c));  // the seed drives the dropout masks

  // Two models trained side by side with identical settings stay identical.
  EmbeddingCtrModel m1(World::layout(), {16, 8}), m2(World::layout(), {16, 8});
  Rng i1(3), i2(3);
  m1.initialize(i1);
  m2.initialize(i2);
  std::vector<OnlineTrainer<Adagrad>> trainers;
  trainers.emplace_back(m1, Adagrad{.lr = 0.05}, TrainerOptions{.dropout = 0.1, .seed = 9});
  trainers.emplace_back(m2, trainers[0].optimizer(), trainers[0].options());
  for (const Sample& s : std::span(data).first(200))
    for (auto& t : trainers) t.step(s);  // single-sample steps
  CHECK(trainers[1].steps() == 200);
  CHECK(same_parameters(m1, m2));
}

TEMPLATE_TEST_CASE("a step changes only the embedding rows the batch used", "[train]", Sgd, Adagrad, Adam) {
  const World world(31);
  Rng data_rng(32);
  const std::vector<Sample> batch = world.draw(16, data_rng);
  EmbeddingCtrModel model(World::layout(), {16, 8});
  Rng init(33);
  model.initialize(init, 0.05);
  const EmbeddingCtrModel before = model;
  OnlineTrainer<TestType> trainer(model, TestType{.lr = 0.05}, TrainerOptions{.seed = 1});
  trainer.step(batch);

  const FeatureLayout& layout = model.layout();
  for (std::size_t f = 0; f < layout.size(); ++f) {
    if (!layout.field(f).has_table()) continue;
    std::set<std::size_t> used;
    for (const Sample& s : batch) {
      const SideInput& side = layout.field(f).side == Side::User ? s.user : s.item;
      used.insert(model.tables().row_of(f, side[layout.side_index(f)].ids[0]));
    }
    const Matrix& t0 = before.tables().table(f);
    const Matrix& t1 = model.tables().table(f);
    std::size_t changed = 0, unchanged = 0, unused_changed = 0;
    for (Index r = 0; r < t1.cols(); ++r) {
      const bool same = (t0.col(r).array() == t1.col(r).array()).all();
      if (used.count(static_cast<std::size_t>(r))) {
        // A used row moves unless its gradient is exactly zero (a sample whose every
        // ReLU path is off passes no gradient back).
        const Scalar* g = trainer.last_gradients().tables[f].find(static_cast<std::size_t>(r));
        REQUIRE(g != nullptr);
        const bool zero_gradient = Eigen::Map<const Vector>(g, t1.rows()).isZero(0);
        INFO("field " << layout.field(f).name << ": used row " << r << (same ? " did not move" : " moved")
                      << (zero_gradient ? ", zero gradient" : ""));
        CHECK(same == zero_gradient);
        changed += !same;
      } else {
        (same ? unchanged : unused_changed) += 1;
      }
    }
    INFO("field " << layout.field(f).name);
    CHECK(unused_changed == 0);  // bit for bit
    CHECK(trainer.last_gradients().tables[f].size() == used.size());
    CHECK(changed + 2 >= used.size());
    CHECK(unchanged > 0);
  }
}

TEMPLATE_TEST_CASE("each optimizer decreases the loss on a fixed batch", "[train]", Sgd, Adagrad, Adam) {
  const World world(41);
  Rng data_rng(42);
  const std::vector<Sample> batch = world.draw(64, data_rng);
  EmbeddingCtrModel model(World::layout(), {16, 8});
  Rng init(43);
  model.initialize(init, 0.05);
  // No dropout: the loss of the fixed batch is then a deterministic function of the weights.
  const double lr = std::is_same_v<TestType, Adam> ? 0.01 : std::is_same_v<TestType, Adagrad> ? 0.1 : 0.5;
  OnlineTrainer<TestType> trainer(model, TestType{.lr = lr}, TrainerOptions{.dropout = 0.0});
  TrainWorkspace ws;
  const double initial = batch_loss(model, batch, nullptr, ws);
  double previous = initial;
  for (int s = 0; s < 50; ++s) {
    const double reported = trainer.step(batch);
    CHECK(reported == Approx(previous).epsilon(1e-9));  // step() reports the pre-update loss
    previous = batch_loss(model, batch, nullptr, ws);
  }
  INFO(TestType::name << ": loss " << initial << " -> " << previous);
  CHECK(previous < 0.8 * initial);
}

TEST_CASE("the attached item tower learns item CTR and never changes the embeddings", "[train]") {
  // Clicks depend strongly on the item (item_bias) and the item tower sees only the item
  // embedding, so it should learn each item's average CTR over users.
  World world(51);
  for (double& b : world.item_bias) b *= 3.0;
  Rng data_rng(52);
  const std::vector<Sample> data = world.draw(16000, data_rng);

  auto make_model = [] {
    EmbeddingCtrModel m(World::layout(), {16, 8});
    Rng init(53);
    m.initialize(init, 0.05);
    return m;
  };
  EmbeddingCtrModel with_dgu = make_model(), without = make_model();
  const std::size_t item_dim = with_dgu.item_dim();
  Tower dgu(0, item_dim, {16});
  Rng dgu_init(54);
  dgu.initialize(dgu_init);

  const TrainerOptions options{.seed = 55};
  OnlineTrainer<Adam> joint(with_dgu, Adam{.lr = 0.01}, options);
  joint.attach_item_tower(dgu);
  OnlineTrainer<Adam> alone(without, Adam{.lr = 0.01}, options);
  REQUIRE(joint.item_tower() == &dgu);

  double first_dgu = 0, last_dgu = 0;
  bool same_main_loss = true, total_is_sum = true;
  const std::size_t batch = 64, steps = data.size() / batch;
  for (std::size_t k = 0; k < steps; ++k) {
    const std::span<const Sample> b(data.data() + k * batch, batch);
    const double total = joint.step(b);
    const double main_alone = alone.step(b);
    same_main_loss = same_main_loss && joint.last_loss().main == main_alone;
    total_is_sum = total_is_sum && total == joint.last_loss().main + joint.last_loss().item_tower;
    if (k < 20) first_dgu += joint.last_loss().item_tower / 20;
    if (k >= steps - 20) last_dgu += joint.last_loss().item_tower / 20;
  }
  CHECK(same_main_loss);  // identical main trajectories
  CHECK(total_is_sum);
  INFO("item tower loss: first 20 steps " << first_dgu << ", last 20 " << last_dgu);
  CHECK(last_dgu < 0.85 * first_dgu);
  // Stop-gradient: the item tower's loss never reached the shared tables (nor the main tower).
  CHECK(same_parameters(with_dgu, without));

  // Its output tracks each item's true average CTR over all users.
  std::vector<double> predicted, actual;
  Vector item_emb(static_cast<Index>(item_dim));
  TowerWorkspace ws;
  RowVector logit(1);
  const Matrix no_user(0, 1);
  for (int i = 0; i < World::kItems; ++i) {
    with_dgu.tables().embed(Side::Item, SideInput{FieldInput{{static_cast<std::uint64_t>(i)}, {}}}, item_emb);
    dgu.logits(no_user, item_emb, nullptr, ws, logit);
    predicted.push_back(sigmoid(logit[0]));
    double mean = 0;
    for (int u = 0; u < World::kUsers; ++u) mean += world.ctr(u, i) / World::kUsers;
    actual.push_back(mean);
  }
  double mp = 0, ma = 0;
  for (int i = 0; i < World::kItems; ++i) mp += predicted[static_cast<std::size_t>(i)] / World::kItems, ma += actual[static_cast<std::size_t>(i)] / World::kItems;
  double cov = 0, vp = 0, va = 0;
  for (std::size_t i = 0; i < predicted.size(); ++i) {
    cov += (predicted[i] - mp) * (actual[i] - ma);
    vp += (predicted[i] - mp) * (predicted[i] - mp);
    va += (actual[i] - ma) * (actual[i] - ma);
  }
  const double corr = cov / std::sqrt(vp * va);
  INFO("correlation of item tower output and true item CTR: " << corr);
  CHECK(corr > 0.8);

  // Shape checks: the item tower must read the model's item embeddings only.
  Tower wrong_user(2, item_dim, {4}), wrong_item(0, item_dim + 1, {4});
  CHECK_THROWS_WITH(joint.attach_item_tower(wrong_user), Catch::Contains("item tower: user_dim"));
  CHECK_THROWS_AS(joint.attach_item_tower(wrong_item), DimensionError);

  // step_item_tower trains the item tower alone: the model is left as it was.
  const EmbeddingCtrModel frozen = with_dgu;
  const Matrix w_before = dgu.weight(0);
  joint.step_item_tower(std::span(data).first(64));
  CHECK(same_parameters(frozen, with_dgu));
  CHECK(!(dgu.weight(0).array() == w_before.array()).all());
}

TEST_CASE("the trainer rejects bad batches with messages naming the problem", "[train]") {
  const World world(61);
  EmbeddingCtrModel model(World::layout(), {4});
  OnlineTrainer<Sgd> trainer(model);
  CHECK_THROWS_WITH(trainer.step(std::span<const Sample>()), Catch::Contains("expected at least 1 sample, got 0"));
  Sample s = world.sample(1, 2, 0.5f);
  CHECK_THROWS_WITH(trainer.step(s), Catch::Contains("training sample 0: label: expected 0 or 1, got 0.5"));
  s.label = 1.0f;
  s.item.clear();
  CHECK_THROWS_AS(trainer.step(s), DimensionError);
  CHECK_THROWS_AS(trainer.step_item_tower(std::span(&s, 1)), ConfigError);  // none attached
}
