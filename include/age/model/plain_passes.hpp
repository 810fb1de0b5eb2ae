// The tower's plain passes, on a whole batch at once (the candidates are the columns of
// every matrix): the forward pass with an optional dropout mask, and the backward pass
// to the parameters (training) and to the inputs (the CtrModel probability gradient).
// Tower (age/model/tower.hpp) offers them as forward(), backward(), logits() and
// probability_gradient().
#pragma once

#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"
#include "age/model/gemm.hpp"
#include "age/model/products.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower_layers.hpp"
#include "age/model/tower_tables.hpp"
#include "age/model/tower_workspace.hpp"

namespace age::detail {

inline void check_mask(const TowerLayers& t, const DropoutMask& mask, Index n) {
  require_dim("dropout mask: number of layers", t.hidden.size(), mask.layers.size());
  for (std::size_t l = 0; l < t.hidden.size(); ++l) {
    // Messages are built only on failure: this check runs on every scoring pass.
    const Matrix& m = mask.layers[l];
    if (static_cast<std::size_t>(m.rows()) != t.hidden[l])
      throw DimensionError(
          mismatch("dropout mask layer " + std::to_string(l) + " rows", t.hidden[l], static_cast<std::size_t>(m.rows())));
    if (m.cols() != 1 && m.cols() != n)
      throw DimensionError("dropout mask layer " + std::to_string(l) + " columns: expected 1 or " + std::to_string(n) +
                           ", got " + std::to_string(m.cols()));
  }
}

inline void check_inputs(const TowerLayers& t, ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask) {
  require_dim("tower input: user rows (user_dim)", t.user_dim, static_cast<std::size_t>(user.rows()));
  require_dim("tower input: item rows (item_dim)", t.item_dim, static_cast<std::size_t>(items.rows()));
  if (items.cols() == 0) throw InputError("tower input: no candidates (items has 0 columns)");
  if (user.cols() != 1 && user.cols() != items.cols())
    throw DimensionError("tower input: user columns: expected 1 or " + std::to_string(items.cols()) + ", got " +
                         std::to_string(user.cols()));
  if (mask && !mask->empty()) check_mask(t, *mask, items.cols());
}

// x .* m, m a dropout mask layer with one column (shared) or one per column of x.
template <class X>
void apply_mask(const Matrix& m, X&& x) {
  if (m.cols() == 1)
    x.array().colwise() *= m.col(0).array();
  else
    x.array() *= m.array();
}

// Sets the workspace up for a pass over n candidates and computes layer 0, split:
// (W_user * user + b0) + W_item * items, the constant part once when the user column is
// shared and broadcast first, the product accumulated onto it (one pass over pre0 less).
// `finish` runs on layer 0's product in registers (its ReLU, or the top panel's logits).
inline void first_layer(const TowerLayers& t, ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                        TowerWorkspace& ws, const gemm_kernel::Finish& finish) {
  const Index n = items.cols();
  ws.pre.resize(t.layers());
  ws.act.resize(t.hidden.size());
  ws.mask = (mask && !mask->empty()) ? mask : nullptr;
  ws.shared_user = user.cols() == 1;
  ws.batch = n;
  ws.request.stage = RequestStage::none;
  Matrix& pre0 = ws.pre[0];
  pre0.resize(t.weights[0].rows(), n);
  if (ws.shared_user) {
    ws.user_pre.resize(t.weights[0].rows());
    if (t.user_dim > 0)
      multiply(ws.user_pre, t.w_user(), user);
    else
      ws.user_pre.setZero();  // the DGU reads the item part only
    ws.user_pre += t.biases[0];
    gemm_from_column(pre0, ws.user_pre, t.w_item(), items, finish);
  } else {
    pre0.colwise() = t.biases[0];
    if (t.user_dim > 0) multiply_add(pre0, t.w_user(), user);
    gemm_add(pre0, t.w_item(), items, finish);
  }
}

// Forward pass. `user` is user_dim x 1 (one user shared by all candidates) or user_dim x N
// (one user per column, e.g. a training batch); `items` is item_dim x N. `mask`
// (optional) is a dropout sample with 1 or N columns. Logits land in ws.logits(). Without
// dropout the kernel writes each hidden layer's ReLU next to its pre-activation (one pass
// over the layer less); with a mask, the ReLU and the mask are applied after.
inline void forward(const TowerLayers& t, ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                    TowerWorkspace& ws) {
  check_inputs(t, user, items, mask);
  const Index n = items.cols();
  const std::size_t hidden = t.hidden.size();
  const bool fused = !(mask && !mask->empty());
  ws.act.resize(hidden);
  for (std::size_t l = 0; l < hidden; ++l) ws.act[l].resize(t.weights[l].rows(), n);
  first_layer(t, user, items, mask, ws, (fused && hidden > 0) ? also_relu(ws.act[0]) : gemm_kernel::Finish{});
  ws.acts_written = true;
  for (std::size_t l = 0; l < t.layers(); ++l) {
    if (l > 0) {
      Matrix& pre = ws.pre[l];
      pre.resize(t.weights[l].rows(), n);
      if (fused && l < hidden) {
        MatrixRef act(ws.act[l]);
        t.layer_product(l, ws.act[l - 1], pre, &act);
      } else {
        t.layer_product(l, ws.act[l - 1], pre);
      }
    }
    if (l < hidden && !fused) {  // act_l = ReLU(pre_l) .* mask_l
      ws.act[l] = ws.pre[l].cwiseMax(Scalar(0));
      apply_mask(ws.mask->layers[l], ws.act[l]);
    }
  }
}

// Backward pass from d(objective)/d(logit) (one value per column of the last forward).
// Any of the outputs may be null. d_user is user_dim x N (per candidate, also when the
// user column was shared), d_items is item_dim x N. Parameter gradients are SUMMED over
// the batch and overwrite *params.
inline void backward(const TowerLayers& t, const TowerTables& tables, const Eigen::Ref<const RowVector>& d_logit,
                     ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, TowerGradients* params,
                     Matrix* d_user, Matrix* d_items) {
  const Index n = ws.batch;
  require_dim("backward: d_logit length", static_cast<std::size_t>(n), static_cast<std::size_t>(d_logit.size()));
  const std::size_t layers = t.layers();
  if (params) {
    params->weights.resize(layers);
    params->biases.resize(layers);
  }
  // ws.d_pre[l] holds d(objective)/d(pre-activation) of layer l, walking down from the
  // output. One buffer per layer, so a warm workspace never reallocates.
  ws.d_pre.resize(layers);
  ws.d_pre[layers - 1] = d_logit;
  if (!ws.acts_written) {  // a request's first pass wrote no ReLU
    for (std::size_t l = 0; l < t.hidden.size(); ++l) ws.act[l] = ws.pre[l].cwiseMax(Scalar(0));
    ws.acts_written = true;
  }
  for (std::size_t l = layers; l-- > 0;) {
    const Matrix& d_pre = ws.d_pre[l];
    if (params) {
      params->biases[l] = d_pre.rowwise().sum();
      Matrix& gw = params->weights[l];
      gw.resize(t.weights[l].rows(), t.weights[l].cols());
      if (l > 0) {
        multiply_nt(gw, d_pre, ws.act[l - 1], ws.transposed);
      } else {
        multiply_nt(gw.rightCols(t.di()), d_pre, items, ws.transposed);
        if (t.user_dim > 0) {
          if (ws.shared_user)
            multiply_nt(gw.leftCols(t.du()), params->biases[0], user, ws.transposed);
          else
            multiply_nt(gw.leftCols(t.du()), d_pre, user, ws.transposed);
        }
      }
    }
    if (l == 0) break;
    // Through layer l's weights, then the mask and ReLU of hidden layer l - 1:
    // d_pre(l-1) = W_l^T d_pre(l) .* mask .* 1[pre > 0].
    Matrix& below = ws.d_pre[l - 1];
    below.resize(t.weights[l].cols(), n);
    tables.transposed_product(l, d_pre, below);
    below = (ws.pre[l - 1].array() > Scalar(0)).select(below, Scalar(0));
    if (ws.mask) apply_mask(ws.mask->layers[l - 1], below);
  }
  if (d_items) {
    d_items->resize(t.di(), n);
    tables.transposed_product(0, ws.d_pre[0], *d_items);
  }
  if (d_user) {
    d_user->resize(t.du(), n);
    if (t.user_dim > 0) multiply(*d_user, tables.transposed_user, ws.d_pre[0]);
  }
}

// y = sigmoid(logit) per candidate and dy/d(items) (item_dim x N), optionally dy/d(user)
// (user_dim x N): dy/dh = y (1 - y) * dlogit/dh, computed for all candidates at once.
inline void probability_gradient(const TowerLayers& t, const TowerTables& tables, ConstMatrixRef user,
                                 ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
                                 Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) {
  forward(t, user, items, mask, ws);
  require_dim("probability output length", static_cast<std::size_t>(items.cols()), static_cast<std::size_t>(prob.size()));
  ws.d_logit.resize(items.cols());
  for (Index i = 0; i < items.cols(); ++i) {
    prob[i] = sigmoid(ws.pre.back()(0, i));
    ws.d_logit[i] = prob[i] * (Scalar(1) - prob[i]);
  }
  backward(t, tables, ws.d_logit, user, items, ws, nullptr, d_user, d_items);
}

}  // namespace age::detail
