#include <catch2/catch.hpp>

#include "age/model/tower.hpp"

using namespace age;

namespace {
// Reference forward pass written from the definition, on one column at a time, with the
// first layer NOT split: logit = w_L ReLU(... ReLU(W0 [u; i] + b0) ...) + b_L.
Scalar reference_logit(const Tower& t, const Vector& u, const Vector& it, const DropoutMask* mask, Index col) {
  Vector x(static_cast<Index>(t.input_dim()));
  x << u, it;
  for (std::size_t l = 0; l < t.num_layers(); ++l) {
    Vector y = t.weight(l) * x + t.bias(l);
    if (l + 1 < t.num_layers()) {
      y = y.cwiseMax(Scalar(0));
      if (mask) {
        const Matrix& m = mask->layers[l];
        y = y.cwiseProduct(m.col(m.cols() == 1 ? 0 : col));
      }
    }
    x = y;
  }
  return x(0);
}
}  // namespace

TEST_CASE("split first layer matches the unsplit definition", "[tower]") {
  Rng rng(7);
  Tower t(5, 3, {8, 4});
  t.initialize(rng);
  Matrix items = Matrix::Random(3, 6);
  Vector user = Vector::Random(5);
  TowerWorkspace ws;
  RowVector out(6);

  SECTION("no mask, shared user") {
    t.logits(user, items, nullptr, ws, out);
    for (Index n = 0; n < 6; ++n)
      CHECK(out[n] == Approx(reference_logit(t, user, items.col(n), nullptr, n)).margin(1e-6));
  }
  SECTION("per-candidate mask and per-candidate users") {
    DropoutMask mask;
    t.sample_mask(0.3, 6, rng, mask);
    Matrix users = Matrix::Random(5, 6);
    t.logits(users, items, &mask, ws, out);
    for (Index n = 0; n < 6; ++n)
      CHECK(out[n] == Approx(reference_logit(t, users.col(n), items.col(n), &mask, n)).margin(1e-6));
  }
}

TEST_CASE("tower rejects inputs of the wrong shape with a message naming the dimension", "[tower]") {
  Tower t(5, 3, {8});
  TowerWorkspace ws;
  RowVector out(2);
  CHECK_THROWS_WITH(t.logits(Vector::Zero(4), Matrix::Zero(3, 2), nullptr, ws, out),
                    Catch::Contains("user rows (user_dim): expected 5, got 4"));
  CHECK_THROWS_AS(t.logits(Vector::Zero(5), Matrix::Zero(2, 2), nullptr, ws, out), DimensionError);
  CHECK_THROWS_AS(t.logits(Vector::Zero(5), Matrix::Zero(3, 0), nullptr, ws, out), InputError);
  CHECK_THROWS_AS(Tower(5, 3, {0}), ConfigError);
}
