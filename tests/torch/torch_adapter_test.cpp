// The TorchScript adapter (age/torch/torch_model.hpp) against PyTorch and against the
// native Tower. Reads the models and references make_torch_models.py wrote into the
// folder named by AGE_TORCH_TEST_DIR (run_torch_tests.py sets it and runs this binary).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/age.hpp"
#include "age/torch/torch_model.hpp"

namespace {

using age::Index;
using age::Matrix;
using age::RowVector;

std::filesystem::path test_dir() {
  const char* dir = std::getenv("AGE_TORCH_TEST_DIR");
  if (!dir) FAIL("AGE_TORCH_TEST_DIR is not set (run through tests/torch/run_torch_tests.py)");
  return dir;
}

nlohmann::json read_json(const std::string& name) {
  std::ifstream in(test_dir() / name);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// [rows of a JSON list] -> a d x N matrix with one candidate per column.
Matrix columns_of(const nlohmann::json& rows) {
  const Index n = static_cast<Index>(rows.size());
  const Index d = n ? static_cast<Index>(rows[0].size()) : 0;
  Matrix m(d, n);
  for (Index c = 0; c < n; ++c)
    for (Index r = 0; r < d; ++r) m(r, c) = rows[static_cast<std::size_t>(c)][static_cast<std::size_t>(r)].get<float>();
  return m;
}

// The largest |actual - expected| / scale over a candidate's entries, where scale is the
// candidate's largest |expected| (a gradient entry near 0 is judged against its
// candidate's gradient, not against itself) and at least `floor`.
double worst_relative(const Matrix& actual, const nlohmann::json& expected_rows, double floor) {
  double worst = 0.0;
  for (Index c = 0; c < actual.cols(); ++c) {
    const auto& row = expected_rows[static_cast<std::size_t>(c)];
    double scale = floor;
    for (const auto& x : row) scale = std::max(scale, std::abs(x.get<double>()));
    for (Index r = 0; r < actual.rows(); ++r)
      worst = std::max(worst, std::abs(actual(r, c) - row[static_cast<std::size_t>(r)].get<double>()) / scale);
  }
  return worst;
}

double worst_relative(const RowVector& actual, const nlohmann::json& expected, double floor) {
  double worst = 0.0;
  for (Index i = 0; i < actual.size(); ++i) {
    const double e = expected[static_cast<std::size_t>(i)].get<double>();
    worst = std::max(worst, std::abs(actual[i] - e) / std::max(floor, std::abs(e)));
  }
  return worst;
}

constexpr double kTolerance = 1e-5;  // relative, the issue's bound

// A native Tower with the weights of mlp.pt (mlp_weights.json, [out, in] per layer).
age::Tower native_tower() {
  const nlohmann::json w = read_json("mlp_weights.json");
  age::Tower tower(w["user_dim"].get<std::size_t>(), w["item_dim"].get<std::size_t>(),
                   w["hidden"].get<std::vector<std::size_t>>());
  age::Tower::Edit edit = tower.edit();
  for (std::size_t l = 0; l < w["layers"].size(); ++l) {
    const auto& layer = w["layers"][l];
    auto weight = edit.weight(l);
    for (Index o = 0; o < weight.rows(); ++o)
      for (Index i = 0; i < weight.cols(); ++i)
        weight(o, i) = layer["weight"][static_cast<std::size_t>(o)][static_cast<std::size_t>(i)].get<float>();
    auto bias = edit.bias(l);
    for (Index o = 0; o < bias.size(); ++o) bias[o] = layer["bias"][static_cast<std::size_t>(o)].get<float>();
  }
  return tower;
}

Matrix random_matrix(Index rows, Index cols, age::Rng& rng, double sd = 1.0) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(rng.normal(0.0, sd));
  return m;
}

}  // namespace

static_assert(age::DropoutCtrModel<age::TorchCtrModel>);
// No request passes: every explorer runs the adapter on the plain engine.
static_assert(!age::AgeTs<age::TorchCtrModel>::uses_request_passes);

TEST_CASE("DCN-v2 logits and input gradients match PyTorch's float64 references", "[torch][parity]") {
  const nlohmann::json ref = read_json("dcn_reference.json");
  const age::TorchCtrModel model(test_dir() / "dcn.pt");
  CHECK(model.user_dim() == ref["user_dim"].get<std::size_t>());
  CHECK(model.item_dim() == ref["item_dim"].get<std::size_t>());
  CHECK(model.dropout_mode() == age::TorchDropoutMode::seeded);
  age::TorchCtrModel::Workspace ws;
  double worst_logit = 0, worst_float32 = 0, worst_items = 0, worst_user = 0;
  for (const auto& r : ref["requests"]) {
    const Matrix user = columns_of(r["user"]);
    const Matrix items_plain = columns_of(r["items"]);
    const Index n = items_plain.cols();
    // The items as a block of a taller matrix: an Eigen::Ref with an outer stride, which
    // the adapter must hand to torch as strided memory, not as if contiguous.
    Matrix tall = Matrix::Constant(items_plain.rows() + 3, n, 1e6f);
    tall.middleRows(1, items_plain.rows()) = items_plain;
    const age::ConstMatrixRef items = tall.middleRows(1, items_plain.rows());
    if (n > 1) REQUIRE(items.outerStride() != items.rows());  // (Eigen drops the stride of one column)

    RowVector z(n);
    model.logits(user, items, nullptr, ws, z);
    worst_logit = std::max(worst_logit, worst_relative(z, r["logits"], 1.0));
    worst_float32 = std::max(worst_float32, worst_relative(z, r["torch_float32_logits"], 1.0));

    RowVector prob(n);
    Matrix d_items, d_user;
    model.probability_gradient(user, items, nullptr, ws, prob, &d_items, &d_user);
    CHECK(worst_relative(prob, r["prob"], 1e-3) <= kTolerance);
    REQUIRE(d_items.rows() == items.rows());
    REQUIRE(d_items.cols() == n);
    REQUIRE(d_user.rows() == user.rows());
    REQUIRE(d_user.cols() == n);  // per candidate even when the user is shared
    worst_items = std::max(worst_items, worst_relative(d_items, r["d_items"], 1e-6));
    worst_user = std::max(worst_user, worst_relative(d_user, r["d_user"], 1e-6));

    // Either gradient alone gives the same values.
    Matrix only_items;
    RowVector prob2(n);
    model.probability_gradient(user, items, nullptr, ws, prob2, &only_items, nullptr);
    CHECK(only_items == d_items);
    CHECK(prob2 == prob);
  }
  std::printf("torch parity: worst relative errors: logits %.2e (vs PyTorch float32 %.2e), d_items %.2e, d_user %.2e\n",
              worst_logit, worst_float32, worst_items, worst_user);
  CHECK(worst_logit <= kTolerance);
  CHECK(worst_float32 <= kTolerance);
  CHECK(worst_items <= kTolerance);
  CHECK(worst_user <= kTolerance);
}

TEST_CASE("seeded dropout is PyTorch's dropout under torch.manual_seed, and leaves torch's generator as it was",
          "[torch][dropout]") {
  const nlohmann::json ref = read_json("dcn_reference.json");
  const age::TorchCtrModel model(test_dir() / "dcn.pt");
  REQUIRE(model.dropout_rate() == Approx(ref["dropout_rate"].get<double>()));
  age::TorchCtrModel::Workspace ws;

  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_current_seed(12345);
  const at::Tensor before = torch::rand({4});
  generator.set_current_seed(12345);

  for (const auto& r : ref["requests"]) {
    const Matrix user = columns_of(r["user"]);
    const Matrix items = columns_of(r["items"]);
    const Index n = items.cols();
    age::TorchCtrModel::Mask mask;
    mask.rate = ref["dropout_rate"].get<double>();
    mask.seed = r["dropout_seed"].get<std::uint64_t>();
    mask.columns = n;
    RowVector z(n), again(n), plain(n);
    model.logits(user, items, &mask, ws, z);
    CHECK(worst_relative(z, r["dropout_logits"], 1.0) <= kTolerance);
    model.logits(user, items, &mask, ws, again);
    CHECK(again == z);  // deterministic for a given (input, mask)
    model.logits(user, items, nullptr, ws, plain);
    if (n >= 3) CHECK(plain != z);  // the mask did drop units
  }
  // The masked passes restored the default generator: it continues as if they had not run.
  CHECK(torch::equal(torch::rand({4}), before));

  // A mask drawn by sample_mask: the module's rate only, 1 or N columns.
  age::Rng rng(3);
  age::TorchCtrModel::Mask mask;
  CHECK_THROWS_AS(model.sample_mask(0.1, 1, rng, mask), age::ConfigError);
  model.sample_mask(0.2, 1, rng, mask);
  age::TorchCtrModel::Mask other;
  model.sample_mask(0.2, 1, rng, other);
  CHECK(mask.seed != other.seed);
  const Matrix user = Matrix::Ones(model.user_dim(), 1);
  const Matrix items = Matrix::Ones(model.item_dim(), 5);
  RowVector z(5);
  mask.columns = 3;
  CHECK_THROWS_AS(model.logits(user, items, &mask, ws, z), age::DimensionError);
  model.sample_mask(0.0, 1, rng, mask);  // rate 0: the plain pass
  RowVector plain(5);
  model.logits(user, items, &mask, ws, z);
  model.logits(user, items, nullptr, ws, plain);
  CHECK(z == plain);
}

TEST_CASE("a scripted Tower-shaped MLP scores like the native Tower, and AGE-TS ranks alike", "[torch][ranking]") {
  const age::Tower tower = native_tower();
  const age::TorchCtrModel model(test_dir() / "mlp.pt");
  REQUIRE(model.dropout_mode() == age::TorchDropoutMode::explicit_masks);
  REQUIRE(model.dropout_sizes() == tower.hidden());

  // The same Rng draws the same masks in both models (sample_dropout_mask on the same
  // hidden sizes), so MC-Dropout samples agree too.
  age::Rng rng_native(9), rng_torch(9);
  age::DropoutMask native_mask;
  age::TorchCtrModel::Mask torch_mask;
  tower.sample_mask(0.3, 7, rng_native, native_mask);
  model.sample_mask(0.3, 7, rng_torch, torch_mask);
  REQUIRE(native_mask.layers.size() == torch_mask.masks.layers.size());
  for (std::size_t l = 0; l < native_mask.layers.size(); ++l) CHECK(native_mask.layers[l] == torch_mask.masks.layers[l]);

  age::Rng rng(21);
  const Matrix user = random_matrix(6, 1, rng);
  const Matrix items = random_matrix(10, 7, rng);
  age::Tower::Workspace tws;
  age::TorchCtrModel::Workspace ws;
  RowVector a(7), b(7);
  for (const bool masked : {false, true}) {
    tower.logits(user, items, masked ? &native_mask : nullptr, tws, a);
    model.logits(user, items, masked ? &torch_mask : nullptr, ws, b);
    CHECK((a - b).cwiseAbs().maxCoeff() <= kTolerance * std::max(1.0f, a.cwiseAbs().maxCoeff()));
  }
  RowVector pa(7), pb(7);
  Matrix ga, gb, ua, ub;
  tower.probability_gradient(user, items, &native_mask, tws, pa, &ga, &ua);
  model.probability_gradient(user, items, &torch_mask, ws, pb, &gb, &ub);
  CHECK((ga - gb).cwiseAbs().maxCoeff() <= kTolerance * ga.cwiseAbs().maxCoeff());
  CHECK((ua - ub).cwiseAbs().maxCoeff() <= kTolerance * ua.cwiseAbs().maxCoeff());

  // AGE-TS with MC-Dropout (p = 0.1, the same masks from the same seed), PGD and the DGU
  // gate, over the native Tower and over the adapter: the same scores up to float rounding,
  // so the same ranking (a swap allowed only between scores closer than the tolerance).
  age::Rng dgu_rng(5);
  age::Tower dgu = age::make_dgu_tower(10, dgu_rng);
  const age::McDropoutTs ts{.rate = 0.1};
  for (const bool fgm : {false, true}) {
    std::size_t open = 0, total = 0;
    for (const Index n : {Index(1), Index(7), Index(50), Index(200)}) {
      const Matrix req_user = random_matrix(6, 1, rng);
      const Matrix req_items = random_matrix(10, n, rng);
      const age::Request request{req_user, req_items, static_cast<std::uint64_t>(100 + n)};
      age::ScoredRequest native, adapted;
      if (fgm) {
        native = age::AgeTsFgm<age::Tower>(tower, age::DguGate(dgu), ts, age::Fgm{.lambda = 0.5}, 42).score(request);
        adapted =
            age::AgeTsFgm<age::TorchCtrModel>(model, age::DguGate(dgu), ts, age::Fgm{.lambda = 0.5}, 42).score(request);
      } else {
        native = age::AgeTs<age::Tower>(tower, age::DguGate(dgu), ts, age::Pgd{.lambda = 0.5}, 42).score(request);
        adapted = age::AgeTs<age::TorchCtrModel>(model, age::DguGate(dgu), ts, age::Pgd{.lambda = 0.5}, 42).score(request);
      }
      constexpr float kScore = 1e-5f;
      CHECK((native.base - adapted.base).cwiseAbs().maxCoeff() <= kScore);
      CHECK((native.delta - adapted.delta).cwiseAbs().maxCoeff() <= kScore);
      CHECK((native.explored - adapted.explored).cwiseAbs().maxCoeff() <= kScore);
      CHECK(native.gate == adapted.gate);
      for (std::size_t i = 0; i + 1 < adapted.ranking.size(); ++i)
        CHECK(native.explored[adapted.ranking[i]] >= native.explored[adapted.ranking[i + 1]] - kScore);
      std::size_t same = 0;
      for (std::size_t i = 0; i < adapted.ranking.size(); ++i) same += adapted.ranking[i] == native.ranking[i];
      CHECK(same == adapted.ranking.size());
      for (const auto g : native.gate) open += g;
      total += native.gate.size();
    }
    // The comparison covers both open and closed gates (moved and unmoved candidates).
    CHECK(open > 0);
    CHECK(open < total);
  }
}

TEST_CASE("modules and requests that do not fit fail with age's errors", "[torch][errors]") {
  const std::filesystem::path dir = test_dir();
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "does_not_exist.pt"), age::IoError);
  CHECK_THROWS_WITH(age::TorchCtrModel(dir / "not_a_module.pt"), Catch::Contains("not_a_module.pt"));
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "not_a_module.pt"), age::FormatError);
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "no_forward.pt"), age::FormatError);
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "broken_shape.pt"), age::DimensionError);
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "broken_dtype.pt"), age::FormatError);
  CHECK_THROWS_WITH(age::TorchCtrModel(dir / "broken_inplace.pt"), Catch::Contains("wrote into its inputs"));
  // Sizes given by the caller must agree with the module's attributes.
  CHECK_THROWS_AS(age::TorchCtrModel(dir / "mlp.pt", age::TorchModelOptions{.user_dim = 5}), age::DimensionError);
  CHECK_NOTHROW(age::TorchCtrModel(dir / "mlp.pt", age::TorchModelOptions{.user_dim = 6, .item_dim = 10}));

  age::TorchCtrModel::Workspace ws;
  const age::TorchCtrModel raising(dir / "broken_raise.pt");
  RowVector z(5);
  CHECK_THROWS_WITH(raising.logits(Matrix::Ones(2, 1), Matrix::Ones(3, 5), nullptr, ws, z),
                    Catch::Contains("request too large"));
  CHECK_THROWS_AS(raising.logits(Matrix::Ones(2, 1), Matrix::Ones(3, 5), nullptr, ws, z), age::InputError);
  // A module without dropout refuses a dropout rate above 0.
  age::Rng rng(1);
  age::TorchCtrModel::Mask mask;
  CHECK_THROWS_AS(raising.sample_mask(0.1, 1, rng, mask), age::ConfigError);
  // Request shapes.
  CHECK_THROWS_AS(raising.logits(Matrix::Ones(2, 1), Matrix::Ones(4, 5), nullptr, ws, z), age::DimensionError);
  CHECK_THROWS_AS(raising.logits(Matrix::Ones(2, 3), Matrix::Ones(3, 5), nullptr, ws, z), age::DimensionError);
  RowVector short_out(2);
  CHECK_THROWS_AS(raising.logits(Matrix::Ones(2, 1), Matrix::Ones(3, 4), nullptr, ws, short_out), age::DimensionError);

  // NaN logits pass through the model; the scorer refuses them as for the native model.
  const age::TorchCtrModel nan_model(dir / "broken_nan.pt");
  Matrix items = Matrix::Ones(3, 4);
  items(0, 2) = 9.0f;
  RowVector out(4);
  nan_model.logits(Matrix::Ones(2, 1), items, nullptr, ws, out);
  CHECK(std::isnan(out[2]));
  CHECK(std::isfinite(out[0]));
  const Matrix user = Matrix::Ones(2, 1);
  const age::AgeScorer<age::TorchCtrModel, age::ConstantDelta, age::Fgm, age::AlwaysOpen> scorer(
      nan_model, age::AlwaysOpen{}, age::ConstantDelta{0.0}, age::Fgm{.lambda = 0.1});
  const age::Request request{user, items, 1};
  CHECK_THROWS_AS(scorer.score(request), age::InputError);
  age::ScoredRequest scored;
  decltype(scorer)::Workspace sws;
  CHECK_FALSE(scorer.try_score(request, scored, sws).ok());
}

TEST_CASE("a module of items only, an [N, 1] output and a strided user", "[torch][shapes]") {
  // Defined from TorchScript source: z = items . w (+ user . v when there is a user part).
  torch::jit::Module items_only("ItemsOnly");
  items_only.register_parameter("w", torch::tensor({1.0f, -2.0f, 0.5f}), false);
  items_only.register_attribute("item_dim", c10::IntType::get(), std::int64_t{3});
  items_only.define(R"(
    def forward(self, user: Tensor, items: Tensor) -> Tensor:
        return torch.matmul(items, self.w).unsqueeze(1)
  )");
  const age::TorchCtrModel model(items_only);  // no user_dim attribute: user_dim 0
  CHECK(model.user_dim() == 0);
  age::Rng rng(4);
  const Matrix items = random_matrix(3, 6, rng);
  const Matrix no_user(0, 1);
  age::TorchCtrModel::Workspace ws;
  RowVector z(6), prob(6);
  model.logits(no_user, items, nullptr, ws, z);
  const RowVector expected = Eigen::Vector3f(1.0f, -2.0f, 0.5f).transpose() * items;
  CHECK((z - expected).cwiseAbs().maxCoeff() <= 1e-6f);
  Matrix d_items, d_user;
  model.probability_gradient(no_user, items, nullptr, ws, prob, &d_items, &d_user);
  CHECK(d_user.rows() == 0);
  for (Index n = 0; n < 6; ++n) {
    const float slope = prob[n] * (1 - prob[n]);
    CHECK(d_items(0, n) == Approx(slope * 1.0f).epsilon(1e-5));
    CHECK(d_items(1, n) == Approx(slope * -2.0f).epsilon(1e-5));
  }

  // A per-candidate user taken as every other column of a wider matrix (outer stride 2x).
  const age::TorchCtrModel dcn(test_dir() / "dcn.pt");
  const Matrix wide = random_matrix(6, 8, rng);
  const Matrix dcn_items = random_matrix(10, 4, rng);
  const Eigen::Map<const Matrix, 0, Eigen::OuterStride<>> every_other(wide.data(), 6, 4, Eigen::OuterStride<>(12));
  const Matrix packed = every_other;
  RowVector a(4), b(4);
  dcn.logits(every_other, dcn_items, nullptr, ws, a);
  dcn.logits(packed, dcn_items, nullptr, ws, b);
  CHECK(a == b);
}

TEST_CASE("one adapter serves many threads with the single-thread results", "[torch][threads]") {
  const age::TorchCtrModel dcn(test_dir() / "dcn.pt");
  const age::TorchCtrModel mlp(test_dir() / "mlp.pt");
  age::Rng rng(77);
  const Matrix user = random_matrix(6, 1, rng);
  const Matrix items = random_matrix(10, 40, rng);
  age::TorchCtrModel::Mask seeded, explicit_masks;
  dcn.sample_mask(dcn.dropout_rate(), 40, rng, seeded);
  mlp.sample_mask(0.2, 1, rng, explicit_masks);

  struct Result {
    RowVector plain, seeded, masked, prob;
    Matrix grad;
  };
  auto run = [&](Result& r) {
    age::TorchCtrModel::Workspace ws;
    r.plain.resize(40);
    r.seeded.resize(40);
    r.masked.resize(40);
    r.prob.resize(40);
    for (int repeat = 0; repeat < 20; ++repeat) {
      dcn.logits(user, items, nullptr, ws, r.plain);
      dcn.logits(user, items, &seeded, ws, r.seeded);
      mlp.logits(user, items, &explicit_masks, ws, r.masked);
      mlp.probability_gradient(user, items, &explicit_masks, ws, r.prob, &r.grad, nullptr);
    }
  };
  Result expected;
  run(expected);
  std::vector<Result> results(4);
  std::vector<std::thread> threads;
  for (Result& r : results) threads.emplace_back(run, std::ref(r));
  for (std::thread& t : threads) t.join();
  for (const Result& r : results) {
    CHECK(r.plain == expected.plain);
    CHECK(r.seeded == expected.seeded);
    CHECK(r.masked == expected.masked);
    CHECK(r.prob == expected.prob);
    CHECK(r.grad == expected.grad);
  }
}
