// The tower's product kernel (age/model/gemm.hpp) against Eigen's products, on every
// block and tail shape: rows around the vector width and the register block, candidate
// counts around the column block, operands that are column ranges of larger matrices;
// the transposed weight copies a Tower rebuilds when an Edit ends; and the vector seam
// under them (age/core/simd.hpp), operation by operation against scalar code.
//
// This file is also built with -mavx2 -mfma, with -march=native and with
// -DAGE_SIMD_PORTABLE (tests/CMakeLists.txt: age_test_gemm_avx2, _native, _portable), so
// that the 8- and 16-float kernels and the seam's scalar fallback are checked as well as
// the default 4-float (SSE2) one; the first case names the width it ran.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "age/core/rng.hpp"
#include "age/core/simd.hpp"
#include "age/model/gemm.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower.hpp"
#include "age/train/optimizer.hpp"

namespace {

using namespace age;

Matrix random_matrix(Index rows, Index cols, Rng& rng) {
  Matrix m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.uniform(-1, 1));
  return m;
}

// Largest |a - b| relative to the size of a sum of k products of values in [-1, 1].
double max_error(const Matrix& a, const Matrix& b, Index k) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / std::sqrt(static_cast<double>(std::max<Index>(k, 1)));
}

}  // namespace

TEST_CASE("product kernel: equals Eigen's product for every block and tail shape", "[gemm]") {
  const Index kWidth = detail::gemm_kernel::kWidth, kCols = detail::gemm_kernel::kCols,
              kRowVectors = detail::gemm_kernel::kRowVectors;
  INFO("vector width " << kWidth << " floats, block " << kRowVectors << " x " << kCols);
  const Index block_rows = kRowVectors * kWidth;
  Rng rng(11, 3);
  // Rows: below one vector, one vector, a block, and each with one more or one fewer.
  for (Index m : {Index{1}, Index{3}, kWidth - 1, kWidth, kWidth + 1, block_rows - 1, block_rows, block_rows + 1,
                  2 * block_rows + kWidth + 3, Index{256}}) {
    for (Index n : {Index{1}, Index{2}, kCols - 1, kCols, kCols + 1, 2 * kCols + 1, Index{10}, Index{37}}) {
      for (Index k : {Index{1}, Index{7}, Index{64}}) {
        CAPTURE(m, n, k);
        const Matrix a = random_matrix(m, k, rng), x = random_matrix(k, n, rng), y0 = random_matrix(m, n, rng);
        const Vector c = random_matrix(m, 1, rng);
        const Matrix expected_assign = a * x;

        Matrix y = y0;
        detail::gemm_assign(y, a, x);
        CHECK(max_error(y, expected_assign, k) < 1e-6);

        y = y0;
        detail::gemm_add(y, a, x);
        CHECK(max_error(y, y0 + expected_assign, k) < 1e-6);

        y = y0;
        detail::gemm_from_column(y, c, a, x);
        const Matrix expected_column = (expected_assign.colwise() + c).eval();
        CHECK(max_error(y, expected_column, k) < 1e-6);

        // X read through its ReLU: the product on max(x, 0) (the same terms in the same
        // order; the compiler may contract the scalar tail rows' multiply-adds differently).
        y = y0;
        detail::gemm_from_column(y, c, a, x, {}, /*relu_x=*/true);
        Matrix y_relu = y0;
        detail::gemm_from_column(y_relu, c, a, x.cwiseMax(Scalar(0)));
        CHECK(max_error(y, y_relu, k) < 1e-6);
        CHECK(max_error(y, (a * x.cwiseMax(Scalar(0))).colwise() + c, k) < 1e-6);

        // The finishes: ReLU written alongside (exactly max(y, 0) of the y written), and
        // y zeroed where a sign matrix is not positive (every other row and column too,
        // so that each lane of a vector and each tail takes both branches).
        Matrix relu = Matrix::Constant(m, n, Scalar(-7));
        y = y0;
        detail::gemm_from_column(y, c, a, x, detail::also_relu(relu));
        CHECK(max_error(y, expected_column, k) < 1e-6);
        CHECK(relu == y.cwiseMax(Scalar(0)));

        Matrix sign = random_matrix(m, n, rng);
        for (Index j = 0; j < n; j += 2) sign.col(j).setZero();
        y = y0;
        detail::gemm_assign(y, a, x, detail::keep_if_positive(sign));
        const Matrix expected_kept = (sign.array() > Scalar(0)).select(expected_assign, Scalar(0));
        CHECK(max_error(y, expected_kept, k) < 1e-6);
        CHECK(((sign.array() > Scalar(0)) || (y.array() == Scalar(0))).all());

        // ... with the sign columns picked by an index list (reversed, from a wider matrix).
        Matrix wide_sign = random_matrix(m, n + 3, rng);
        std::vector<Index> picked(static_cast<std::size_t>(n));
        for (Index j = 0; j < n; ++j) picked[static_cast<std::size_t>(j)] = n + 2 - j;
        y = y0;
        detail::gemm_assign(y, a, x, detail::keep_if_positive(wide_sign, picked.data()));
        for (Index j = 0; j < n; ++j) {
          const auto s_col = wide_sign.col(picked[static_cast<std::size_t>(j)]).array();
          const Matrix expected_col = (s_col > Scalar(0)).select(expected_assign.col(j).array(), Scalar(0)).matrix();
          CHECK(max_error(y.col(j), expected_col, k) < 1e-6);
        }
      }
    }
  }
}

TEST_CASE("product kernel: the ReLU finish keeps NaN and -0 as Eigen's cwiseMax(0) does", "[gemm]") {
  // Rows past one vector plus a scalar tail, so that both code paths see the values.
  // y = -0 + I x: column 0 all NaN (0 * NaN), column 1 all -0, column 2 -1 and 2.
  const Index m = detail::gemm_kernel::kWidth + 3;
  const Matrix identity = Matrix::Identity(m, m);
  Matrix x(m, 3);
  x.col(0).setConstant(Scalar(-1));
  x(0, 0) = std::numeric_limits<Scalar>::quiet_NaN();
  x.col(1).setConstant(Scalar(-0.0));
  for (Index i = 0; i < m; ++i) x(i, 2) = (i % 2) ? Scalar(2) : Scalar(-1);
  const Vector minus_zero = Vector::Constant(m, Scalar(-0.0));
  Matrix y(m, 3), relu(m, 3);
  detail::gemm_from_column(y, minus_zero, identity, x, detail::also_relu(relu));
  const Matrix eigen_relu = y.cwiseMax(Scalar(0));
  for (Index j = 0; j < 3; ++j)
    for (Index i = 0; i < m; ++i) {
      CAPTURE(i, j, y(i, j));
      CHECK(std::isnan(relu(i, j)) == std::isnan(eigen_relu(i, j)));
      CHECK(std::signbit(relu(i, j)) == std::signbit(eigen_relu(i, j)));
      if (!std::isnan(relu(i, j))) CHECK(relu(i, j) == eigen_relu(i, j));
    }
  CHECK(std::isnan(relu(m - 1, 0)));     // NaN stays NaN ...
  CHECK(std::signbit(relu(m - 1, 1)));   // ... and -0 stays -0 in the tail rows too
  CHECK(relu(1, 2) == Scalar(2));
}

TEST_CASE("product kernel: an X read through its ReLU keeps NaN and -0 as the stored ReLU does", "[gemm]") {
  // relu_x must give what a product over relu_copy's output gives: NaN and -0 of X kept
  // (NaN propagates, -0 times a weight adds a signed zero), in the vector rows and the tail.
  const Index m = detail::gemm_kernel::kWidth + 3, k = 4;
  Matrix x(k, 3);
  x << std::numeric_limits<Scalar>::quiet_NaN(), Scalar(-0.0), Scalar(2),  //
      Scalar(-1), Scalar(-0.0), Scalar(-3),                                //
      Scalar(0.5), Scalar(-0.0), Scalar(-0.0),                             //
      Scalar(-2), Scalar(-0.0), Scalar(1);
  Matrix a = Matrix::Ones(m, k);
  a(0, 3) = Scalar(-1);
  const Vector minus_zero = Vector::Constant(m, Scalar(-0.0));
  // The ReLU as the forward pass stores it (relu_copy: v < 0 ? 0 : v).
  Matrix stored(k, 3), y(m, 3), expected(m, 3);
  for (Index i = 0; i < x.size(); ++i) stored.data()[i] = x.data()[i] < 0 ? Scalar(0) : x.data()[i];
  detail::gemm_from_column(y, minus_zero, a, x, {}, /*relu_x=*/true);
  detail::gemm_from_column(expected, minus_zero, a, stored);
  for (Index j = 0; j < 3; ++j)
    for (Index i = 0; i < m; ++i) {
      CAPTURE(i, j, y(i, j), expected(i, j));
      CHECK(std::isnan(y(i, j)) == std::isnan(expected(i, j)));
      if (!std::isnan(y(i, j))) {
        CHECK(y(i, j) == expected(i, j));
        CHECK(std::signbit(y(i, j)) == std::signbit(expected(i, j)));
      }
    }
  CHECK(std::isnan(y(m - 1, 0)));   // the NaN of X reaches the tail rows
  CHECK(std::signbit(y(m - 1, 1)));  // -0 + sum of -0 terms stays -0
  CHECK(y(0, 2) == Scalar(1));       // 2 + 0 - 0 - 1
}

TEST_CASE("product kernel: operands that are column ranges of larger matrices", "[gemm]") {
  Rng rng(12, 3);
  // W = [W_user | W_item] as in the tower: the item block starts mid-matrix, with the
  // full matrix's column stride; the output is the first columns of a wider scratch.
  const Matrix w = random_matrix(67, 30, rng);
  const auto w_item = w.rightCols(11);
  const Matrix items = random_matrix(11, 9, rng);
  Matrix scratch = Matrix::Constant(67, 20, 5.0f);
  detail::gemm_assign(scratch.leftCols(9), w_item, items);
  const Matrix expected = w_item * items;
  CHECK(max_error(scratch.leftCols(9), expected, 11) < 1e-6);
  // Columns beyond the output are untouched.
  CHECK((scratch.rightCols(11).array() == 5.0f).all());
  // An input block with a column stride larger than its rows (the top rows of a matrix).
  const Matrix tall = random_matrix(40, 9, rng);
  const auto x_rows = tall.topRows(11);
  Matrix y(67, 9);
  detail::gemm_assign(y, w_item, x_rows);
  CHECK(max_error(y, w_item * x_rows, 11) < 1e-6);
}

// A tower with t's weights, built from scratch (its tables never saw other weights).
Tower fresh_copy(const Tower& t) {
  Tower copy(t.user_dim(), t.item_dim(), t.hidden());
  Tower::Edit e = copy.edit();
  for (std::size_t l = 0; l < t.num_layers(); ++l) {
    e.weight(l) = t.weight(l);
    e.bias(l) = t.bias(l);
  }
  return copy;
}

TEST_CASE("tower: an edit rebuilds the tables the input gradient reads, and no pass runs while it is open",
          "[gemm]") {
  Rng rng(13, 3);
  Tower tower(20, 24, {40, 17});
  tower.initialize(rng);
  REQUIRE_FALSE(tower.editing());  // initialize() commits
  const Matrix user = random_matrix(20, 1, rng), items = random_matrix(24, 9, rng);

  TowerWorkspace ws;
  RowVector prob(9);
  Matrix before, edited, reference;
  tower.probability_gradient(user, items, nullptr, ws, prob, &before);
  {
    Tower::Edit e = tower.edit();
    e.weight(1)(3, 5) += 0.5f;
    e.weight(0)(7, 20 + 2) -= 0.25f;  // an item-part weight of layer 0
    CHECK(tower.editing());
    // The tables still hold the old weights: every pass refuses.
    CHECK_THROWS_WITH(tower.probability_gradient(user, items, nullptr, ws, prob, &edited),
                      Catch::Contains("Tower::Edit"));
    CHECK_THROWS_AS(tower.begin_request(user, items, ws, prob), InputError);
    CHECK_THROWS_AS(tower.logits(user, items, nullptr, ws, prob), InputError);
  }
  CHECK_FALSE(tower.editing());
  tower.probability_gradient(user, items, nullptr, ws, prob, &edited);
  CHECK(max_error(edited, before, 40) > 1e-4);
  // The same gradient as a tower that only ever had the new weights.
  const Tower fresh = fresh_copy(tower);
  TowerWorkspace fresh_ws;
  fresh.probability_gradient(user, items, nullptr, fresh_ws, prob, &reference);
  CHECK(max_error(edited, reference, 40) == 0.0);
  // Nested edits commit once, when the last one ends.
  {
    Tower::Edit outer = tower.edit();
    { Tower::Edit inner = tower.edit(); }
    CHECK(tower.editing());
  }
  CHECK_FALSE(tower.editing());
  CHECK_THROWS_AS(tower.edit().weight(9), std::exception);
}

TEST_CASE("tower: an optimizer step rebuilds the tables of the weights it changes", "[gemm]") {
  Rng rng(14, 3);
  Tower tower(6, 8, {16});
  tower.initialize(rng);
  TowerGradients grads;
  for (std::size_t l = 0; l < tower.num_layers(); ++l) {
    grads.weights.push_back(Matrix::Ones(tower.weight(l).rows(), tower.weight(l).cols()));
    grads.biases.push_back(Vector::Ones(tower.bias(l).size()));
  }
  TowerOptimizer<Sgd> sgd(Sgd{.lr = 0.1});
  sgd.update(tower, grads);
  CHECK_FALSE(tower.editing());
  const Matrix user = random_matrix(6, 1, rng), items = random_matrix(8, 5, rng);
  TowerWorkspace a, b;
  RowVector prob(5);
  Matrix stepped, reference;
  tower.probability_gradient(user, items, nullptr, a, prob, &stepped);
  fresh_copy(tower).probability_gradient(user, items, nullptr, b, prob, &reference);
  CHECK(max_error(stepped, reference, 16) == 0.0);
}

TEST_CASE("tower: the fused passes at this build's vector width agree with the plain ones", "[gemm]") {
  // Hidden widths with a vector part and a tail at every width (37 = 2 x 16 + 5 = 4 x 8 + 5).
  Rng rng(15, 3);
  Tower tower(6, 8, {40, 37});
  tower.initialize(rng);
  const Index n = 23;
  const Matrix user = random_matrix(6, 1, rng), items = random_matrix(8, n, rng);
  TowerWorkspace ws, plain;
  RowVector z(n), expected(n);

  // The no-dropout forward writes each ReLU in the product's pass; a mask of ones takes
  // the separate ReLU pass: the same values, bit for bit.
  DropoutMask ones;
  ones.layers = {Matrix::Ones(40, 1), Matrix::Ones(37, 1)};
  tower.logits(user, items, nullptr, ws, z);
  tower.logits(user, items, &ones, plain, expected);
  CHECK(z == expected);
  CHECK(ws.act[0] == plain.act[0]);
  CHECK(ws.act[1] == plain.act[1]);

  // The request pass writes no ReLU (each product reads the layer below through its ReLU,
  // the logits come from the top layer's product): forward()'s pre-activations bit for
  // bit, its logits up to the order of the output layer's sum; backward() after it is
  // backward() after forward().
  tower.begin_request(user, items, ws, z);
  tower.logits(user, items, nullptr, plain, expected);
  CHECK(((z - expected).cwiseAbs().array() <= 1e-6f * (1.0f + expected.cwiseAbs().array())).all());
  for (std::size_t l = 0; l < 2; ++l) CHECK(ws.pre[l] == plain.pre[l]);
  {
    const RowVector d_logit = RowVector::Random(n);
    TowerGradients from_request, from_forward;
    tower.backward(d_logit, user, items, ws, &from_request, nullptr, nullptr);
    tower.backward(d_logit, user, items, plain, &from_forward, nullptr, nullptr);
    for (std::size_t l = 0; l < 3; ++l) CHECK(from_request.weights[l] == from_forward.weights[l]);
  }
  // The same with a shared mask's logits from the top layer's panels.
  for (double p : {0.01, 0.1}) {
    DropoutMask mask;
    tower.sample_mask(p, 1, rng, mask);
    RowVector masked(n), masked_expected(n);
    tower.begin_request(user, items, ws, z, &mask, masked);
    tower.logits(user, items, &mask, plain, masked_expected);
    CAPTURE(p);
    CHECK(((masked - masked_expected).cwiseAbs().array() <= 1e-6f * (1.0f + masked_expected.cwiseAbs().array()))
              .all());
  }

  // A shared dropout mask on the request: the vectorised rank-|J| logit (the 2-hidden-layer
  // fast path of request_logits) against the plain masked pass.
  tower.begin_request(user, items, ws, z);
  for (double p : {0.01, 0.05, 0.1}) {
    for (int draw = 0; draw < 4; ++draw) {
      DropoutMask mask;
      tower.sample_mask(p, 1, rng, mask);
      tower.request_logits(&mask, ws, z);
      tower.logits(user, items, &mask, plain, expected);
      CAPTURE(p, draw);
      CHECK(((z - expected).cwiseAbs().array() <= 1e-6f * (1.0f + expected.cwiseAbs().array())).all());
    }
  }
}

namespace {

// y(:, n) = 1[below(:, c_n) > 0] .* (d[n] at ((top(:, c_n) > 0) .* w)), in double.
Matrix sign_product_reference(const Matrix& at, const RowVector& w, const Matrix& top, const std::vector<Index>& columns,
                              const RowVector& d, const Matrix* below) {
  const Index k = d.size();
  Matrix y(at.rows(), k);
  for (Index n = 0; n < k; ++n) {
    const Index c = columns.empty() ? n : columns[static_cast<std::size_t>(n)];
    Eigen::VectorXd sum = Eigen::VectorXd::Zero(at.rows());
    for (Index u = 0; u < at.cols(); ++u)
      if (top(u, c) > 0) sum += static_cast<double>(w[u]) * at.col(u).cast<double>();
    for (Index r = 0; r < at.rows(); ++r) {
      const bool open = !below || (*below)(r, c) > 0;
      y(r, n) = open ? static_cast<Scalar>(static_cast<double>(d[n]) * sum[r]) : Scalar(0);
    }
  }
  return y;
}

// min over the units of top(:, c_n) and the rows of below(:, c_n) of |pre| * inverse.
RowVector smallest_ratio_reference(const Matrix& top, const Vector& inverse_top, const Matrix* below,
                                   const Vector& inverse_below, const std::vector<Index>& columns, Index k) {
  RowVector r(k);
  for (Index n = 0; n < k; ++n) {
    const Index c = columns.empty() ? n : columns[static_cast<std::size_t>(n)];
    Scalar smallest = std::numeric_limits<Scalar>::infinity();
    for (Index u = 0; u < top.rows(); ++u) smallest = std::min(smallest, std::abs(top(u, c)) * inverse_top[u]);
    if (below)
      for (Index i = 0; i < below->rows(); ++i)
        smallest = std::min(smallest, std::abs((*below)(i, c)) * inverse_below[i]);
    r[n] = smallest;
  }
  return r;
}

}  // namespace

TEST_CASE("sign table: the gradient's first product by table lookups equals the product", "[gemm]") {
  const Index w = detail::gemm_kernel::kWidth;
  Rng rng(16, 3);
  struct Case {
    Index rows, units;
  };
  // Units: one, one group, a partial last group (37), the most a table takes (128); rows
  // one and several vectors. k = 134 candidates: a full block of 128 and a tail of 6 (not
  // a multiple of the 4 summed together); 2048 rows: the gate bits of 32 candidates a
  // block (four blocks and a tail).
  for (const Case c :
       {Case{w, 1}, Case{2 * w, 4}, Case{3 * w, 37}, Case{16 * w, 64}, Case{2 * w, 128}, Case{2048, 5}}) {
    INFO("rows " << c.rows << ", units " << c.units << ", vector width " << w);
    const Matrix at = random_matrix(c.rows, c.units, rng);
    const RowVector weights = random_matrix(1, c.units, rng);
    detail::SignTable table;
    table.build(at, weights);
    REQUIRE_FALSE(table.empty());
    CHECK(table.bytes() == static_cast<std::size_t>(c.rows * ((c.units + 3) / 4) * 16) * sizeof(Scalar));

    const Index k = 134, stored = k + 5;
    Matrix top = random_matrix(c.units, stored, rng), below = random_matrix(c.rows, stored, rng);
    // Zero, -0 and NaN are not positive, in the top layer's pattern and in the gate.
    top(0, 1) = 0.0f;
    top(0, 2) = -0.0f;
    top(0, 3) = std::numeric_limits<Scalar>::quiet_NaN();
    below(0, 4) = 0.0f;
    below(c.rows - 1, 5) = std::numeric_limits<Scalar>::quiet_NaN();
    RowVector d = random_matrix(1, k, rng);
    d[6] = 0.0f;
    std::vector<Index> columns(static_cast<std::size_t>(k));
    for (Index n = 0; n < k; ++n) columns[static_cast<std::size_t>(n)] = (n * 7 + 3) % stored;

    Matrix y(c.rows, k);
    table.multiply(top, columns.data(), d, &below, y);
    const Matrix expected = sign_product_reference(at, weights, top, columns, d, &below);
    CHECK(max_error(y, expected, c.units) < 1e-6);
    table.multiply(top, nullptr, d, nullptr, y);
    CHECK(max_error(y, sign_product_reference(at, weights, top, {}, d, nullptr), c.units) < 1e-6);

    // With the smallest ratios: the same product, and each candidate's smallest
    // |pre| * inverse exactly (the same products, a minimum in another order; NaN and the
    // zeros above included), over top and below, or top alone.
    const Vector inverse_top = random_matrix(c.units, 1, rng).cwiseAbs();
    const Vector inverse_below = random_matrix(c.rows, 1, rng).cwiseAbs();
    RowVector smallest(k);
    detail::SignTable::SmallestRatio ratio{inverse_top.data(), inverse_below.data(), smallest.data()};
    y.setZero();
    table.multiply(top, columns.data(), d, &below, y, &ratio);
    CHECK(max_error(y, expected, c.units) < 1e-6);
    CHECK(smallest == smallest_ratio_reference(top, inverse_top, &below, inverse_below, columns, k));
    table.multiply(top, nullptr, d, nullptr, y, &ratio);
    CHECK(smallest == smallest_ratio_reference(top, inverse_top, nullptr, inverse_below, {}, k));
    CHECK(smallest[1] == 0.0f);  // top(0, 1) = 0
  }
  // Shapes without a table: rows that are not whole vectors, too many units, too many rows.
  detail::SignTable table;
  table.build(random_matrix(w + 1, 8, rng), random_matrix(1, 8, rng));
  CHECK(table.empty());
  table.build(random_matrix(w, 129, rng), random_matrix(1, 129, rng));
  CHECK(table.empty());
  table.build(random_matrix(detail::SignTable::kMaxRows + w, 4, rng), random_matrix(1, 4, rng));
  CHECK(table.empty());
  CHECK(table.bytes() == 0);
}

TEST_CASE("tower: the input gradient with and without the sign table", "[gemm]") {
  const Index w = detail::gemm_kernel::kWidth;
  Rng rng(17, 3);
  struct Case {
    std::size_t item_dim;
    std::vector<std::size_t> hidden;
    bool has_table;
  };
  // One hidden layer (the table gives d logit / d items itself: item_dim rows), two and
  // three (the table gives the layer below's d pre), 128 units (the most), 129 (none).
  const std::size_t wu = static_cast<std::size_t>(w);
  for (const Case& c : {Case{2 * wu, {20}, true}, Case{8, {3 * wu, 37}, true}, Case{5, {2 * wu, 3 * wu, 64}, true},
                        Case{8, {2 * wu, 128}, true}, Case{8, {2 * wu, 129}, false}}) {
    Tower tower(6, c.item_dim, c.hidden);
    tower.initialize(rng);
    INFO("item_dim " << c.item_dim << ", hidden " << c.hidden.size() << ", top " << c.hidden.back());
    CHECK((tower.gradient_table_bytes() > 0) == c.has_table);

    const Index n = 31;
    const Matrix user = random_matrix(6, 1, rng), items = random_matrix(static_cast<Index>(c.item_dim), n, rng);
    const std::vector<Index> keep{0, 3, 4, 8, 15, 16, 23, 29, 30};
    const Index k = static_cast<Index>(keep.size());
    const RowVector d = random_matrix(1, k, rng);
    for (bool linear : {true, false}) {  // d_logit applied after (linear moves) or in the pass
      tower.set_linear_moves(linear);
      Matrix by_table(static_cast<Index>(c.item_dim), k), by_product(static_cast<Index>(c.item_dim), k);
      TowerWorkspace ws;
      RowVector z(n);
      tower.begin_request(user, items, ws, z);
      tower.request_select(keep, ws);
      tower.set_gradient_tables(true);
      tower.request_item_gradient(d, ws, by_table);
      tower.set_gradient_tables(false);  // frees the table; on again rebuilds it
      CHECK(tower.gradient_table_bytes() == 0);
      tower.request_item_gradient(d, ws, by_product);
      tower.set_gradient_tables(true);
      CHECK((tower.gradient_table_bytes() > 0) == c.has_table);
      CAPTURE(linear);
      CHECK(max_error(by_table, by_product, 128) < 1e-6);
      CHECK(by_product.cwiseAbs().maxCoeff() > 1e-3);
      if (linear) {
        // The certified radii found with the gradient (by the table pass, or after the
        // product) are request_linear_radius()'s, bit for bit.
        RowVector radius(k);
        tower.request_linear_radius(ws, radius);
        REQUIRE(detail::has_gradient(ws.request.stage));
        CHECK(ws.request.radius.head(k) == radius);
        tower.request_item_gradient(d, ws, by_table);  // tables on again
        CHECK(ws.request.radius.head(k) == radius);
        CHECK((radius.array() > 0).all());
      }
    }
  }
  // An edit of the output weights rebuilds the table when it ends.
  Tower tower(6, 8, {2 * wu, 16});
  tower.initialize(rng);
  const Matrix user = random_matrix(6, 1, rng), items = random_matrix(8, 5, rng);
  TowerWorkspace ws, plain;
  RowVector z(5);
  Matrix before(8, 5), committed(8, 5);
  tower.begin_request(user, items, ws, z);
  tower.request_item_gradient(RowVector::Ones(5), ws, before);
  tower.edit().weight(2)(0, 3) += 1.0f;
  tower.begin_request(user, items, ws, z);
  tower.request_item_gradient(RowVector::Ones(5), ws, committed);
  CHECK(max_error(before, committed, 128) > 1e-4);
  RowVector prob(5);
  Matrix reference;
  tower.probability_gradient(user, items, nullptr, plain, prob, &reference);
  for (Index j = 0; j < 5; ++j) reference.col(j) /= prob[j] * (1 - prob[j]);
  CHECK(max_error(committed, reference, 128) < 1e-5);
}

namespace {

// Distance in representable floats between two finite floats of the same sign.
std::int64_t ulp_distance(float a, float b) {
  std::int32_t ia = 0, ib = 0;
  std::memcpy(&ia, &a, sizeof a);
  std::memcpy(&ib, &b, sizeof b);
  return std::abs(static_cast<std::int64_t>(ia) - static_cast<std::int64_t>(ib));
}

}  // namespace

TEST_CASE("sigmoid: within 3 ulp of the exact value, one value and a whole row bit for bit alike", "[gemm]") {
  const Index w = detail::gemm_kernel::kWidth;
  INFO("vector width " << w);
  // Every 1/256 over the range where exp(-|z|) is a normal float (measured: at most 2 ulp
  // from the correctly rounded value with 4- and 16-float vectors).
  std::int64_t worst = 0;
  for (int i = -87 * 256; i <= 87 * 256; ++i) {
    const float z = static_cast<float>(i) / 256.0f;
    const float exact = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z))));
    worst = std::max(worst, ulp_distance(sigmoid(z), exact));
  }
  CHECK(worst <= 3);

  // Limits: 0.5 at +-0, saturation, and e = exp(-|z|) taken as 0 below exp(-87.3).
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(sigmoid(0.0f) == 0.5f);
  CHECK(sigmoid(-0.0f) == 0.5f);
  CHECK(sigmoid(inf) == 1.0f);
  CHECK(sigmoid(-inf) == 0.0f);
  CHECK(sigmoid(100.0f) == 1.0f);
  CHECK(sigmoid(-100.0f) == 0.0f);
  CHECK(sigmoid(-87.0f) > 0.0f);
  CHECK(std::isnan(sigmoid(std::numeric_limits<float>::quiet_NaN())));

  // A row of three vectors and a tail: the same floats as one value at a time.
  const Index n = 3 * w + 3;
  RowVector z(n);
  for (Index i = 0; i < n; ++i) z[i] = -30.0f + 61.0f * static_cast<float>(i) / static_cast<float>(n);
  z[1] = inf;
  z[2] = -inf;
  z[n - 1] = std::numeric_limits<float>::quiet_NaN();
  RowVector y = z;
  sigmoid_in_place(y);
  for (Index i = 0; i + 1 < n; ++i) {
    CAPTURE(i, z[i]);
    CHECK(y[i] == sigmoid(z[i]));
  }
  CHECK(std::isnan(y[n - 1]));
}

// --- age::simd, the seam under the kernels: each operation lane by lane against a scalar
// reference on edge values, so that the vector build and the portable fallback
// (age_test_gemm_portable) are held to the same results.
namespace {

namespace simd = age::simd;

std::uint32_t bits_of(float x) { return std::bit_cast<std::uint32_t>(x); }

// Lanes of a Vec and of an IntVec, through memory.
std::vector<float> lanes(simd::Vec v) {
  std::vector<float> out(simd::kWidth);
  simd::store(out.data(), v);
  return out;
}
std::vector<std::int32_t> lanes(simd::IntVec v) {
  std::vector<std::int32_t> out(simd::kWidth);
  std::memcpy(out.data(), &v, sizeof v);
  return out;
}

// The values the kernels must treat as the scalar code does: signed zeros, infinities,
// NaNs (with either sign), denormals, the extremes and ordinary negatives.
std::vector<float> edge_values() {
  using L = std::numeric_limits<float>;
  return {0.0f,          -0.0f,          1.0f,      -1.0f,      2.5f,       -3.75f,   L::infinity(), -L::infinity(),
          L::quiet_NaN(), -L::quiet_NaN(), L::denorm_min(), -L::denorm_min(), L::min(), -L::min(), L::max(),
          L::lowest(),   1e-30f,         -7e20f};
}

// kWidth lanes from the edge values starting at `offset` (cycling), so that every value
// meets every other in some lane across the offsets.
std::vector<float> lanes_from(const std::vector<float>& values, std::size_t offset, std::size_t stride = 1) {
  std::vector<float> out(simd::kWidth);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = values[(offset + i * stride) % values.size()];
  return out;
}

// Bit for bit, except that any NaN matches any NaN where an arithmetic result is NaN
// (which operand's payload survives is the processor's choice, not the seam's).
bool same_value(float a, float b) { return bits_of(a) == bits_of(b) || (std::isnan(a) && std::isnan(b)); }

// The pairwise fold in the order the seam promises: lane i with lane i + half.
template <class Op>
float pairwise(std::vector<float> v, Op op) {
  for (std::size_t half = v.size() / 2; half >= 1; half /= 2)
    for (std::size_t i = 0; i < half; ++i) v[i] = op(v[i], v[i + half]);
  return v[0];
}

}  // namespace

TEST_CASE("simd: every operation of the seam equals its scalar reference on edge values", "[simd]") {
  const int w = simd::kWidth;
  INFO("vector width " << w << ", " << simd::kRegisters << " registers, "
                       << (std::is_class_v<simd::Vec> ? "portable fallback" : "vector extensions"));
#if defined(AGE_SIMD_PORTABLE)
  STATIC_REQUIRE(std::is_class_v<simd::Vec>);
  STATIC_REQUIRE(simd::kWidth == 4);
#endif
  const std::vector<float> values = edge_values();
  const auto less = [](float a, float b) { return a < b; };
  const auto relu_ref = [](float v) { return v < 0.0f ? 0.0f : v; };
  const auto min_ref = [](float a, float b) { return b < a ? b : a; };

  for (float x : values) {
    CAPTURE(x);
    for (float lane : lanes(simd::broadcast(x))) CHECK(bits_of(lane) == bits_of(x));
    for (float lane : lanes(simd::broadcast_relu(&x))) CHECK(bits_of(lane) == bits_of(relu_ref(x)));
  }
  for (float lane : lanes(simd::zero())) CHECK(bits_of(lane) == 0u);

  for (std::size_t offset = 0; offset < values.size(); ++offset)
    for (std::size_t stride : {std::size_t{1}, std::size_t{5}}) {
      const std::vector<float> a = lanes_from(values, offset), b = lanes_from(values, offset + 3, stride);
      const simd::Vec va = simd::load(a.data()), vb = simd::load(b.data());
      const float s = b[0];
      const auto lane_a = lanes(va);
      const auto sum = lanes(va + vb), difference = lanes(va - vb), product = lanes(va * vb), quotient = lanes(va / vb);
      const auto sum_s = lanes(va + s), product_s = lanes(s * va), difference_s = lanes(s - va);
      simd::Vec compound = va;
      compound += vb;
      compound *= s;
      const auto compound_lanes = lanes(compound);
      const auto negated = lanes(-va), relu = lanes(simd::relu(va)), smaller = lanes(simd::min(va, vb)),
                 magnitude = lanes(simd::abs(va));
      const auto lt = lanes(va < vb), le = lanes(va <= vb), gt = lanes(va > vb), ge = lanes(va >= vb),
                 eq = lanes(va == vb), ne = lanes(va != vb), gt_zero = lanes(va > 0.0f);
      const auto selected = lanes(simd::select(va < vb, va, vb));
      const auto ints = lanes(simd::as_ints(va));
      const auto round_trip = lanes(simd::as_floats(simd::as_ints(va)));
      // The sigmoid's exponent arithmetic, on magnitudes (no signed overflow).
      const auto exponent = lanes((simd::as_ints(simd::abs(va)) - simd::as_ints(simd::abs(vb)) + 127) << 23);
      const unsigned positive = simd::positive_bits(a.data());
      for (int i = 0; i < w; ++i) {
        const auto u = static_cast<std::size_t>(i);
        CAPTURE(i, a[u], b[u]);
        CHECK(bits_of(lane_a[u]) == bits_of(a[u]));  // load and store keep NaN payloads
        CHECK(same_value(sum[u], a[u] + b[u]));
        CHECK(same_value(difference[u], a[u] - b[u]));
        CHECK(same_value(product[u], a[u] * b[u]));
        CHECK(same_value(quotient[u], a[u] / b[u]));
        CHECK(same_value(sum_s[u], a[u] + s));
        CHECK(same_value(product_s[u], s * a[u]));
        CHECK(same_value(difference_s[u], s - a[u]));
        CHECK(same_value(compound_lanes[u], (a[u] + b[u]) * s));
        CHECK(bits_of(negated[u]) == (bits_of(a[u]) ^ 0x80000000u));
        CHECK(bits_of(relu[u]) == bits_of(relu_ref(a[u])));  // NaN and -0 stay
        CHECK(bits_of(smaller[u]) == bits_of(min_ref(a[u], b[u])));
        CHECK(bits_of(magnitude[u]) == (bits_of(a[u]) & 0x7fffffffu));
        CHECK(lt[u] == (a[u] < b[u] ? -1 : 0));
        CHECK(le[u] == (a[u] <= b[u] ? -1 : 0));
        CHECK(gt[u] == (a[u] > b[u] ? -1 : 0));
        CHECK(ge[u] == (a[u] >= b[u] ? -1 : 0));
        CHECK(eq[u] == (a[u] == b[u] ? -1 : 0));
        CHECK(ne[u] == (a[u] != b[u] ? -1 : 0));
        CHECK(gt_zero[u] == (a[u] > 0.0f ? -1 : 0));
        CHECK(bits_of(selected[u]) == bits_of(less(a[u], b[u]) ? a[u] : b[u]));
        CHECK(static_cast<std::uint32_t>(ints[u]) == bits_of(a[u]));
        CHECK(bits_of(round_trip[u]) == bits_of(a[u]));
        CHECK(static_cast<std::uint32_t>(exponent[u]) ==
              ((bits_of(a[u]) & 0x7fffffffu) - (bits_of(b[u]) & 0x7fffffffu) + 127u) << 23);
        CHECK(((positive >> i) & 1u) == (a[u] > 0.0f ? 1u : 0u));
      }
      CHECK(positive >> w == 0u);
      const float plus_ref = pairwise(a, [](float x, float y) { return x + y; });
      CHECK(same_value(simd::sum_lanes(va), plus_ref));
      CHECK(bits_of(simd::min_lanes(va)) == bits_of(pairwise(a, min_ref)));
    }

  // The fold's order: 1e8 and -1e8 in lanes 0 and kWidth / 2 cancel in the first step of
  // the pairwise sum, which then adds the ones exactly; left to right, 1e8 + 1 rounds the
  // ones away.
  std::vector<float> ordered(static_cast<std::size_t>(w), 1.0f);
  ordered[0] = 1e8f;
  ordered[static_cast<std::size_t>(w / 2)] = -1e8f;
  CHECK(simd::sum_lanes(simd::load(ordered.data())) == static_cast<float>(w - 2));
  // Which zero min_lanes returns depends on the order too: the first lane of the pair
  // when they compare equal.
  std::vector<float> zeros(static_cast<std::size_t>(w), 0.0f);
  zeros[0] = -0.0f;
  CHECK(std::signbit(simd::min_lanes(simd::load(zeros.data()))));
  zeros[0] = 0.0f;
  zeros[static_cast<std::size_t>(w / 2)] = -0.0f;
  CHECK(!std::signbit(simd::min_lanes(simd::load(zeros.data()))));

  // mask_of_bits: lane i set exactly where bit i is, higher bits ignored.
  for (unsigned bits = 0; bits < (1u << w); bits += (w > 8 ? 97u : 1u))
    for (unsigned high : {0u, 1u << w, ~0u << w}) {
      const auto mask = lanes(simd::mask_of_bits(bits | high));
      const unsigned back = simd::positive_bits(
          lanes(simd::select(simd::mask_of_bits(bits | high), simd::broadcast(1.0f), simd::zero())).data());
      CAPTURE(bits, high);
      for (int i = 0; i < w; ++i) CHECK(mask[static_cast<std::size_t>(i)] == ((bits >> i) & 1u ? -1 : 0));
      CHECK(back == bits);
    }

  float line[16] = {};
  simd::prefetch(line);  // a hint: nothing to observe but that it compiles and runs
}
