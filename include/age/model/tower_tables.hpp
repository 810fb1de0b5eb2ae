// What a tower derives from its weights once per change of the weights (Tower::edit()
// commits when the edit ends), so that every scoring pass after reads it:
//   - transposed copies W_item^T, W_user^T and W_l^T (l >= 1), so that the input
//     gradient's products W^T d run on the product kernel, which reads its left operand
//     column by column;
//   - per hidden unit, 1 / (bound of |delta pre| per unit length of an item move), the
//     radius of the certified linear moves (age/model/certified_moves.hpp);
//   - the sign table of the top layer (age/model/sign_table.hpp), when it is on and the
//     shape has one.
// O(parameters) to build: a few microseconds per optimizer step on the reference tower.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/gemm.hpp"
#include "age/model/products.hpp"
#include "age/model/sign_table.hpp"
#include "age/model/tower_layers.hpp"

namespace age::detail {

struct TowerTables {
  std::vector<Matrix> transposed;  // [0] = W_item^T, [l] = W_l^T for l >= 1
  Matrix transposed_user;          // W_user^T
  std::vector<Vector> inverse_move_bound;  // per hidden layer, one per unit
  SignTable sign_table;                    // B = W_top^T diag(w_out), tabulated

  void build(const TowerLayers& t, bool with_sign_table) {
    const std::size_t layers = t.layers();
    transposed.resize(layers);
    if (layers == 0) return;
    transposed[0] = t.w_item().transpose();
    transposed_user = t.w_user().transpose();
    for (std::size_t l = 1; l < layers; ++l) transposed[l] = t.weights[l].transpose();
    // ||W_item[o, :]|| for layer 0, ||W_l[o, :]|| times the Frobenius norms of the layers
    // below for the others (the chain of bounds in certified_moves.hpp). A unit that cannot
    // move gets a bound of FLT_MIN (its radius is then huge, or 0 at pre = 0: no certificate).
    inverse_move_bound.resize(t.hidden.size());
    double below = 1.0;  // product of the Frobenius norms of the layers below
    for (std::size_t l = 0; l < t.hidden.size(); ++l) {
      const auto w = l == 0 ? t.w_item() : t.weights[l].leftCols(t.weights[l].cols());
      Vector& inv = inverse_move_bound[l];
      inv.resize(w.rows());
      for (Index o = 0; o < w.rows(); ++o) {
        const double bound = below * static_cast<double>(w.row(o).norm());
        inv[o] = static_cast<Scalar>(1.0 / std::max(bound, static_cast<double>(std::numeric_limits<Scalar>::min())));
      }
      below *= static_cast<double>(w.norm());
    }
    build_sign_table(t, with_sign_table);
  }

  void build_sign_table(const TowerLayers& t, bool on) {
    if (on && !t.hidden.empty())
      sign_table.build(transposed[t.hidden.size() - 1], t.weights[t.hidden.size()].row(0));
    else
      sign_table.clear();
  }

  // y = W_l^T d (layer l >= 1) or W_item^T d (l = 0), the products of the input gradient,
  // on the transposed copy.
  void transposed_product(std::size_t l, ConstMatrixRef d, MatrixRef y) const { multiply(y, transposed[l], d); }
  // The same through the ReLU of the layer below: y = 1[below > 0] .* W_l^T d, `below` the
  // pre-activation of layer l - 1 with y's rows; its column columns[n] (nullptr: n) goes
  // with y's column n (the candidates Tower::request_select keeps in place). In the same
  // pass on the kernel.
  void transposed_product(std::size_t l, ConstMatrixRef d, MatrixRef y, const Matrix& below,
                          const Index* columns) const {
    if (y.rows() >= simd::kWidth) {
      gemm_assign(y, transposed[l], d, keep_if_positive(below, columns));
      return;
    }
    transposed_product(l, d, y);
    for (Index n = 0; n < y.cols(); ++n)
      y.col(n) = (below.col(columns ? columns[n] : n).array() > Scalar(0)).select(y.col(n), Scalar(0));
  }

  std::size_t sign_table_bytes() const noexcept { return sign_table.bytes(); }
};

}  // namespace age::detail
