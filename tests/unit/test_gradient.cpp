// Finite-difference checks of every gradient the library computes analytically: the
// tower's input gradient of the probability (what AGE's direction g~ is made of), the
// tower's parameter gradients of the BCE loss, and the embedding-row gradients of the
// whole model as the trainer computes them.
//
// Method: central differences (f(x + h) - f(x - h)) / 2h of the library's own float
// forward pass, accumulated in double, h = 5e-3. Between ReLU kinks the tower is linear in
// each input and each weight, so the only truncation error comes from the sigmoid / BCE
// curvature (O(h^2), negligible here) and the rest is float rounding (~1e-7 / 2h).
// An entry passes when |analytic - fd| <= 1e-3 * max(|analytic|, |fd|) + 1e-5; over all
// compared entries of a case, ||analytic - fd|| / ||fd|| must stay below 1e-3.
// ReLU kinks: inputs (tower cases) and seeds (model case) are chosen so that every hidden
// pre-activation the dropout mask keeps starts at least 4h (model: 2h) from 0. As a safety
// net an entry is SKIPPED when x +- h still flips the sign of such a pre-activation (the
// central difference would straddle a kink); at most 10% of a case may be skipped (none
// are, with the seeds used here).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/train/loss.hpp"
#include "age/train/trainer.hpp"

using namespace age;

namespace {

constexpr Scalar kStep = 5e-3f;
// Inputs and seeds are chosen so that no kept hidden pre-activation starts closer than
// this to the ReLU kink (see draw_case and the seed search of the model test).
constexpr Scalar kMargin = 4 * kStep;
constexpr double kRelTol = 1e-3, kAbsTol = 1e-5, kNormTol = 1e-3, kMaxSkipped = 0.10;

// Signs of every hidden pre-activation of the last forward pass. A unit that the dropout
// mask switches off cannot change the output, so its sign is not recorded.
std::vector<bool> relu_pattern(const TowerWorkspace& ws) {
  std::vector<bool> p;
  for (std::size_t l = 0; l + 1 < ws.pre.size(); ++l) {
    const Matrix& pre = ws.pre[l];
    for (Index c = 0; c < pre.cols(); ++c)
      for (Index i = 0; i < pre.rows(); ++i) {
        bool kept = true;
        if (ws.mask) {
          const Matrix& m = ws.mask->layers[l];
          kept = m(i, m.cols() == 1 ? 0 : c) != 0;
        }
        p.push_back(kept && pre(i, c) > 0);
      }
  }
  return p;
}

// Collects (analytic, fd) pairs of one case and judges them together.
struct Comparison {
  explicit Comparison(std::string case_name) : name(std::move(case_name)) {}

  std::string name;
  std::vector<double> analytic, fd;
  std::size_t skipped = 0;

  void add(double a, double f) {
    analytic.push_back(a);
    fd.push_back(f);
  }
  void skip() { ++skipped; }

  void check() const {
    INFO(name << ": " << analytic.size() << " compared, " << skipped << " skipped at a ReLU kink");
    REQUIRE(!analytic.empty());
    CHECK(static_cast<double>(skipped) <= kMaxSkipped * static_cast<double>(skipped + analytic.size()));
    double diff2 = 0.0, ref2 = 0.0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < analytic.size(); ++i) {
      const double d = std::abs(analytic[i] - fd[i]);
      if (d > kRelTol * std::max(std::abs(analytic[i]), std::abs(fd[i])) + kAbsTol) {
        ++bad;
        UNSCOPED_INFO("entry " << i << ": analytic " << analytic[i] << ", finite difference " << fd[i]);
      }
      diff2 += d * d;
      ref2 += fd[i] * fd[i];
    }
    CHECK(bad == 0);
    CHECK(ref2 > 0.0);  // a gradient that is zero everywhere would prove nothing
    CHECK(std::sqrt(diff2) <= kNormTol * std::sqrt(ref2));
  }
};

// Central difference of `eval` in a scalar at `saved`, written through `set` (a tower
// parameter: through Tower::edit()), or false when a ReLU flips.
template <class Set, class Eval>
bool central_difference(Scalar saved, Set&& set, const std::vector<bool>& pattern, Eval&& eval,
                        std::vector<double>& out) {
  set(saved + kStep);
  std::vector<double> plus;
  const bool same_plus = eval(plus) == pattern;
  set(saved - kStep);
  std::vector<double> minus;
  const bool same_minus = eval(minus) == pattern;
  set(saved);
  if (!same_plus || !same_minus) return false;
  // The step actually taken in float, not the nominal one.
  const double h2 = static_cast<double>(saved + kStep) - static_cast<double>(saved - kStep);
  out.resize(plus.size());
  for (std::size_t i = 0; i < plus.size(); ++i) out[i] = (plus[i] - minus[i]) / h2;
  return true;
}
// The same for a scalar `x` the caller holds.
template <class Eval>
bool central_difference(Scalar& x, const std::vector<bool>& pattern, Eval&& eval, std::vector<double>& out) {
  return central_difference(
      x, [&](Scalar v) { x = v; }, pattern, eval, out);
}

struct Shape {
  std::size_t user_dim, item_dim;
  std::vector<std::size_t> hidden;
};

std::string describe(const Shape& s) {
  std::ostringstream d;
  d << "tower(" << s.user_dim << ", " << s.item_dim << ", {";
  for (std::size_t i = 0; i < s.hidden.size(); ++i) d << (i ? "," : "") << s.hidden[i];
  d << "})";
  return d.str();
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s{{3, 4, {}}, {3, 4, {6}}, {2, 5, {8, 4}}, {4, 3, {10, 6, 4}}, {0, 4, {6}},
                                    {0, 3, {5, 3}}};
  return s;
}

Matrix random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.uniform(-1.0, 1.0));
  return m;
}

enum class MaskKind { None, Shared, PerCandidate };

// Smallest |pre-activation| of the hidden units of column c that the mask keeps, or -1
// when some hidden layer has no kept unit active in column c (the output would not depend
// on the input there: a zero gradient proves nothing).
Scalar kink_distance(const TowerWorkspace& ws, Index c) {
  Scalar d = std::numeric_limits<Scalar>::infinity();
  for (std::size_t l = 0; l + 1 < ws.pre.size(); ++l) {
    bool any_active = false;
    for (Index i = 0; i < ws.pre[l].rows(); ++i) {
      if (ws.mask) {
        const Matrix& m = ws.mask->layers[l];
        if (m(i, m.cols() == 1 ? 0 : c) == 0) continue;
      }
      any_active = any_active || ws.pre[l](i, c) > 0;
      d = std::min(d, std::abs(ws.pre[l](i, c)));
    }
    if (!any_active) return -1;
  }
  return d;
}

// A dropout sample at rate 0.3 (or none), with users and items uniform in [-1, 1] such that
// every kept hidden pre-activation is at least kMargin from the kink (so FD steps seldom
// cross one) and every column has an active path. A candidate's columns are redrawn until
// they qualify; the mask is redrawn when that fails.
void draw_case(const Tower& t, MaskKind mk, Index user_cols, Index n, Rng& rng, DropoutMask& mask, Matrix& users,
               Matrix& items) {
  TowerWorkspace ws;
  for (int mask_attempt = 0; mask_attempt < 100; ++mask_attempt) {
    if (mk != MaskKind::None) t.sample_mask(0.3, mk == MaskKind::Shared ? 1 : n, rng, mask);
    const DropoutMask* mp = mk == MaskKind::None ? nullptr : &mask;
    users = random_matrix(static_cast<Index>(t.user_dim()), user_cols, rng);
    items = random_matrix(static_cast<Index>(t.item_dim()), n, rng);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      t.forward(users, items, mp, ws);
      bool clear = true;
      for (Index c = 0; c < n; ++c) {
        if (kink_distance(ws, c) >= kMargin) continue;
        clear = false;
        items.col(c) = random_matrix(items.rows(), 1, rng);
        if (user_cols == n) users.col(c) = random_matrix(users.rows(), 1, rng);
      }
      if (clear) return;
    }
  }
  FAIL("no dropout mask and inputs clear of the ReLU kinks found");
}

const char* to_cstr(MaskKind k) {
  return k == MaskKind::None ? "no mask" : k == MaskKind::Shared ? "shared mask" : "per-candidate mask";
}

}  // namespace

TEST_CASE("tower input gradient of the probability matches finite differences", "[gradient]") {
  const Index n = 5;
  for (const Shape& shape : shapes()) {
    for (MaskKind mk : {MaskKind::None, MaskKind::Shared, MaskKind::PerCandidate}) {
      for (bool shared_user : {true, false}) {
        Rng rng(1234 + shape.hidden.size() * 7 + shape.user_dim);
        Tower tower(shape.user_dim, shape.item_dim, shape.hidden);
        tower.initialize(rng);
        DropoutMask mask;
        Matrix users, items;
        draw_case(tower, mk, shared_user ? 1 : n, n, rng, mask, users, items);
        const DropoutMask* mp = mk == MaskKind::None ? nullptr : &mask;

        TowerWorkspace ws;
        RowVector prob(n);
        Matrix d_items, d_user;
        tower.probability_gradient(users, items, mp, ws, prob, &d_items, &d_user);
        const std::vector<bool> pattern = relu_pattern(ws);
        REQUIRE(d_items.rows() == static_cast<Index>(shape.item_dim));
        REQUIRE(d_items.cols() == n);
        REQUIRE(d_user.rows() == static_cast<Index>(shape.user_dim));
        REQUIRE(d_user.cols() == n);

        // Every candidate's probability after a perturbation (double), and the ReLU signs.
        TowerWorkspace fws;
        RowVector logits(n);
        auto eval = [&](std::vector<double>& p) {
          tower.logits(users, items, mp, fws, logits);
          p.resize(static_cast<std::size_t>(n));
          for (Index c = 0; c < n; ++c) p[static_cast<std::size_t>(c)] = 1.0 / (1.0 + std::exp(-double(logits[c])));
          return relu_pattern(fws);
        };

        const std::string label = describe(shape) + ", " + to_cstr(mk) + (shared_user ? ", shared user" : ", per-candidate users");
        Comparison item_part{label + ": d prob / d item"};
        Comparison user_part{label + ": d prob / d user"};
        std::vector<double> fd;
        // Item part: entry (i, c) of the item matrix moves only candidate c.
        for (Index c = 0; c < n; ++c)
          for (Index i = 0; i < items.rows(); ++i) {
            if (!central_difference(items(i, c), pattern, eval, fd)) {
              item_part.skip();
              continue;
            }
            for (Index o = 0; o < n; ++o)
              if (o != c) REQUIRE(fd[static_cast<std::size_t>(o)] == 0.0);  // other candidates untouched
            item_part.add(d_items(i, c), fd[static_cast<std::size_t>(c)]);
          }
        item_part.check();
        // User part (whole input = [user | item]): a shared user column moves every
        // candidate, and candidate c's change is its own per-candidate gradient column.
        if (shape.user_dim > 0) {
          for (Index uc = 0; uc < users.cols(); ++uc)
            for (Index i = 0; i < users.rows(); ++i) {
              if (!central_difference(users(i, uc), pattern, eval, fd)) {
                user_part.skip();
                continue;
              }
              for (Index c = 0; c < n; ++c) {
                if (!shared_user && c != uc) continue;
                user_part.add(d_user(i, c), fd[static_cast<std::size_t>(c)]);
              }
            }
          user_part.check();
        }
      }
    }
  }
}

TEST_CASE("every tower parameter gradient of the BCE loss matches finite differences", "[gradient]") {
  // All entries of every weight matrix and bias of every layer are checked.
  const Index n = 6;
  for (const Shape& shape : shapes()) {
    for (MaskKind mk : {MaskKind::None, MaskKind::Shared, MaskKind::PerCandidate}) {
      Rng rng(99 + shape.hidden.size() * 13 + shape.item_dim);
      Tower tower(shape.user_dim, shape.item_dim, shape.hidden);
      tower.initialize(rng);
      DropoutMask mask;
      Matrix users, items;
      draw_case(tower, mk, n, n, rng, mask, users, items);
      const DropoutMask* mp = mk == MaskKind::None ? nullptr : &mask;
      RowVector labels(n);
      for (Index c = 0; c < n; ++c) labels[c] = static_cast<Scalar>(c % 2);

      TowerWorkspace ws;
      tower.forward(users, items, mp, ws);
      RowVector d_logit;
      bce_loss(ws.logits(), labels, &d_logit);
      TowerGradients grads;
      tower.backward(d_logit, users, items, ws, &grads, nullptr, nullptr);
      const std::vector<bool> pattern = relu_pattern(ws);

      TowerWorkspace fws;
      auto eval = [&](std::vector<double>& loss) {
        tower.forward(users, items, mp, fws);
        loss.assign(1, bce_loss(fws.logits(), labels));
        return relu_pattern(fws);
      };
      Comparison cmp{describe(shape) + ", " + to_cstr(mk) + ": d BCE / d parameters"};
      std::vector<double> fd;
      for (std::size_t l = 0; l < tower.num_layers(); ++l) {
        REQUIRE(grads.weights[l].rows() == tower.weight(l).rows());
        REQUIRE(grads.weights[l].cols() == tower.weight(l).cols());
        for (Index i = 0; i < tower.weight(l).size(); ++i) {
          const auto set = [&](Scalar v) { tower.edit().weight(l).data()[i] = v; };
          if (central_difference(tower.weight(l).data()[i], set, pattern, eval, fd))
            cmp.add(grads.weights[l].data()[i], fd[0]);
          else
            cmp.skip();
        }
        REQUIRE(grads.biases[l].size() == tower.bias(l).size());
        for (Index i = 0; i < tower.bias(l).size(); ++i) {
          const auto set = [&](Scalar v) { tower.edit().bias(l).data()[i] = v; };
          if (central_difference(tower.bias(l).data()[i], set, pattern, eval, fd))
            cmp.add(grads.biases[l][i], fd[0]);
          else
            cmp.skip();
        }
      }
      cmp.check();
    }
  }
}

TEST_CASE("embedding-row gradients of the full model match finite differences", "[gradient]") {
  // Every field kind: categorical, multi-hot with sum and with mean pooling (with a repeated
  // id inside one bag and an empty bag), dense fields on both sides. Ids repeat across the
  // batch so that a row's gradient is accumulated over samples.
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 7, 3)
      .add_multi_hot("user_tags", Side::User, 11, 2, Pooling::Sum)
      .add_dense("user_dense", Side::User, 2)
      .add_categorical("item_id", Side::Item, 13, 3)
      .add_multi_hot("item_cats", Side::Item, 5, 2, Pooling::Mean)
      .add_dense("item_dense", Side::Item, 1);
  EmbeddingCtrModel model(layout, {8, 4});

  auto user = [](std::uint64_t id, std::vector<std::uint64_t> tags, float a, float b) {
    return SideInput{FieldInput{{id}, {}}, FieldInput{std::move(tags), {}}, FieldInput{{}, {a, b}}};
  };
  auto item = [](std::uint64_t id, std::vector<std::uint64_t> cats, float v) {
    return SideInput{FieldInput{{id}, {}}, FieldInput{std::move(cats), {}}, FieldInput{{}, {v}}};
  };
  const std::vector<Sample> batch{
      {user(1, {3, 4}, 0.5f, -0.2f), item(10, {1, 2}, 0.3f), 1.0f},
      {user(2, {4, 4, 9}, -0.7f, 0.1f), item(11, {2}, -0.5f), 0.0f},
      {user(1, {}, 0.2f, 0.9f), item(10, {0, 1, 3}, 0.8f), 0.0f},
      {user(5, {7}, 1.0f, -1.0f), item(12, {}, 0.0f), 1.0f},
      {user(6, {3, 8}, -0.3f, 0.4f), item(11, {4, 4}, -0.1f), 1.0f},
      {user(2, {1}, 0.6f, 0.6f), item(14, {3}, 0.4f), 0.0f},
  };
  const Index n = static_cast<Index>(batch.size());

  for (MaskKind mk : {MaskKind::None, MaskKind::Shared, MaskKind::PerCandidate}) {
    // The batch is fixed, so the first seed (from 2024 on) whose weights and mask keep every
    // kept hidden pre-activation at least 2 h away from the kink, with an active path for
    // every sample, is used.
    DropoutMask mask;
    const DropoutMask* mp = mk == MaskKind::None ? nullptr : &mask;
    TrainWorkspace ws;
    bool found = false;
    for (std::uint64_t seed = 2024; seed < 2024 + 5000 && !found; ++seed) {
      Rng rng(seed);
      model.initialize(rng, 0.5);
      if (mk != MaskKind::None) model.sample_mask(0.3, mk == MaskKind::Shared ? 1 : n, rng, mask);
      batch_loss(model, batch, mp, ws);
      found = true;
      for (Index c = 0; c < n; ++c) found = found && kink_distance(ws.tower, c) >= 2 * kStep;
    }
    REQUIRE(found);

    ModelGradients grads;
    const double loss = loss_and_gradients(model, batch, mp, ws, grads);
    const std::vector<bool> pattern = relu_pattern(ws.tower);
    TrainWorkspace fws;
    CHECK(batch_loss(model, batch, mp, fws) == Approx(loss).epsilon(1e-12));
    auto eval = [&](std::vector<double>& out) {
      out.assign(1, batch_loss(model, batch, mp, fws));
      return relu_pattern(fws.tower);
    };

    REQUIRE(grads.tables.size() == layout.size());
    Comparison rows_cmp{std::string(to_cstr(mk)) + ": d BCE / d embedding rows"};
    std::vector<double> fd;
    std::size_t used_rows = 0, unused_rows = 0;
    for (std::size_t f = 0; f < layout.size(); ++f) {
      const FieldSpec& spec = layout.field(f);
      if (!spec.has_table()) {
        CHECK(grads.tables[f].empty());  // dense fields have no parameters
        continue;
      }
      Matrix& table = model.tables().table(f);
      for (Index r = 0; r < table.cols(); ++r) {
        const Scalar* g = grads.tables[f].find(static_cast<std::size_t>(r));
        (g ? used_rows : unused_rows) += 1;
        for (Index k = 0; k < table.rows(); ++k) {
          if (!central_difference(table(k, r), pattern, eval, fd)) {
            rows_cmp.skip();
            continue;
          }
          if (g) {
            rows_cmp.add(g[k], fd[0]);
          } else {
            INFO("field " << spec.name << " row " << r << " is not used by the batch");
            CHECK(fd[0] == 0.0);  // an unused row does not touch the loss, and has no entry
          }
        }
      }
    }
    CHECK(used_rows > 10);
    CHECK(unused_rows > 5);
    rows_cmp.check();

    // The trainer's tower gradients too (a seeded random subset of 40 entries).
    Comparison tower_cmp{std::string(to_cstr(mk)) + ": trainer's d BCE / d tower parameters"};
    Rng pick(5);
    Tower& tower = model.tower();
    for (int s = 0; s < 40; ++s) {
      const std::size_t l = static_cast<std::size_t>(pick.below(tower.num_layers()));
      const bool is_bias = pick.bernoulli(0.2);
      const Index size = is_bias ? tower.bias(l).size() : tower.weight(l).size();
      const Index i = static_cast<Index>(pick.below(static_cast<std::uint64_t>(size)));
      const Scalar analytic = is_bias ? grads.tower.biases[l][i] : grads.tower.weights[l].data()[i];
      const auto set = [&](Scalar v) {
        Tower::Edit e = tower.edit();
        (is_bias ? e.bias(l).data() : e.weight(l).data())[i] = v;
      };
      const Scalar saved = (is_bias ? tower.bias(l).data() : tower.weight(l).data())[i];
      if (central_difference(saved, set, pattern, eval, fd))
        tower_cmp.add(analytic, fd[0]);
      else
        tower_cmp.skip();
    }
    tower_cmp.check();
  }
}
