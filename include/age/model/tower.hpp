// The dense CTR tower f(h | theta): an MLP with ReLU hidden layers and one output logit,
// y = sigmoid(logit), over h = [user | item].
//
// The first layer is split, W0 = [W_user | W_item], so that for a request W_user * user is
// computed once and shared by all N candidates (DESIGN.md, "Data flow of one request"),
// and so that the gradient with respect to the item part alone is one product W_item^T * d.
// All passes run on a whole batch: the candidates are the columns of every matrix.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"

namespace age {

inline Scalar sigmoid(Scalar z) noexcept {
  // Evaluated on the side that cannot overflow exp().
  if (z >= 0) return Scalar(1) / (Scalar(1) + std::exp(-z));
  const Scalar e = std::exp(z);
  return e / (Scalar(1) + e);
}

// Gradients of a loss with respect to every tower parameter, shaped like the parameters.
struct TowerGradients {
  std::vector<Matrix> weights;
  std::vector<Vector> biases;
};

// Caller-owned scratch space for the passes of one thread. Holds the cached
// pre-activations and activations of the last forward pass, which backward() reads.
// Sized on first use; reused without allocation while the batch shape stays the same.
struct TowerWorkspace {
  Vector user_pre;             // W_user * user + b0, when the user column is shared
  std::vector<Matrix> pre;     // pre-activation of each layer (last: 1 x N logits)
  std::vector<Matrix> act;     // ReLU(pre) (.* mask) of each hidden layer
  std::vector<Matrix> d_pre;   // backward: d(objective)/d(pre-activation) of each layer
  RowVector d_logit;           // upstream gradient scratch of probability_gradient()
  const DropoutMask* mask = nullptr;  // mask of the last forward pass
  bool shared_user = true;
  Index batch = 0;

  // Logits of the last forward pass (N), as a row.
  auto logits() const { return pre.back().row(0); }
};

class Tower {
 public:
  // CtrModel types (age/model/ctr_model.hpp).
  using Workspace = TowerWorkspace;
  using Mask = DropoutMask;

  Tower() = default;
  Tower(std::size_t user_dim, std::size_t item_dim, std::vector<std::size_t> hidden)
      : user_dim_(user_dim), item_dim_(item_dim), hidden_(std::move(hidden)) {
    if (user_dim_ + item_dim_ == 0) throw ConfigError("tower: input dimension must be > 0");
    if (item_dim_ == 0) throw ConfigError("tower: item_dim must be > 0 (AGE perturbs the item part)");
    for (std::size_t l = 0; l < hidden_.size(); ++l)
      if (hidden_[l] == 0) throw ConfigError("tower: hidden layer " + std::to_string(l) + " has size 0");
    const std::size_t layers = hidden_.size() + 1;
    weights_.resize(layers);
    biases_.resize(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      weights_[l] = Matrix::Zero(static_cast<Index>(out_size(l)), static_cast<Index>(in_size(l)));
      biases_[l] = Vector::Zero(static_cast<Index>(out_size(l)));
    }
  }

  // PyTorch's nn.Linear default: W and b uniform in +-1/sqrt(fan_in).
  void initialize(Rng& rng) {
    for (std::size_t l = 0; l < weights_.size(); ++l) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in_size(l)));
      for (Index i = 0; i < weights_[l].size(); ++i)
        weights_[l].data()[i] = static_cast<Scalar>(rng.uniform(-bound, bound));
      for (Index i = 0; i < biases_[l].size(); ++i)
        biases_[l].data()[i] = static_cast<Scalar>(rng.uniform(-bound, bound));
    }
  }

  std::size_t user_dim() const noexcept { return user_dim_; }
  std::size_t item_dim() const noexcept { return item_dim_; }
  std::size_t input_dim() const noexcept { return user_dim_ + item_dim_; }
  const std::vector<std::size_t>& hidden() const noexcept { return hidden_; }
  std::size_t num_layers() const noexcept { return weights_.size(); }  // hidden + output
  std::size_t in_size(std::size_t l) const { return l == 0 ? input_dim() : hidden_.at(l - 1); }
  std::size_t out_size(std::size_t l) const { return l < hidden_.size() ? hidden_[l] : 1; }

  Matrix& weight(std::size_t l) { return weights_.at(l); }
  const Matrix& weight(std::size_t l) const { return weights_.at(l); }
  Vector& bias(std::size_t l) { return biases_.at(l); }
  const Vector& bias(std::size_t l) const { return biases_.at(l); }

  // Number of parameters of the tower.
  std::size_t parameter_count() const noexcept {
    std::size_t n = 0;
    for (std::size_t l = 0; l < weights_.size(); ++l)
      n += static_cast<std::size_t>(weights_[l].size() + biases_[l].size());
    return n;
  }

  void sample_mask(double p, Index columns, Rng& rng, DropoutMask& mask) const {
    sample_dropout_mask(hidden_, p, columns, rng, mask);
  }

  // Forward pass. `user` is user_dim x 1 (one user shared by all candidates) or
  // user_dim x N (one user per column, e.g. a training batch); `items` is item_dim x N.
  // `mask` (optional) is a dropout sample with 1 or N columns. Logits land in ws.logits().
  void forward(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws) const {
    check_inputs(user, items, mask);
    const Index n = items.cols();
    const std::size_t layers = weights_.size();
    ws.pre.resize(layers);
    ws.act.resize(hidden_.size());
    ws.mask = (mask && !mask->empty()) ? mask : nullptr;
    ws.shared_user = user.cols() == 1;
    ws.batch = n;

    // Layer 0, split: W_item * items + (W_user * user + b0).
    const Index du = static_cast<Index>(user_dim_), di = static_cast<Index>(item_dim_);
    const auto w_user = weights_[0].leftCols(du);
    const auto w_item = weights_[0].rightCols(di);
    Matrix& pre0 = ws.pre[0];
    pre0.resize(weights_[0].rows(), n);
    pre0.noalias() = w_item * items;
    if (ws.shared_user) {
      ws.user_pre.resize(weights_[0].rows());
      ws.user_pre.noalias() = w_user * user.col(0);
      ws.user_pre += biases_[0];
      pre0.colwise() += ws.user_pre;
    } else {
      if (du > 0) pre0.noalias() += w_user * user;
      pre0.colwise() += biases_[0];
    }

    for (std::size_t l = 0; l < layers; ++l) {
      if (l > 0) {
        Matrix& pre = ws.pre[l];
        pre.resize(weights_[l].rows(), n);
        pre.noalias() = weights_[l] * ws.act[l - 1];
        pre.colwise() += biases_[l];
      }
      if (l < hidden_.size()) activate(l, ws);
    }
  }

  // Backward pass from d(objective)/d(logit) (one value per column of the last forward).
  // Any of the outputs may be null. d_user is user_dim x N (per candidate, also when the
  // user column was shared), d_items is item_dim x N. Parameter gradients are SUMMED over
  // the batch and overwrite *params.
  void backward(const Eigen::Ref<const RowVector>& d_logit, ConstMatrixRef user, ConstMatrixRef items,
                TowerWorkspace& ws, TowerGradients* params, Matrix* d_user, Matrix* d_items) const {
    const Index n = ws.batch;
    detail::require_dim("backward: d_logit length", static_cast<std::size_t>(n),
                        static_cast<std::size_t>(d_logit.size()));
    const std::size_t layers = weights_.size();
    if (params) {
      params->weights.resize(layers);
      params->biases.resize(layers);
    }
    // ws.d_pre[l] holds d(objective)/d(pre-activation) of layer l, walking down from the
    // output. One buffer per layer, so a warm workspace never reallocates.
    ws.d_pre.resize(layers);
    ws.d_pre[layers - 1] = d_logit;
    for (std::size_t l = layers; l-- > 0;) {
      const Matrix& d_pre = ws.d_pre[l];
      if (params) {
        params->biases[l] = d_pre.rowwise().sum();
        Matrix& gw = params->weights[l];
        gw.resize(weights_[l].rows(), weights_[l].cols());
        if (l > 0) {
          gw.noalias() = d_pre * ws.act[l - 1].transpose();
        } else {
          const Index du = static_cast<Index>(user_dim_), di = static_cast<Index>(item_dim_);
          gw.rightCols(di).noalias() = d_pre * items.transpose();
          if (du > 0) {
            if (ws.shared_user)
              gw.leftCols(du).noalias() = params->biases[0] * user.col(0).transpose();
            else
              gw.leftCols(du).noalias() = d_pre * user.transpose();
          }
        }
      }
      if (l == 0) break;
      // Through layer l's weights, then the mask and ReLU of hidden layer l - 1.
      Matrix& below = ws.d_pre[l - 1];
      below.resize(weights_[l].cols(), n);
      below.noalias() = weights_[l].transpose() * d_pre;
      backprop_activation(l - 1, ws);
    }
    const Index du = static_cast<Index>(user_dim_), di = static_cast<Index>(item_dim_);
    if (d_items) {
      d_items->resize(di, n);
      d_items->noalias() = weights_[0].rightCols(di).transpose() * ws.d_pre[0];
    }
    if (d_user) {
      d_user->resize(du, n);
      if (du > 0) d_user->noalias() = weights_[0].leftCols(du).transpose() * ws.d_pre[0];
    }
  }

  // Logits of every candidate, written into `out` (N).
  void logits(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
              Eigen::Ref<RowVector> out) const {
    forward(user, items, mask, ws);
    detail::require_dim("logits output length", static_cast<std::size_t>(items.cols()),
                        static_cast<std::size_t>(out.size()));
    out = ws.logits();
  }

  // y = sigmoid(logit) per candidate and dy/d(items) (item_dim x N), optionally dy/d(user)
  // (user_dim x N): dy/dh = y (1 - y) * dlogit/dh, computed for all candidates at once.
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                            TowerWorkspace& ws, Eigen::Ref<RowVector> prob, Matrix* d_items,
                            Matrix* d_user = nullptr) const {
    forward(user, items, mask, ws);
    detail::require_dim("probability output length", static_cast<std::size_t>(items.cols()),
                        static_cast<std::size_t>(prob.size()));
    ws.d_logit.resize(items.cols());
    for (Index i = 0; i < items.cols(); ++i) {
      prob[i] = sigmoid(ws.pre.back()(0, i));
      ws.d_logit[i] = prob[i] * (Scalar(1) - prob[i]);
    }
    backward(ws.d_logit, user, items, ws, nullptr, d_user, d_items);
  }

 private:
  void check_inputs(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask) const {
    detail::require_dim("tower input: user rows (user_dim)", user_dim_, static_cast<std::size_t>(user.rows()));
    detail::require_dim("tower input: item rows (item_dim)", item_dim_, static_cast<std::size_t>(items.rows()));
    if (items.cols() == 0) throw InputError("tower input: no candidates (items has 0 columns)");
    if (user.cols() != 1 && user.cols() != items.cols())
      throw DimensionError("tower input: user columns: expected 1 or " + std::to_string(items.cols()) +
                           ", got " + std::to_string(user.cols()));
    if (mask && !mask->empty()) {
      detail::require_dim("dropout mask: number of layers", hidden_.size(), mask->layers.size());
      for (std::size_t l = 0; l < hidden_.size(); ++l) {
        // Messages are built only on failure: this check runs on every scoring pass.
        const Matrix& m = mask->layers[l];
        if (static_cast<std::size_t>(m.rows()) != hidden_[l])
          throw DimensionError(detail::mismatch("dropout mask layer " + std::to_string(l) + " rows", hidden_[l],
                                                static_cast<std::size_t>(m.rows())));
        if (m.cols() != 1 && m.cols() != items.cols())
          throw DimensionError("dropout mask layer " + std::to_string(l) + " columns: expected 1 or " +
                               std::to_string(items.cols()) + ", got " + std::to_string(m.cols()));
      }
    }
  }

  // act_l = ReLU(pre_l), times the dropout mask when there is one.
  void activate(std::size_t l, TowerWorkspace& ws) const {
    Matrix& act = ws.act[l];
    act = ws.pre[l].cwiseMax(Scalar(0));
    if (ws.mask) apply_mask(ws.mask->layers[l], act);
  }

  // In place: d_pre(l) = d_act(l) .* mask_l .* 1[pre_l > 0]
  void backprop_activation(std::size_t l, TowerWorkspace& ws) const {
    Matrix& d = ws.d_pre[l];
    d = (ws.pre[l].array() > Scalar(0)).select(d, Scalar(0));
    if (ws.mask) apply_mask(ws.mask->layers[l], d);
  }

  static void apply_mask(const Matrix& m, Matrix& x) {
    if (m.cols() == 1)
      x.array().colwise() *= m.col(0).array();
    else
      x.array() *= m.array();
  }

  std::size_t user_dim_ = 0, item_dim_ = 0;
  std::vector<std::size_t> hidden_;
  std::vector<Matrix> weights_;
  std::vector<Vector> biases_;
};

}  // namespace age
