// The tower's request passes (age/model/tower.hpp): one no-dropout pass per request,
// reused by the MC-Dropout, gradient and moved passes. Each must agree with the plain
// pass it replaces (forward on the full input), across tower shapes, mask kinds (the
// sparse rank-|J| update and the dense fallback), shared and per-candidate users, after
// narrowing to a subset of candidates; and the gradients with finite differences.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "age/model/embedding_model.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/tower.hpp"

using namespace age;

namespace {

struct Shape {
  std::size_t user_dim, item_dim;
  std::vector<std::size_t> hidden;
};

std::vector<Shape> shapes() {
  return {{5, 4, {16, 8}}, {0, 6, {12}}, {3, 5, {10, 7, 6}}, {4, 3, {}}, {16, 8, {64, 16}}, {6, 8, {40, 37}}};
}

std::string describe(const Shape& s) {
  std::ostringstream d;
  d << s.user_dim << "+" << s.item_dim;
  for (auto h : s.hidden) d << "-" << h;
  d << "-1";
  return d.str();
}

Matrix random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
  return m;
}

// Largest |a - b| relative to max(1, |b|).
Scalar max_rel_diff(const RowVector& a, const RowVector& b) {
  Scalar worst = 0;
  for (Index i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(Scalar(1), std::abs(b[i])));
  return worst;
}
Scalar max_rel_diff(const Matrix& a, const Matrix& b) {
  const Scalar scale = std::max(Scalar(1e-3), b.cwiseAbs().maxCoeff());
  return (a - b).cwiseAbs().maxCoeff() / scale;
}

// d logit / d items of the plain passes = d prob / d items / (y (1 - y)).
Matrix plain_logit_gradient(const Tower& tower, const Matrix& user, const Matrix& items, TowerWorkspace& ws) {
  RowVector prob(items.cols());
  Matrix g;
  tower.probability_gradient(user, items, nullptr, ws, prob, &g);
  for (Index j = 0; j < items.cols(); ++j) g.col(j) /= prob[j] * (1 - prob[j]);
  return g;
}

Tower initialized_tower(const Shape& shape, Rng& rng) {
  Tower tower(shape.user_dim, shape.item_dim, shape.hidden);
  tower.initialize(rng);
  return tower;
}

RowVector probabilities_of(const RowVector& z) {
  RowVector p(z.size());
  for (Index i = 0; i < z.size(); ++i) p[i] = sigmoid(z[i]);
  return p;
}

}  // namespace

TEST_CASE("request passes agree with the plain passes", "[request]") {
  const Index n = 9;
  for (const Shape& shape : shapes()) {
    for (bool shared_user : {true, false}) {
      INFO(describe(shape) << (shared_user ? ", shared user" : ", per-candidate users"));
      Rng rng(31 + shape.hidden.size());
      Tower tower(shape.user_dim, shape.item_dim, shape.hidden);
      tower.initialize(rng);
      const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), shared_user ? 1 : n, rng);
      const Matrix items = random_matrix(static_cast<Index>(shape.item_dim), n, rng);

      TowerWorkspace ws, plain;
      RowVector z(n), expected(n);
      tower.begin_request(user, items, ws, z);
      tower.logits(user, items, nullptr, plain, expected);
      // The same pass; begin_request reads the logits from the top layer's product, in
      // another order of the output layer's sum (gemm_kernel::OutputLogits).
      CHECK(max_rel_diff(z, expected) < 1e-6f);
      CHECK(tower.request_size(ws) == n);

      {  // dropout passes: sparse update, dense fallback, per-candidate masks
        // p = 0.01 and 0.2 take the rank-|J| update on most masks, 0.6 the dense path.
        for (double p : {0.01, 0.2, 0.6}) {
          for (Index columns : {Index{1}, n}) {
            for (int draw = 0; draw < 4; ++draw) {
              DropoutMask mask;
              tower.sample_mask(p, columns, rng, mask);
              tower.request_logits(&mask, ws, z);
              tower.logits(user, items, &mask, plain, expected);
              INFO("p = " << p << ", mask columns " << columns);
              CHECK(max_rel_diff(z, expected) < 1e-6f);
            }
          }
        }
        // No mask: the cached logits.
        tower.begin_request(user, items, ws, expected);
        tower.request_logits(nullptr, ws, z);
        CHECK(z == expected);
      }

      {  // input gradient at h and at h + dh, and the moved logits
        tower.begin_request(user, items, ws, z);
        const RowVector prob = probabilities_of(z);
        RowVector d_logit(n);
        for (Index i = 0; i < n; ++i) d_logit[i] = prob[i] * (1 - prob[i]);
        Matrix g(static_cast<Index>(shape.item_dim), n), g_plain;
        RowVector p_plain(n);
        tower.request_item_gradient(d_logit, ws, g);
        tower.probability_gradient(user, items, nullptr, plain, p_plain, &g_plain);
        CHECK(max_rel_diff(g, g_plain) < 1e-6f);

        // A move of moderate size, so that it changes the ReLU pattern of some units.
        const Matrix dh = Scalar(0.3) * random_matrix(items.rows(), n, rng);
        const Matrix moved = items + dh;
        tower.request_moved_logits(dh, ws, z);
        tower.logits(user, moved, nullptr, plain, expected);
        CHECK(max_rel_diff(z, expected) < 2e-6f);

        const RowVector moved_prob = probabilities_of(z);
        for (Index i = 0; i < n; ++i) d_logit[i] = moved_prob[i] * (1 - moved_prob[i]);
        tower.request_moved_item_gradient(d_logit, ws, g);
        tower.probability_gradient(user, moved, nullptr, plain, p_plain, &g_plain);
        CHECK(max_rel_diff(g, g_plain) < 1e-5f);
      }

      {  // narrowed to a subset of the candidates
        const std::vector<Index> keep{0, 3, 4, 8};
        const Index k = static_cast<Index>(keep.size());
        Matrix sub_items(items.rows(), k), sub_user(user.rows(), shared_user ? 1 : k);
        for (Index j = 0; j < k; ++j) {
          sub_items.col(j) = items.col(keep[static_cast<std::size_t>(j)]);
          if (!shared_user) sub_user.col(j) = user.col(keep[static_cast<std::size_t>(j)]);
        }
        if (shared_user) sub_user = user;
        tower.request_select(keep, ws);
        REQUIRE(tower.request_size(ws) == k);

        RowVector zk(k), ek(k);
        DropoutMask mask;
        tower.sample_mask(0.05, 1, rng, mask);
        tower.request_logits(&mask, ws, zk);
        tower.logits(sub_user, sub_items, &mask, plain, ek);
        CHECK(max_rel_diff(zk, ek) < 1e-6f);

        const Matrix dh = Scalar(0.1) * random_matrix(items.rows(), k, rng);
        tower.request_moved_logits(dh, ws, zk);
        tower.logits(sub_user, sub_items + dh, nullptr, plain, ek);
        CHECK(max_rel_diff(zk, ek) < 2e-6f);

        const RowVector ones = RowVector::Ones(k);
        Matrix g(items.rows(), k);
        tower.request_item_gradient(ones, ws, g);
        CHECK(max_rel_diff(g, plain_logit_gradient(tower, sub_user, sub_items, plain)) < 1e-5f);
      }
    }
  }
}

TEST_CASE("begin_request with a mask: the masked logits of request_logits, from the same pass", "[request]") {
  // The one-pass form (two hidden layers, a shared mask, the top layer on the product
  // kernel: {64, 16}, {40, 37} with rows past the last whole vector, {32, 16}) and its
  // fallbacks (per-candidate masks, the dense update at p = 0.6, a top layer narrower than
  // a vector, one or three hidden layers), on 1, 7 and 13 candidates (whole panels of the
  // kernel's 6 columns and the rest).
  const std::vector<Shape> shapes_here{{5, 4, {16, 8}}, {0, 6, {12}}, {3, 5, {10, 7, 6}}, {16, 8, {64, 16}},
                                       {6, 8, {40, 37}}, {7, 9, {32, 16}}, {3, 4, {20, 18, 17}}, {2, 3, {24}}};
  for (const Shape& shape : shapes_here) {
    Rng rng(91 + shape.hidden.size());
    const Tower tower = initialized_tower(shape, rng);
    for (Index n : {Index{1}, Index{7}, Index{13}}) {
      INFO(describe(shape) << ", " << n << " candidates");
      const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), 1, rng);
      const Matrix items = random_matrix(static_cast<Index>(shape.item_dim), n, rng);
      TowerWorkspace one, two, plain;
      RowVector z_one(n), masked_one(n), z_two(n), masked_two(n), expected(n);
      for (double p : {0.01, 0.2, 0.6}) {
        for (Index columns : {Index{1}, n}) {
          for (int draw = 0; draw < 3; ++draw) {
            INFO("p = " << p << ", mask columns " << columns << ", draw " << draw);
            DropoutMask mask;
            tower.sample_mask(p, columns, rng, mask);
            tower.begin_request(user, items, one, z_one, &mask, masked_one);
            tower.begin_request(user, items, two, z_two);
            tower.request_logits(&mask, two, masked_two);
            CHECK(z_one == z_two);  // the no-dropout pass is the same either way
            CHECK(max_rel_diff(masked_one, masked_two) < 1e-6f);
            tower.logits(user, items, &mask, plain, expected);
            CHECK(max_rel_diff(masked_one, expected) < 1e-6f);
            // The request goes on as after begin_request(): another mask, the gradient.
            DropoutMask other;
            tower.sample_mask(0.05, 1, rng, other);
            tower.request_logits(&other, one, masked_one);
            tower.request_logits(&other, two, masked_two);
            CHECK(max_rel_diff(masked_one, masked_two) < 1e-6f);
            Matrix g_one(items.rows(), n), g_two(items.rows(), n);
            tower.request_item_gradient(RowVector::Ones(n), one, g_one);
            tower.request_item_gradient(RowVector::Ones(n), two, g_two);
            CHECK(g_one == g_two);
          }
        }
      }
      // No mask: the masked logits are the logits.
      tower.begin_request(user, items, one, z_one, nullptr, masked_one);
      CHECK(masked_one == z_one);
    }
  }

  Rng rng(4);
  const Tower tower = initialized_tower({6, 8, {40, 37}}, rng);
  const Matrix user = random_matrix(6, 1, rng), items = random_matrix(8, 5, rng);
  TowerWorkspace ws;
  RowVector z(5), short_out(4);
  DropoutMask mask, wrong;
  tower.sample_mask(0.1, 1, rng, mask);
  CHECK_THROWS_WITH(tower.begin_request(user, items, ws, z, &mask, short_out), Catch::Contains("masked logits"));
  tower.sample_mask(0.1, 3, rng, wrong);  // 3 columns for 5 candidates
  CHECK_THROWS_AS(tower.begin_request(user, items, ws, z, &wrong, z), DimensionError);
}

TEST_CASE("backward after begin_request writes the top layer's ReLU the request pass skipped", "[request]") {
  // begin_request reads the logits from the top hidden layer's product and leaves that
  // layer's activation unwritten; backward() on the workspace must still see it.
  for (const Shape& shape : std::vector<Shape>{{6, 8, {40, 37}}, {2, 3, {24}}}) {
    INFO(describe(shape));
    Rng rng(12);
    const Tower tower = initialized_tower(shape, rng);
    const Index n = 9;
    const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), 1, rng);
    const Matrix items = random_matrix(static_cast<Index>(shape.item_dim), n, rng);
    const RowVector d_logit = RowVector::Random(n);
    TowerWorkspace request, plain;
    RowVector z(n);
    tower.begin_request(user, items, request, z);
    tower.forward(user, items, nullptr, plain);
    TowerGradients a, b;
    Matrix d_items_a, d_items_b;
    tower.backward(d_logit, user, items, request, &a, nullptr, &d_items_a);
    tower.backward(d_logit, user, items, plain, &b, nullptr, &d_items_b);
    for (std::size_t l = 0; l < tower.num_layers(); ++l) {
      CHECK(a.weights[l] == b.weights[l]);
      CHECK(a.biases[l] == b.biases[l]);
    }
    CHECK(d_items_a == d_items_b);
  }
}

TEST_CASE("request gradients match finite differences of the moved logits", "[request]") {
  // d z / d items at h + dh, from request_moved_item_gradient, against central differences
  // of request_moved_logits in dh (which must equal the logit at items + dh). Entries whose
  // step crosses a ReLU kink are skipped (at most a few).
  Rng rng(77);
  Tower tower(6, 5, {24, 12});
  tower.initialize(rng);
  const Index n = 4;
  const Matrix user = random_matrix(6, 1, rng), items = random_matrix(5, n, rng);
  Matrix dh = Scalar(0.2) * random_matrix(5, n, rng);
  TowerWorkspace ws;
  RowVector z(n), ones = RowVector::Ones(n);
  tower.begin_request(user, items, ws, z);
  tower.request_moved_logits(dh, ws, z);
  Matrix g(5, n);
  tower.request_moved_item_gradient(ones, ws, g);

  const Scalar step = 1e-2f;
  int compared = 0, skipped = 0;
  double diff2 = 0, ref2 = 0;
  RowVector plus(n), minus(n);
  for (Index c = 0; c < n; ++c) {
    for (Index i = 0; i < 5; ++i) {
      const Scalar saved = dh(i, c);
      dh(i, c) = saved + step;
      tower.request_moved_logits(dh, ws, plus);
      dh(i, c) = saved - step;
      tower.request_moved_logits(dh, ws, minus);
      dh(i, c) = saved;
      const double fd = (double(plus[c]) - double(minus[c])) / (2.0 * step);
      // A kink inside the step shows as a second difference far from zero: skip it.
      tower.request_moved_logits(dh, ws, z);
      const double curvature = std::abs(double(plus[c]) + double(minus[c]) - 2.0 * double(z[c]));
      if (curvature > 1e-4) {
        ++skipped;
        continue;
      }
      ++compared;
      diff2 += (fd - g(i, c)) * (fd - g(i, c));
      ref2 += fd * fd;
      CHECK(std::abs(fd - g(i, c)) <= 2e-3 * std::max(1.0, std::abs(fd)));
    }
  }
  CHECK(compared >= 16);
  CHECK(skipped <= 4);
  CHECK(ref2 > 0);
  CHECK(std::sqrt(diff2) <= 1e-3 * std::sqrt(ref2));
}

TEST_CASE("request passes refuse a workspace without a request and bad arguments", "[request]") {
  Rng rng(5);
  Tower tower(4, 3, {8});
  tower.initialize(rng);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(3, 5, rng);
  TowerWorkspace ws;
  RowVector z(5);
  CHECK_THROWS_WITH(tower.request_logits(nullptr, ws, z), Catch::Contains("begin_request"));
  CHECK_THROWS_AS(tower.request_size(ws), InputError);

  tower.begin_request(user, items, ws, z);
  Matrix g(3, 5);
  CHECK_THROWS_AS(tower.request_moved_item_gradient(RowVector::Ones(5), ws, g), InputError);  // no moved pass
  CHECK_THROWS_AS(tower.request_moved_logits(Matrix::Zero(2, 5), ws, z), DimensionError);
  RowVector short_out(4);
  CHECK_THROWS_AS(tower.request_logits(nullptr, ws, short_out), DimensionError);
  DropoutMask wrong;
  tower.sample_mask(0.1, 3, rng, wrong);  // 3 columns for 5 candidates
  CHECK_THROWS_AS(tower.request_logits(&wrong, ws, z), DimensionError);
  const std::vector<Index> unordered{2, 1};
  CHECK_THROWS_WITH(tower.request_select(unordered, ws), Catch::Contains("keep[1]"));
  const std::vector<Index> outside{0, 5};
  CHECK_THROWS_AS(tower.request_select(outside, ws), InputError);

  // A forward pass on the workspace ends the request.
  tower.logits(user, items, nullptr, ws, z);
  CHECK_THROWS_AS(tower.request_logits(nullptr, ws, z), InputError);
}

TEST_CASE("EmbeddingCtrModel forwards the request passes to its tower", "[request]") {
  static_assert(RequestPassModel<Tower> && RequestPassModel<EmbeddingCtrModel>);
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 50, 4).add_categorical("item_id", Side::Item, 50, 4);
  EmbeddingCtrModel model(layout, {8});
  Rng rng(3);
  model.initialize(rng, 0.5);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(4, 3, rng);
  TowerWorkspace a, b;
  RowVector za(3), zb(3);
  model.begin_request(user, items, a, za);
  model.tower().begin_request(user, items, b, zb);
  CHECK(za == zb);
  DropoutMask mask;
  model.sample_mask(0.2, 1, rng, mask);
  model.request_logits(&mask, a, za);
  model.tower().request_logits(&mask, b, zb);
  CHECK(za == zb);
}

TEST_CASE("certified linear moves: the radius keeps every ReLU, and the scores equal the full passes", "[request]") {
  int certified = 0, in_full = 0;
  for (const Shape& shape : shapes()) {
    INFO(describe(shape));
    Rng rng(91 + shape.hidden.size());
    Tower tower = initialized_tower(shape, rng);
    Tower full = tower;
    full.set_linear_moves(false);
    REQUIRE(tower.linear_moves());
    const Index n = 40, di = static_cast<Index>(shape.item_dim);
    const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), 1, rng);
    const Matrix items = random_matrix(di, n, rng);
    TowerWorkspace ws, ws_full, plain, plain_moved;
    RowVector z(n), z_full(n), r(n);
    tower.begin_request(user, items, ws, z);
    tower.request_linear_radius(ws, r);

    // 1. A move just inside the radius, in a random direction, changes no unit's sign.
    tower.forward(user, items, nullptr, plain);
    Matrix dh(di, n);
    for (Index c = 0; c < n; ++c) {
      const Vector u = random_matrix(di, 1, rng);
      const Scalar length = std::isfinite(r[c]) ? Scalar(0.999) * r[c] : Scalar(1);
      dh.col(c) = length * u.normalized();
    }
    tower.forward(user, items + dh, nullptr, plain_moved);
    for (std::size_t l = 0; l < shape.hidden.size(); ++l)
      CHECK(((plain.pre[l].array() > 0) == (plain_moved.pre[l].array() > 0)).all());
    CHECK((r.array() > 0).count() >= n / 2);

    // 2. Moves from tiny (all certified) to large (none): logits and PGD-style gradients at
    //    h + dh equal those of the full passes.
    for (Scalar scale : {Scalar(1e-4), Scalar(1e-2), Scalar(0.3)}) {
      INFO("move scale " << scale);
      tower.begin_request(user, items, ws, z);
      full.begin_request(user, items, ws_full, z_full);
      const RowVector prob = probabilities_of(z);
      RowVector d_logit(n);
      for (Index i = 0; i < n; ++i) d_logit[i] = prob[i] * (1 - prob[i]);
      Matrix g(di, n), g_full(di, n);
      tower.request_item_gradient(d_logit, ws, g);
      full.request_item_gradient(d_logit, ws_full, g_full);
      CHECK(max_rel_diff(g, g_full) < 1e-5f);

      const Matrix move = scale * random_matrix(di, n, rng);
      tower.request_linear_radius(ws, r);
      for (Index c = 0; c < n; ++c) (move.col(c).norm() < r[c] ? certified : in_full) += 1;
      tower.request_moved_logits(move, ws, z);
      full.request_moved_logits(move, ws_full, z_full);
      CHECK(max_rel_diff(z, z_full) < 2e-6f);

      const RowVector moved_prob = probabilities_of(z_full);
      for (Index i = 0; i < n; ++i) d_logit[i] = moved_prob[i] * (1 - moved_prob[i]);
      tower.request_moved_item_gradient(d_logit, ws, g);
      full.request_moved_item_gradient(d_logit, ws_full, g_full);
      CHECK(max_rel_diff(g, g_full) < 1e-5f);
    }
  }
  // Both branches ran: candidates certified, and candidates whose move needed the pass.
  CHECK(certified > 100);
  CHECK(in_full > 20);
}

TEST_CASE("the one-pass normalised move equals the gradient, the move and the moved pass", "[request]") {
  // request_normalized_move_logits (FGM's explored logits) against its three steps, for
  // moves from tiny (all certified) to large (all in full), on every shape, after a
  // request_select, with a zero d_logit (no move), a negative one, a zero length and
  // negative lengths.
  int certified = 0, in_full = 0;
  for (const Shape& shape : shapes()) {
    INFO(describe(shape));
    Rng rng(97 + shape.hidden.size());
    const Tower tower = initialized_tower(shape, rng);
    const Index n = 40, di = static_cast<Index>(shape.item_dim);
    const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), 1, rng);
    const Matrix items = random_matrix(di, n, rng);
    std::vector<Index> keep;
    for (Index i = 0; i < n; i += 2) keep.push_back(i + (i % 3 == 0));
    const Index k = static_cast<Index>(keep.size());
    for (Scalar scale : {Scalar(1e-4), Scalar(1e-2), Scalar(0.5), Scalar(3)}) {
      INFO("move length scale " << scale);
      TowerWorkspace ws, steps;
      RowVector z(n), z_steps(n), one_pass(k), expected(k), radius(k);
      tower.begin_request(user, items, ws, z);
      tower.begin_request(user, items, steps, z_steps);
      tower.request_select(keep, ws);
      tower.request_select(keep, steps);
      RowVector d_logit = probabilities_of(z_steps.head(k)), length(k);
      for (Index j = 0; j < k; ++j) {
        d_logit[j] *= 1 - d_logit[j];
        length[j] = scale * static_cast<Scalar>(rng.normal());
      }
      d_logit[1] = 0;  // a zero gradient: no move
      length[2] = 0;
      d_logit[3] = -d_logit[3];  // the move follows g_n = d_logit[n] d z_n / d items

      REQUIRE(tower.request_normalized_move_logits(d_logit, length, ws, one_pass));
      Matrix g(di, k);
      tower.request_item_gradient(d_logit, steps, g);
      tower.request_linear_radius(steps, radius);
      Matrix move = Matrix::Zero(di, k);
      for (Index j = 0; j < k; ++j) {
        const double norm = static_cast<double>(g.col(j).norm());
        if (norm > 0) move.col(j) = g.col(j) * static_cast<Scalar>(length[j] / norm);
        (std::abs(length[j]) < radius[j] ? certified : in_full) += norm > 0;
      }
      tower.request_moved_logits(move, steps, expected);
      CHECK(max_rel_diff(one_pass, expected) < 2e-6f);
      CHECK(one_pass[1] == z_steps[keep[1]]);
      CHECK(one_pass[2] == z_steps[keep[2]]);

      // The pass it leaves behind: the gradient at h + dh as request_moved_logits' is.
      Matrix g_one(di, k), g_steps(di, k);
      tower.request_moved_item_gradient(d_logit, ws, g_one);
      tower.request_moved_item_gradient(d_logit, steps, g_steps);
      CHECK(max_rel_diff(g_one, g_steps) < 1e-5f);
    }
  }
  CHECK(certified > 100);
  CHECK(in_full > 100);

  // Without certified moves it computes nothing and says so.
  Rng rng(98);
  Tower tower(4, 6, {16, 8});
  tower.initialize(rng);
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, 5, rng);
  TowerWorkspace ws;
  RowVector z(5), out = RowVector::Constant(5, 7.0f);
  const RowVector ones = RowVector::Ones(5);
  tower.begin_request(user, items, ws, z);
  tower.set_linear_moves(false);
  CHECK_FALSE(tower.request_normalized_move_logits(ones, ones, ws, out));
  CHECK(out == RowVector::Constant(5, 7.0f));
  tower.set_linear_moves(true);
  CHECK(tower.request_normalized_move_logits(ones, ones, ws, out));
  CHECK_THROWS_AS(tower.request_normalized_move_logits(RowVector::Ones(4), ones, ws, out), DimensionError);
}

TEST_CASE("certified linear moves: the bounds of edited weights, rebuilt when the edit ends", "[request]") {
  Rng rng(93);
  Tower tower(4, 6, {16, 8});
  tower.initialize(rng);
  const Index n = 5;
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, n, rng);
  TowerWorkspace ws, plain;
  RowVector z(n), expected(n), r(n), ones = RowVector::Ones(n);
  {
    Tower::Edit e = tower.edit();
    e.weight(1)(2, 3) += 0.25f;
    CHECK_THROWS_WITH(tower.begin_request(user, items, ws, z), Catch::Contains("Tower::Edit"));
  }
  tower.begin_request(user, items, ws, z);
  Matrix g(6, n);
  tower.request_item_gradient(ones, ws, g);
  const Matrix move = Scalar(1e-4) * random_matrix(6, n, rng);
  tower.request_moved_logits(move, ws, z);
  CHECK(ws.request.stage == RequestStage::gradient_linear);
  tower.logits(user, items + move, nullptr, plain, expected);
  CHECK(max_rel_diff(z, expected) < 2e-6f);
  tower.begin_request(user, items, ws, z);
  tower.request_linear_radius(ws, r);
  CHECK((r.array() > 0).all());
}

TEST_CASE("request_select: the passes read the kept candidates in place, also after a second select", "[request]") {
  // With and without the gradient table (the top product by lookups, or on the kernel
  // with its gathered ReLU gates); a 2-hidden-layer tower (the fused dropout logit), a
  // 3-hidden-layer one (the rank-|J| column, then products) and one whose layers are
  // narrower than a vector (Eigen's products, the gates gathered column by column).
  for (const Shape& shape : {Shape{6, 8, {40, 37}}, Shape{3, 5, {10, 7, 6}}, Shape{2, 3, {3, 2}}}) {
    for (bool tables : {true, false}) {
      INFO(describe(shape) << (tables ? ", tables" : ", no tables"));
      Rng rng(47 + shape.hidden.size());
      Tower tower(shape.user_dim, shape.item_dim, shape.hidden);
      tower.initialize(rng);
      tower.set_gradient_tables(tables);
      const Index n = 13;
      const Matrix user = random_matrix(static_cast<Index>(shape.user_dim), 1, rng);
      const Matrix items = random_matrix(static_cast<Index>(shape.item_dim), n, rng);
      TowerWorkspace ws, plain;
      RowVector z(n);
      tower.begin_request(user, items, ws, z);
      const RowVector all_logits = z;

      // {1, 4, 5, 9, 12}, then its positions {0, 2, 4}: candidates 1, 5 and 12.
      const std::vector<Index> first{1, 4, 5, 9, 12}, second{0, 2, 4}, kept{1, 5, 12};
      tower.request_select(first, ws);
      tower.request_select(second, ws);
      const Index k = 3;
      REQUIRE(tower.request_size(ws) == k);
      Matrix sub_items(items.rows(), k);
      for (Index j = 0; j < k; ++j) sub_items.col(j) = items.col(kept[static_cast<std::size_t>(j)]);

      RowVector zk(k), ek(k);
      tower.request_logits(nullptr, ws, zk);
      for (Index j = 0; j < k; ++j) CHECK(zk[j] == all_logits[kept[static_cast<std::size_t>(j)]]);
      for (double p : {0.05, 0.6}) {  // the rank-|J| update and the dense product
        DropoutMask mask;
        tower.sample_mask(p, 1, rng, mask);
        tower.request_logits(&mask, ws, zk);
        tower.logits(user, sub_items, &mask, plain, ek);
        CAPTURE(p);
        CHECK(max_rel_diff(zk, ek) < 1e-6f);
      }

      const RowVector ones = RowVector::Ones(k);
      Matrix g(items.rows(), k);
      tower.request_item_gradient(ones, ws, g);
      CHECK(max_rel_diff(g, plain_logit_gradient(tower, user, sub_items, plain)) < 1e-5f);

      // Moves both certified (tiny) and run in full (large), from the kept columns.
      for (Scalar scale : {Scalar(1e-5), Scalar(0.5)}) {
        const Matrix dh = scale * random_matrix(items.rows(), k, rng);
        tower.request_moved_logits(dh, ws, zk);
        tower.logits(user, sub_items + dh, nullptr, plain, ek);
        CAPTURE(scale);
        CHECK(max_rel_diff(zk, ek) < 2e-6f);
      }
      {
        RowVector r(k), r_all(n);
        tower.request_linear_radius(ws, r);
        TowerWorkspace fresh;
        tower.begin_request(user, items, fresh, z);
        tower.request_linear_radius(fresh, r_all);
        for (Index j = 0; j < k; ++j) CHECK(r[j] == r_all[kept[static_cast<std::size_t>(j)]]);
      }
    }
  }
}

TEST_CASE("the request's stage: what each pass requires and leaves", "[request]") {
  Rng rng(71);
  Tower tower(4, 6, {16, 8});
  tower.initialize(rng);
  const Index n = 5;
  const Matrix user = random_matrix(4, 1, rng), items = random_matrix(6, n, rng);
  TowerWorkspace ws;
  RowVector z(n), ones = RowVector::Ones(n);
  Matrix g(6, n);
  const Matrix tiny = Scalar(1e-6) * random_matrix(6, n, rng);
  CHECK(ws.request.stage == RequestStage::none);
  CHECK_THROWS_AS(tower.request_size(ws), InputError);
  tower.begin_request(user, items, ws, z);
  CHECK(ws.request.stage == RequestStage::cached);
  CHECK_THROWS_WITH(tower.request_moved_item_gradient(ones, ws, g), Catch::Contains("request_moved_logits"));
  tower.request_moved_logits(tiny, ws, z);  // no gradient yet: in full
  CHECK(ws.request.stage == RequestStage::moved);
  tower.request_item_gradient(ones, ws, g);  // the moved pass stays readable
  CHECK(ws.request.stage == RequestStage::gradient_moved);
  tower.request_moved_item_gradient(ones, ws, g);
  tower.request_moved_logits(tiny, ws, z);  // certified now
  CHECK(ws.request.stage == RequestStage::gradient_linear);
  DropoutMask mask;
  tower.sample_mask(0.2, 1, rng, mask);
  tower.request_logits(&mask, ws, z);  // reuses the moved pass's buffers
  CHECK(ws.request.stage == RequestStage::gradient);
  const std::vector<Index> keep{1, 3};
  tower.request_select(keep, ws);
  CHECK(ws.request.stage == RequestStage::cached);
  tower.logits(user, items, nullptr, ws, z);  // a plain pass ends the request
  CHECK(ws.request.stage == RequestStage::none);
  CHECK_THROWS_AS(tower.request_logits(nullptr, ws, z), InputError);
}

TEST_CASE("request_paths() names the shortcuts a tower's shape takes", "[request]") {
  const std::size_t w = static_cast<std::size_t>(simd::kWidth);
  struct Case {
    std::vector<std::size_t> hidden;
    bool without_relu, two_layer, table;
  };
  for (const Case& c : {Case{{2 * w}, true, false, true}, Case{{2 * w, w}, true, true, true},
                        Case{{2 * w, w, w}, true, false, true}, Case{{2 * w, 1}, false, false, true},
                        Case{{}, false, false, false}, Case{{w, 130}, true, true, false}}) {
    Tower tower(3, 2 * w, c.hidden);
    INFO("hidden layers " << c.hidden.size());
    const TowerRequestPaths p = tower.request_paths();
    CHECK(p.first_pass_without_relu == c.without_relu);
    CHECK(p.two_layer_masked_logits == c.two_layer);
    CHECK(p.gradient_table == c.table);
    CHECK(p.certified_moves);
    tower.set_linear_moves(false);
    tower.set_gradient_tables(false);
    CHECK_FALSE(tower.request_paths().certified_moves);
    CHECK_FALSE(tower.request_paths().gradient_table);
  }
}
