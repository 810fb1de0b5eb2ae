// The dense CTR tower f(h | theta): an MLP with ReLU hidden layers and one output logit,
// y = sigmoid(logit), over h = [user | item].
//
// The first layer is split, W0 = [W_user | W_item], so that for a request W_user * user is
// computed once and shared by all N candidates (DESIGN.md, "Data flow of one request"),
// and so that the gradient with respect to the item part alone is one product W_item^T * d.
// All passes run on a whole batch: the candidates are the columns of every matrix.
//
// Request passes. Exploration scores one request many times: the no-dropout pass, one or
// 20 MC-Dropout passes, the input gradient, and passes at h + dh with only the item part
// moved. begin_request() runs the no-dropout pass and keeps its per-layer pre-activations
// in the workspace; the request_* passes then reuse them:
//   - a dropout mask acts on the hidden units, so the first layer's pre-activation is the
//     same under every mask; with a mask shared by the candidates, the next layer's
//     pre-activation differs from the cached one only through the few units whose mask
//     value differs from the common scale s = 1 / (1 - p) (p H0 ~ 2.6 of 256 at p = 0.01):
//       W1 (m .* a0) = s (pre1 - b1) + b1 + sum_{j: m_j != s} (m_j - s) W1[:, j] a0[j, :]
//     (a rank-|J| update instead of a full product; exact up to float rounding);
//   - the input gradient at h walks down from the cached pre-activations (no forward);
//   - a move of the item part changes layer 0 by W_item dh only:
//       pre0(h + dh) = pre0(h) + W_item dh
//     (also more precise than recomputing W_item (items + dh) when dh is tiny);
//   - a move too short to change the sign of any hidden unit (a radius per candidate
//     proves it) stays in one linear piece of the network: logit(h + dh) = logit(h) +
//     grad . dh, no pass at all (set_linear_moves); for FGM's move along the normalised
//     gradient that is logit(h) + length ||grad|| (request_normalized_move_logits).
// The products run on the tower's own kernel (age/model/gemm.hpp), which also writes each
// ReLU (and applies the gradient's ReLU gates) while a block is in registers; the input
// gradient's on transposed weight copies that commit_weights() keeps.
// Their scratch only grows, so a warmed-up workspace serves any request size up to the
// largest seen, and any subset of the candidates (request_select), without allocating.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <new>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/scratch.hpp"
#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"
#include "age/model/gemm.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/sign_table.hpp"

namespace age {

// Gradients of a loss with respect to every tower parameter, shaped like the parameters.
struct TowerGradients {
  std::vector<Matrix> weights;
  std::vector<Vector> biases;
};

// Scratch of the request passes (Tower::begin_request and the request_* passes).
struct TowerRequestScratch {
  Index columns = 0;         // candidates in the cached request (after request_select)
  // After request_select(): the cached pass's column of each request candidate, read in
  // place by the passes (empty: candidate j is column j).
  std::vector<Index> kept;
  bool active = false;       // begin_request() ran and no other pass overwrote the cache
  std::vector<Matrix> pre;   // per layer: pre-activations of the last masked or moved pass
  std::vector<Matrix> act;   // per hidden layer: activations, then backward scratch
  std::vector<Index> changed;  // hidden-0 units whose mask value is not the common scale
  std::vector<const Scalar*> changed_column;  // ... their columns W1[:, j]
  std::vector<Scalar> changed_factor;        // ... m_j - s
  std::vector<Scalar> changed_scale;         // ... per candidate: (m_j - s) ReLU(a0_j), kCols at a time
  RowVector logits;          // the no-dropout logits of the request's candidates
  Vector output_weights;     // w_out with a shared mask of the top hidden layer folded in
  bool moved_valid = false;  // pre holds a moved pass (request_moved_item_gradient reads it)
  // Certified linear moves (Tower::set_linear_moves): the logit's input gradient at the
  // cached point, and which candidates of the last moved pass were computed in full.
  Matrix unit_gradient;            // d logit / d items, item_dim x columns
  bool unit_gradient_valid = false;
  bool radius_valid = false;       // radius holds the candidates' radii (found with the gradient)
  bool moved_linear = false;       // the last moved pass certified some candidates
  std::vector<Index> full_moves;   // ... and computed these in full (pre holds them, gathered)
  Matrix gathered;                 // item_dim x |full_moves|: their moves, then their gradients
  RowVector radius, gathered_logit, ones;
};

// Caller-owned scratch space for the passes of one thread. Holds the cached
// pre-activations and activations of the last forward pass, which backward() reads.
// Sized on first use; reused without allocation while the batch shape stays the same.
// A forward pass (forward, logits, probability_gradient) ends a request started by
// Tower::begin_request on the same workspace.
struct TowerWorkspace {
  Vector user_pre;             // W_user * user + b0, when the user column is shared
  std::vector<Matrix> pre;     // pre-activation of each layer (last: 1 x N logits)
  std::vector<Matrix> act;     // ReLU(pre) (.* mask) of each hidden layer (see acts_stale)
  std::vector<Matrix> d_pre;   // backward: d(objective)/d(pre-activation) of each layer
  RowVector d_logit;           // upstream gradient scratch of probability_gradient()
  const DropoutMask* mask = nullptr;  // mask of the last forward pass
  bool acts_stale = false;     // act not written (begin_request), see Tower::backward
  bool shared_user = true;
  Index batch = 0;
  TowerRequestScratch request;

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
    if (item_dim_ == 0) throw ConfigError("tower: item_dim: expected >= 1 (AGE perturbs the item part), got 0");
    for (std::size_t l = 0; l < hidden_.size(); ++l)
      if (hidden_[l] == 0) throw ConfigError("tower: hidden[" + std::to_string(l) + "]: expected >= 1 units, got 0");
    // Every size is bounded before anything is allocated (and before user_dim + item_dim
    // could overflow), so that an absurd shape is an age::Error, not std::bad_alloc.
    detail::check_tensor_size("tower: user_dim", user_dim_, 1);
    detail::check_tensor_size("tower: item_dim", item_dim_, 1);
    const std::size_t layers = hidden_.size() + 1;
    for (std::size_t l = 0; l < layers; ++l)
      detail::check_tensor_size("tower: layer " + std::to_string(l) + " weights (out x in)", out_size(l), in_size(l));
    weights_.resize(layers);
    biases_.resize(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      try {
        weights_[l] = Matrix::Zero(static_cast<Index>(out_size(l)), static_cast<Index>(in_size(l)));
        biases_[l] = Vector::Zero(static_cast<Index>(out_size(l)));
      } catch (const std::bad_alloc&) {
        detail::throw_allocation_failed("tower: layer " + std::to_string(l) + " weights (out x in)", out_size(l),
                                        in_size(l));
      }
    }
    commit_weights();
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
    commit_weights();
  }

  std::size_t user_dim() const noexcept { return user_dim_; }
  std::size_t item_dim() const noexcept { return item_dim_; }
  std::size_t input_dim() const noexcept { return user_dim_ + item_dim_; }
  const std::vector<std::size_t>& hidden() const noexcept { return hidden_; }
  std::size_t num_layers() const noexcept { return weights_.size(); }  // hidden + output
  std::size_t in_size(std::size_t l) const {
    if (l == 0) return input_dim();
    detail::require_index("tower: layer", l, hidden_.size() + 1);
    return hidden_[l - 1];
  }
  std::size_t out_size(std::size_t l) const { return l < hidden_.size() ? hidden_[l] : 1; }

  // Write access to layer l's weights. It marks the tower as edited: until the next
  // commit_weights(), input gradients use Eigen's transposed product instead of the
  // transposed copies (same values up to float rounding, slower). Call commit_weights()
  // once the edit is done; a reference kept and written through after that call would
  // leave the copies stale. The library's own writers (initialize, the optimizers,
  // load_model) commit.
  Matrix& weight(std::size_t l) {
    detail::require_index("tower: weight layer", l, weights_.size());
    weights_committed_ = false;
    return weights_[l];
  }
  const Matrix& weight(std::size_t l) const {
    return detail::require_index("tower: weight layer", l, weights_.size()), weights_[l];
  }
  Vector& bias(std::size_t l) { return detail::require_index("tower: bias layer", l, biases_.size()), biases_[l]; }
  const Vector& bias(std::size_t l) const {
    return detail::require_index("tower: bias layer", l, biases_.size()), biases_[l];
  }

  // Refreshes the transposed copies of the weights that the input gradient multiplies by
  // (W_item^T and W_l^T of the layers above), so that it runs on the tower's own product
  // kernel (age/model/gemm.hpp) like the forward passes. O(parameters); call it after
  // editing weights through weight(l).
  void commit_weights() {
    transposed_.resize(weights_.size());
    if (weights_.empty()) return;
    transposed_[0] = weights_[0].rightCols(static_cast<Index>(item_dim_)).transpose();
    for (std::size_t l = 1; l < weights_.size(); ++l) transposed_[l] = weights_[l].transpose();
    // 1 / (bound of |delta pre_l[o]| per unit length of the item move), for the certified
    // linear moves (set_linear_moves): ||W_item[o, :]|| for layer 0, ||W_l[o, :]|| times the
    // Frobenius norms of the layers below for the others. A unit that cannot move gets a
    // bound of FLT_MIN (its radius is then huge, or 0 at pre = 0: no certificate).
    inverse_move_bound_.resize(hidden_.size());
    double below = 1.0;  // product of the Frobenius norms of the layers below
    for (std::size_t l = 0; l < hidden_.size(); ++l) {
      const auto w = l == 0 ? weights_[0].rightCols(static_cast<Index>(item_dim_)) : weights_[l].leftCols(weights_[l].cols());
      Vector& inv = inverse_move_bound_[l];
      inv.resize(w.rows());
      for (Index o = 0; o < w.rows(); ++o) {
        const double bound = below * static_cast<double>(w.row(o).norm());
        inv[o] = static_cast<Scalar>(1.0 / std::max(bound, static_cast<double>(std::numeric_limits<Scalar>::min())));
      }
      below *= static_cast<double>(w.norm());
    }
    weights_committed_ = true;
    build_sign_table();
  }
  // Whether no weight(l) write access happened since the last commit_weights().
  bool weights_committed() const noexcept { return weights_committed_; }

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
    forward_pass(user, items, mask, ws, nullptr);
  }

 private:
  // forward(); with `output` (no mask), the request passes' form, which writes no ReLU:
  // each layer's product reads the pre-activation below through its ReLU (relu_x), and
  // the output logit is read from the top hidden layer's product panel by panel
  // (gemm_kernel::OutputLogits, with its masked logit when output->masked_weights is set)
  // instead of by the output layer's product (ws.acts_stale: backward() writes the ReLUs
  // first). Only where every hidden layer runs on the product kernel.
  void forward_pass(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
                    detail::gemm_kernel::OutputLogits* output) const {
    check_inputs(user, items, mask);
    const Index n = items.cols();
    const std::size_t layers = weights_.size();
    ws.pre.resize(layers);
    ws.act.resize(hidden_.size());
    ws.mask = (mask && !mask->empty()) ? mask : nullptr;
    ws.shared_user = user.cols() == 1;
    ws.batch = n;
    ws.request.active = false;
    ws.acts_stale = false;
    if (output && (ws.mask || !request_form_applies())) output = nullptr;
    if (output) {
      const std::size_t top = hidden_.size() - 1;
      ws.pre[top + 1].resize(1, n);
      output->weights = weights_[top + 1].data();  // 1 x H: contiguous
      output->out_bias = biases_[top + 1][0];
      output->out = ws.pre[top + 1].data();
      ws.acts_stale = true;
    }

    // Layer 0, split: (W_user * user + b0) + W_item * items. The constant part is
    // broadcast first and the product accumulated onto it: one pass over pre0 less.
    const Index du = static_cast<Index>(user_dim_), di = static_cast<Index>(item_dim_);
    const auto w_user = weights_[0].leftCols(du);
    const auto w_item = weights_[0].rightCols(di);
    // Without dropout the kernel writes each hidden layer's ReLU next to its
    // pre-activation (one pass over the layer less); with a mask, activate() does both.
    const bool fused = !ws.mask;
    const std::size_t hidden = hidden_.size();
    for (std::size_t l = 0; l < hidden; ++l) ws.act[l].resize(weights_[l].rows(), n);
    auto finish0 = (fused && hidden > 0) ? detail::also_relu(ws.act[0]) : detail::gemm_kernel::Finish{};
    if (output) {  // no ReLU written; with one hidden layer, the logits from this product
      finish0 = detail::gemm_kernel::Finish{};
      if (hidden == 1) finish0.output = output;
    }
    Matrix& pre0 = ws.pre[0];
    pre0.resize(weights_[0].rows(), n);
    if (ws.shared_user) {
      ws.user_pre.resize(weights_[0].rows());
      ws.user_pre.noalias() = w_user * user.col(0);
      ws.user_pre += biases_[0];
      detail::gemm_from_column(pre0, ws.user_pre, w_item, items, finish0);
    } else {
      pre0.colwise() = biases_[0];
      if (du > 0) pre0.noalias() += w_user * user;
      detail::gemm_add(pre0, w_item, items, finish0);
    }

    for (std::size_t l = 0; l < layers; ++l) {
      if (l > 0) {
        Matrix& pre = ws.pre[l];
        if (output) {
          if (l == hidden) break;  // the logits came with the top layer's product
          pre.resize(weights_[l].rows(), n);
          detail::gemm_kernel::Finish finish;
          if (l + 1 == hidden) finish.output = output;
          detail::gemm_from_column(pre, biases_[l], weights_[l], ws.pre[l - 1], finish, /*relu_x=*/true);
          continue;
        }
        pre.resize(weights_[l].rows(), n);
        layer_product(l, ws.act[l - 1], pre, (fused && l < hidden) ? &ws.act[l] : nullptr);
      }
      if (l < hidden && !fused) activate(l, ws);
    }
  }

  // Whether begin_request() takes forward_pass()'s request form (no ReLU written): every
  // hidden layer runs on the product kernel (at least one vector of units).
  bool request_form_applies() const noexcept {
    if (hidden_.empty()) return false;
    for (std::size_t l = 0; l < hidden_.size(); ++l)
      if (weights_[l].rows() < detail::gemm_kernel::kWidth) return false;
    return true;
  }

 public:
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
    if (ws.acts_stale) {  // begin_request() wrote no ReLU
      for (std::size_t l = 0; l < hidden_.size(); ++l) ws.act[l] = ws.pre[l].cwiseMax(Scalar(0));
      ws.acts_stale = false;
    }
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
      transposed_product(l, d_pre, below);
      backprop_activation(l - 1, ws);
    }
    const Index du = static_cast<Index>(user_dim_), di = static_cast<Index>(item_dim_);
    if (d_items) {
      d_items->resize(di, n);
      transposed_product(0, ws.d_pre[0], *d_items);
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

  // --- Request passes (see the top of this file) -----------------------------------------
  // Every request_* pass reads the request that begin_request() cached in `ws` (an
  // InputError if there is none) and works on its k = request_size() candidates.

  // Starts a request: the no-dropout pass forward(user, items, nullptr, ws), whose
  // pre-activations stay in ws; its logits (N) into `out`. The request lasts until the
  // next forward pass on ws. When every hidden layer runs on the product kernel, the pass
  // writes no ReLU: each product reads the pre-activation below through its ReLU (one max
  // per broadcast, on ports the multiply-adds leave free), and the logits are read from
  // the top hidden layer's product panel by panel while it is in the first-level cache
  // (gemm_kernel::OutputLogits) instead of by the output layer's product; backward() on
  // the workspace writes the ReLUs first. The same pre-activations as forward(), and its
  // logits up to float rounding (the output layer summed in another order).
  void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    detail::gemm_kernel::OutputLogits output;
    forward_pass(user, items, nullptr, ws, &output);
    start_request(items.cols(), ws, out);
  }

  // begin_request() and, in the same call, the logits under a dropout `mask` into
  // `masked_out` (N): what request_logits(mask, ws, masked_out) gives right after it, up
  // to float rounding (McDropoutTs's one sample, AGE-METHOD.md "Uncertainty delta_y by
  // MC-Dropout"). For a tower of two hidden layers and a mask shared by the candidates,
  // the masked logit of each candidate is read from layer 1's product with the no-dropout
  // one (gemm_kernel::OutputLogits: the rank-|J| update of request_logits on each panel,
  // with ReLU(pre0) read from the product's own operand) instead of by a second pass over
  // the cached pre-activations (on the reference workload ~7 ns per candidate instead of
  // ~13); otherwise it is begin_request() then request_logits().
  void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out,
                     const DropoutMask* mask, Eigen::Ref<RowVector> masked_out) const {
    const Index n = items.cols();
    check_inputs(user, items, mask);
    detail::require_dim("begin_request: masked logits output length", static_cast<std::size_t>(n),
                        static_cast<std::size_t>(masked_out.size()));
    TowerRequestScratch& rq = ws.request;
    prepare(rq);
    Scalar s = 0;
    const bool one_pass = mask && !mask->empty() && hidden_.size() == 2 && mask->layers[1].cols() == 1 &&
                          request_form_applies() && changed_units(mask->layers[0], rq, s);
    if (!one_pass) {
      begin_request(user, items, ws, out);
      request_logits(mask, ws, masked_out);
      return;
    }
    rq.output_weights = weights_[2].row(0).transpose().cwiseProduct(mask->layers[1].col(0));
    detail::gemm_kernel::OutputLogits output = shared_mask_logits(s, rq, masked_out.data());
    forward_pass(user, items, nullptr, ws, &output);
    start_request(n, ws, out);
  }

 private:
  // What begin_request() sets up after its pass: the request's logits into `out`, and
  // every scratch buffer sized for its n candidates.
  void start_request(Index n, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    detail::require_dim("begin_request: logits output length", static_cast<std::size_t>(n),
                        static_cast<std::size_t>(out.size()));
    out = ws.logits();
    TowerRequestScratch& rq = ws.request;
    rq.columns = n;
    rq.active = true;
    rq.kept.clear();
    rq.kept.reserve(static_cast<std::size_t>(rq.columns));
    rq.moved_valid = false;
    rq.unit_gradient_valid = false;
    rq.radius_valid = false;
    // Every scratch buffer sized now for N, whichever passes follow (which ones, and on how
    // many candidates, changes from request to request): none allocates afterwards.
    prepare(rq);
    for (std::size_t l = 0; l < weights_.size(); ++l) {
      detail::scratch_cols(rq.pre[l], weights_[l].rows(), rq.columns);
      if (l < hidden_.size()) detail::scratch_cols(rq.act[l], weights_[l].rows(), rq.columns);
    }
    detail::scratch_cols(rq.unit_gradient, static_cast<Index>(item_dim_), rq.columns);
    detail::scratch_cols(rq.gathered, static_cast<Index>(item_dim_), rq.columns);
    detail::scratch_head(rq.radius, rq.columns);
    detail::scratch_head(rq.gathered_logit, rq.columns);
    detail::scratch_head(rq.ones, rq.columns);
    rq.full_moves.reserve(static_cast<std::size_t>(rq.columns));
    detail::scratch_head(rq.logits, rq.columns) = out;
    if (!hidden_.empty()) rq.output_weights.resize(static_cast<Index>(hidden_.back()));
  }

 public:
  // Candidates in the request: N, or fewer after request_select().
  Index request_size(const TowerWorkspace& ws) const {
    require_request(ws, "request_size");
    return ws.request.columns;
  }

  // Keeps only the candidates at positions `keep` (strictly increasing, relative to the
  // current request), in that order, e.g. those whose gate is open. Nothing is copied:
  // the passes read the kept columns of the cached pass where they are (a copy of the
  // kept pre-activations was ~2.5% of an AGE-TS request of 1000 candidates). ws.pre and
  // ws.act keep all N columns; backward() has no meaning on this workspace until its
  // next forward pass.
  void request_select(std::span<const Index> keep, TowerWorkspace& ws) const {
    require_request(ws, "request_select");
    TowerRequestScratch& rq = ws.request;
    const Index k = static_cast<Index>(keep.size());
    Index previous = -1;
    for (Index j = 0; j < k; ++j) {
      const Index i = keep[static_cast<std::size_t>(j)];
      if (i <= previous || i >= rq.columns)
        throw InputError("request_select: keep[" + std::to_string(j) + "]: expected a position in (" +
                         std::to_string(previous) + ", " + std::to_string(rq.columns) + "), got " +
                         std::to_string(i));
      previous = i;
    }
    // j <= keep[j]: composing (or compacting the logits) in increasing j never overwrites
    // an entry still to be read.
    const bool first = rq.kept.empty();
    if (first) rq.kept.resize(static_cast<std::size_t>(k));  // within the reserved N
    for (Index j = 0; j < k; ++j) {
      const Index i = keep[static_cast<std::size_t>(j)];
      rq.kept[static_cast<std::size_t>(j)] = first ? i : rq.kept[static_cast<std::size_t>(i)];
      rq.logits[j] = rq.logits[i];
    }
    rq.kept.resize(static_cast<std::size_t>(k));
    rq.columns = k;
    rq.moved_valid = false;
    rq.unit_gradient_valid = false;
    rq.radius_valid = false;
  }

  // Logits of the request's candidates under a dropout mask (1 or request_size() columns;
  // nullptr or empty: no dropout) into `out`. Layer 0 is not recomputed (a mask on the
  // hidden units leaves its pre-activation unchanged); with a mask shared by the
  // candidates, layer 1 is the cached one plus a rank-|J| update (top of this file).
  void request_logits(const DropoutMask* mask, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_logits");
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    detail::require_dim("request_logits: output length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(out.size()));
    rq.moved_valid = false;
    if (!mask || mask->empty() || hidden_.empty()) {
      out = rq.logits.head(k);
      return;
    }
    check_mask(*mask, k);
    const std::size_t top = hidden_.size() - 1;  // the last hidden layer
    const Scalar b_out = biases_[top + 1][0];
    // A shared mask on the top hidden layer folds into the output weights, and the logit
    // of a candidate is then one dot product with its top pre-activation's ReLU.
    const bool fold_top = top > 0 && mask->layers[top].cols() == 1;
    if (fold_top) rq.output_weights = weights_[top + 1].row(0).transpose().cwiseProduct(mask->layers[top].col(0));
    // Layer 1's pre-activation under the mask of hidden layer 0 (layer 0's is unchanged).
    auto p1 = detail::scratch_cols(rq.pre[1], weights_[1].rows(), k);
    Scalar s = 0;
    const bool sparse = changed_units(mask->layers[0], rq, s);
    if (sparse && fold_top && top == 1) {
      // The 2-hidden-layer tower: each candidate's logit in one go (rq.pre is not written).
      const detail::gemm_kernel::OutputLogits masked = shared_mask_logits(s, rq, out.data());
      const Matrix& pre0 = ws.pre[0];
      const Index h0 = weights_[0].rows(), h1 = weights_[1].rows();
      for (Index n = 0; n < k; ++n) {
        // pre0's rows are 4 * H0 bytes apart, a cache miss per changed unit and candidate:
        // fetched a few candidates ahead.
        if (n + 8 < k)
          for (Index j : rq.changed) simd::prefetch(&pre0(j, cached_column(rq, n + 8)));
        const Index c = cached_column(rq, n);
        Scalar base_logit;  // the cached one; computed again with the masked logit (2 of ~40 operations)
        detail::gemm_kernel::output_logits_of<1, true>(masked, ws.pre[1].col(c).data(), h1, pre0.col(c).data(), h0,
                                                       h1, &base_logit, &out[n]);
      }
      return;
    }
    if (sparse) {
      for (Index n = 0; n < k; ++n) sparse_column(s, cached_column(rq, n), ws, p1.col(n));
    } else {
      auto a = detail::scratch_cols(rq.act[0], weights_[0].rows(), k);
      for (Index n = 0; n < k; ++n) a.col(n) = ws.pre[0].col(cached_column(rq, n)).cwiseMax(Scalar(0));
      apply_mask(mask->layers[0], a);
      layer_product(1, a, p1);
    }
    if (top == 0) {  // layer 1 was the output
      out = p1.row(0);
      return;
    }
    for (std::size_t l = 1; l < top; ++l) {
      auto a = detail::scratch_cols(rq.act[l], weights_[l].rows(), k);
      a = rq.pre[l].leftCols(k).cwiseMax(Scalar(0));
      apply_mask(mask->layers[l], a);
      layer_product(l + 1, a, detail::scratch_cols(rq.pre[l + 1], weights_[l + 1].rows(), k));
    }
    if (fold_top) {
      for (Index n = 0; n < k; ++n) out[n] = rq.output_weights.dot(rq.pre[top].col(n).cwiseMax(Scalar(0))) + b_out;
    } else {
      auto a = detail::scratch_cols(rq.act[top], weights_[top].rows(), k);
      a = rq.pre[top].leftCols(k).cwiseMax(Scalar(0));
      apply_mask(mask->layers[top], a);
      auto p = detail::scratch_cols(rq.pre[top + 1], 1, k);
      p.setConstant(b_out);
      p.noalias() += weights_[top + 1] * a;
      out = p.row(0);
    }
  }

  // Gradient of sum_n d_logit[n] z_n with respect to the items at the request's cached
  // no-dropout point, item_dim x k, into d_items (sized by the caller). With
  // d_logit = y (1 - y) it is dy/d(items), as probability_gradient() gives it.
  void request_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                             Eigen::Ref<Matrix> d_items) const {
    require_request(ws, "request_item_gradient");
    TowerRequestScratch& rq = ws.request;
    prepare(rq);
    if (!linear_moves_) {
      item_gradient(ws.pre, kept_columns(rq), d_logit, rq, d_items);
      return;
    }
    // The logit's own gradient is kept for certified linear moves, then scaled by d_logit.
    const Index k = rq.columns;
    detail::require_dim("request_item_gradient: d_logit length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_logit.size()));
    detail::require_dim("request_item_gradient: output columns (candidates)", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_items.cols()));
    unit_gradient_and_radius(ws);
    d_items.noalias() = rq.unit_gradient.leftCols(k) * d_logit.asDiagonal();
  }

  // Logits at h + dh with only the item part moved (d_items: item_dim x k), from the
  // cached layer-0 pre-activation: pre0 + W_item dh. The pass stays in ws for
  // request_moved_item_gradient().
  void request_moved_logits(ConstMatrixRef d_items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_moved_logits");
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    detail::require_dim("request_moved_logits: move rows (item_dim)", item_dim_, static_cast<std::size_t>(d_items.rows()));
    detail::require_dim("request_moved_logits: move columns (candidates)", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_items.cols()));
    detail::require_dim("request_moved_logits: output length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(out.size()));
    prepare(rq);
    rq.moved_valid = true;
    rq.moved_linear = linear_moves_ && rq.unit_gradient_valid && weights_committed_;
    if (!rq.moved_linear) {
      moved_pass(d_items, ws, k);
      out = rq.pre.back().row(0).head(k);
      return;
    }
    // Certified linear moves (set_linear_moves): a candidate whose move is shorter than its
    // radius stays in one linear piece of the network, where logit(h + dh) = logit(h) +
    // grad . dh exactly; the others get the pass in full, gathered.
    auto radius = detail::scratch_head(rq.radius, k);
    if (!rq.radius_valid) linear_radius(ws, radius);
    rq.full_moves.clear();
    for (Index n = 0; n < k; ++n) {
      if (d_items.col(n).norm() < radius[n])
        out[n] = rq.logits[n] + rq.unit_gradient.col(n).dot(d_items.col(n));
      else
        rq.full_moves.push_back(n);
    }
    const Index m = static_cast<Index>(rq.full_moves.size());
    if (m == 0) return;
    auto moves = detail::scratch_cols(rq.gathered, static_cast<Index>(item_dim_), m);
    for (Index j = 0; j < m; ++j) moves.col(j) = d_items.col(rq.full_moves[static_cast<std::size_t>(j)]);
    moved_pass(moves, ws, m, rq.full_moves.data());
    for (Index j = 0; j < m; ++j) out[rq.full_moves[static_cast<std::size_t>(j)]] = rq.pre.back()(0, j);
  }

  // FGM on the request passes in one go: the logit of each request candidate n at
  //   h + length[n] g_n / ||g_n||,   g_n = d_logit[n] d z_n / d items
  // (no move where ||g_n|| is 0 or not finite), what request_item_gradient() with
  // d_logit, the normalised move and request_moved_logits() give, up to float rounding.
  // A certified move (|length[n]| < its radius, see set_linear_moves) stays in one linear
  // piece, where the logit is z_n +- length[n] ||d z_n / d items|| (the sign of d_logit[n];
  // + for FGM's d_logit = y (1 - y)): one pass
  // over each candidate's gradient instead of the gradient scaled, its norm, the move
  // written, its norm and a dot product; the others get the moved pass in full. Returns
  // false, computing nothing, without certified moves (set_linear_moves(false), or
  // edited weights): then take those three steps. Leaves the pass as
  // request_moved_logits() does.
  bool request_normalized_move_logits(Eigen::Ref<const RowVector> d_logit, Eigen::Ref<const RowVector> length,
                                      TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_normalized_move_logits");
    if (!linear_moves_ || !weights_committed_) return false;
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns, di = static_cast<Index>(item_dim_);
    detail::require_dim("request_normalized_move_logits: d_logit length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_logit.size()));
    detail::require_dim("request_normalized_move_logits: length length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(length.size()));
    detail::require_dim("request_normalized_move_logits: output length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(out.size()));
    prepare(rq);
    unit_gradient_and_radius(ws);
    const auto unit = rq.unit_gradient.leftCols(k);
    const auto radius = rq.radius.head(k);
    rq.moved_valid = true;
    rq.moved_linear = true;
    rq.full_moves.clear();
    detail::scratch_head(rq.gathered_logit, k);
    for (Index n = 0; n < k; ++n) {
      const Scalar* u = unit.col(n).data();
      simd::Vec sum = simd::zero();
      Index i = 0;
      for (; i + simd::kWidth <= di; i += simd::kWidth) {
        const simd::Vec v = simd::load(u + i);
        sum += v * v;
      }
      Scalar squared = simd::sum_lanes(sum);
      for (; i < di; ++i) squared += u[i] * u[i];
      const double unit_norm = std::sqrt(static_cast<double>(squared));
      const double norm = std::abs(static_cast<double>(d_logit[n])) * unit_norm;  // ||g_n||
      if (!(std::isfinite(norm) && norm > 0.0)) {
        out[n] = rq.logits[n];  // no move
        continue;
      }
      // The move is step u / ||u|| (u = d z_n / d items): g_n's direction.
      const double step = d_logit[n] < 0 ? -static_cast<double>(length[n]) : static_cast<double>(length[n]);
      if (std::abs(length[n]) < radius[n]) {
        out[n] = rq.logits[n] + static_cast<Scalar>(step * unit_norm);
        continue;
      }
      // In full: the move's scale, gathered below.
      rq.gathered_logit[static_cast<Index>(rq.full_moves.size())] = static_cast<Scalar>(step / unit_norm);
      rq.full_moves.push_back(n);
    }
    const Index m = static_cast<Index>(rq.full_moves.size());
    if (m == 0) return true;
    auto moves = detail::scratch_cols(rq.gathered, di, m);
    for (Index j = 0; j < m; ++j)
      moves.col(j) = unit.col(rq.full_moves[static_cast<std::size_t>(j)]) * rq.gathered_logit[j];
    moved_pass(moves, ws, m, rq.full_moves.data());
    for (Index j = 0; j < m; ++j) out[rq.full_moves[static_cast<std::size_t>(j)]] = rq.pre.back()(0, j);
    return true;
  }

  // Certified linear moves. A ReLU network is linear between two points where no hidden
  // unit changes sign, so for a move dh of the item part that provably flips no unit,
  //   logit(h + dh) = logit(h) + d logit/d items . dh        (exactly, up to float rounding)
  // and the moved pass (two matrix products per candidate) can be skipped; PGD's gradient
  // at h + dh is then the one at h. The proof is a radius per candidate: with
  //   |delta pre0_j| <= ||W_item[j, :]|| ||dh||,  ||delta a_l|| <= ||delta pre_l|| (ReLU is
  //   1-Lipschitz),  |delta pre_l[o]| <= ||W_l[o, :]|| ||delta a_{l-1}||,
  //   ||delta pre_l|| <= ||W_l||_F ||delta a_{l-1}||,
  // no unit flips while ||dh|| < r = min over hidden units of |pre| / bound (bounds from
  // commit_weights(), with a 1% margin for float rounding). At exploration's move sizes
  // (lambda' |delta_y| ~ 1e-5 .. 1e-3 in embedding units) nearly every candidate is
  // certified; the rest, and every move when this is off, run the pass in full. On by
  // default; off reproduces the full passes' float rounding exactly.
  void set_linear_moves(bool on) noexcept { linear_moves_ = on; }
  bool linear_moves() const noexcept { return linear_moves_; }

  // The input gradient's first product, through the top hidden layer's ReLU, is a fixed
  // matrix W_top^T diag(w_out) times the layer's 0/1 pattern; commit_weights() tabulates
  // it (age/model/sign_table.hpp) so that a gradient adds one precomputed vector per
  // group of 4 units (16 for 64 units) for each vector of output rows, instead of one
  // multiply-add per unit. Only for a top layer of at most 128 units whose input size is
  // a whole number of vectors; on by default. Off, or while the weights are edited, the
  // gradient runs the product (the same values up to float rounding). Table memory:
  // 4 x units x input floats (256 kB for 64 x 256), written by every commit_weights():
  // an Adam step on a 32-256-64-1 tower took 34 instead of 31 us with AVX-512 and 63
  // instead of 46 us with SSE2 only, so a training loop that computes no input gradients
  // can turn the tables off. Set before sharing the tower.
  void set_gradient_tables(bool on) {
    gradient_tables_ = on;
    build_sign_table();
  }
  bool gradient_tables() const noexcept { return gradient_tables_; }
  // Bytes of that table (0: the tower's shape has none).
  std::size_t gradient_table_bytes() const noexcept { return sign_table_.bytes(); }

  // The certified radius of each of the request's candidates (see set_linear_moves), into
  // `out` (request_size()); +inf for a tower without hidden layers.
  void request_linear_radius(TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_linear_radius");
    if (!weights_committed_)
      throw InputError("request_linear_radius: expected committed weights (commit_weights()), got an edited tower");
    detail::require_dim("request_linear_radius: output length", static_cast<std::size_t>(ws.request.columns),
                        static_cast<std::size_t>(out.size()));
    linear_radius(ws, out);
  }

  // request_item_gradient() at the point of the last request_moved_logits().
  void request_moved_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                   Eigen::Ref<Matrix> d_items) const {
    require_request(ws, "request_moved_item_gradient");
    TowerRequestScratch& rq = ws.request;
    if (!rq.moved_valid)
      throw InputError("request_moved_item_gradient: expected a request_moved_logits() pass before, got none");
    if (!rq.moved_linear) {
      item_gradient(rq.pre, nullptr, d_logit, rq, d_items);
      return;
    }
    const Index k = rq.columns;
    detail::require_dim("request_moved_item_gradient: d_logit length", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_logit.size()));
    detail::require_dim("request_moved_item_gradient: output columns (candidates)", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(d_items.cols()));
    // Certified candidates: the gradient of their linear piece, the one at h. The others:
    // from their gathered moved pass.
    d_items.noalias() = rq.unit_gradient.leftCols(k) * d_logit.asDiagonal();
    const Index m = static_cast<Index>(rq.full_moves.size());
    if (m == 0) return;
    auto d_logit_full = detail::scratch_head(rq.gathered_logit, m);
    for (Index j = 0; j < m; ++j) d_logit_full[j] = d_logit[rq.full_moves[static_cast<std::size_t>(j)]];
    auto g = detail::scratch_cols(rq.gathered, static_cast<Index>(item_dim_), m);
    item_gradient(rq.pre, nullptr, d_logit_full, rq, g);
    for (Index j = 0; j < m; ++j) d_items.col(rq.full_moves[static_cast<std::size_t>(j)]) = g.col(j);
  }

 private:
  // The input gradient's first product as table lookups (age/model/sign_table.hpp), for
  // committed weights when the tables are on; otherwise none.
  void build_sign_table() {
    if (gradient_tables_ && weights_committed_ && !hidden_.empty())
      sign_table_.build(transposed_[hidden_.size() - 1], weights_[hidden_.size()].row(0));
    else
      sign_table_.clear();
  }

  void check_inputs(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask) const {
    detail::require_dim("tower input: user rows (user_dim)", user_dim_, static_cast<std::size_t>(user.rows()));
    detail::require_dim("tower input: item rows (item_dim)", item_dim_, static_cast<std::size_t>(items.rows()));
    if (items.cols() == 0) throw InputError("tower input: no candidates (items has 0 columns)");
    if (user.cols() != 1 && user.cols() != items.cols())
      throw DimensionError("tower input: user columns: expected 1 or " + std::to_string(items.cols()) +
                           ", got " + std::to_string(user.cols()));
    if (mask && !mask->empty()) check_mask(*mask, items.cols());
  }

  void check_mask(const DropoutMask& mask, Index n) const {
    detail::require_dim("dropout mask: number of layers", hidden_.size(), mask.layers.size());
    for (std::size_t l = 0; l < hidden_.size(); ++l) {
      // Messages are built only on failure: this check runs on every scoring pass.
      const Matrix& m = mask.layers[l];
      if (static_cast<std::size_t>(m.rows()) != hidden_[l])
        throw DimensionError(detail::mismatch("dropout mask layer " + std::to_string(l) + " rows", hidden_[l],
                                              static_cast<std::size_t>(m.rows())));
      if (m.cols() != 1 && m.cols() != n)
        throw DimensionError("dropout mask layer " + std::to_string(l) + " columns: expected 1 or " +
                             std::to_string(n) + ", got " + std::to_string(m.cols()));
    }
  }

  void require_request(const TowerWorkspace& ws, const char* pass) const {
    if (!ws.request.active || ws.pre.size() != weights_.size() || ws.act.size() != hidden_.size())
      throw InputError(std::string(pass) +
                       ": request on this workspace: expected one started by begin_request() and not ended by a "
                       "forward pass since, got none");
  }

  // The column of the cached pass (ws.pre) that holds request candidate j (request_select).
  static Index cached_column(const TowerRequestScratch& rq, Index j) noexcept {
    return rq.kept.empty() ? j : rq.kept[static_cast<std::size_t>(j)];
  }
  static const Index* kept_columns(const TowerRequestScratch& rq) noexcept {
    return rq.kept.empty() ? nullptr : rq.kept.data();
  }

  void prepare(TowerRequestScratch& rq) const {
    // No allocation once sized: resize() to the same length and reserve() within the
    // capacity are no-ops.
    rq.pre.resize(weights_.size());
    rq.act.resize(hidden_.size());
    if (!hidden_.empty()) {
      rq.changed.reserve(hidden_[0]);
      rq.changed_column.reserve(hidden_[0]);
      rq.changed_factor.reserve(hidden_[0]);
      rq.changed_scale.reserve(hidden_[0] * detail::gemm_kernel::kCols);  // masked_logits_of
    }
  }

  // Layer 1's pre-activation under the mask m of hidden layer 0, from the cached no-dropout
  // pre1 = W1 a0 + b1 (a0 = ReLU(pre0)): with s the mask's largest value and J the units
  // where m_j != s,
  //   W1 (m .* a0) + b1 = s pre1 + (1 - s) b1 + sum_{j in J} (m_j - s) W1[:, j] a0[j, :]
  // Used when m is shared (one column) and |J| <= H0 / 4 (p = 0.01: ~2.6 of 256 units).
  // changed_units() finds s and J (false: use the dense product) with each changed unit's
  // column W1[:, j] and factor m_j - s, the same for every candidate; sparse_column()
  // writes candidate n's column.
  bool changed_units(const Matrix& m0, TowerRequestScratch& rq, Scalar& s) const {
    if (m0.cols() != 1) return false;
    const auto m = m0.col(0);
    const Index h0 = m.size();
    s = m.maxCoeff();
    rq.changed.clear();
    rq.changed_column.clear();
    rq.changed_factor.clear();
    for (Index j = 0; j < h0; ++j) {
      if (m[j] == s) continue;
      if (static_cast<Index>(rq.changed.size()) * 4 >= h0) return false;
      rq.changed.push_back(j);
      rq.changed_column.push_back(weights_[1].col(j).data());
      rq.changed_factor.push_back(m[j] - s);
    }
    return true;
  }
  template <class Col>
  void sparse_column(Scalar s, Index n, const TowerWorkspace& ws, Col&& col) const {
    const TowerRequestScratch& rq = ws.request;
    const Matrix& pre0 = ws.pre[0];
    col = s * ws.pre[1].col(n) + (Scalar(1) - s) * biases_[1];
    for (std::size_t c = 0; c < rq.changed.size(); ++c) {
      const Scalar a = pre0(rq.changed[c], n);
      if (a > Scalar(0)) col += (rq.changed_factor[c] * a) * weights_[1].col(rq.changed[c]);
    }
  }

  // sparse_column() and the output layer of a 2-hidden-layer tower, with the top layer's
  // mask folded into rq.output_weights, as gemm_kernel::OutputLogits: the masked logit
  // sum_i w_i ReLU(pre1'_i) + b_out of each candidate, pre1' never stored (vectorised over
  // layer 1's units and branch-free; Eigen's expression, a column then a dot product, was
  // ~5% of an AGE-TS request of 1000 candidates). Read from the cached pass by
  // request_logits(), from each panel of layer 1's product by begin_request() with a mask.
  // Needs changed_units() and rq.output_weights; the masked logits go to `out`.
  detail::gemm_kernel::OutputLogits shared_mask_logits(Scalar s, TowerRequestScratch& rq, Scalar* out) const {
    rq.changed_scale.resize(rq.changed.size() * detail::gemm_kernel::kCols);
    detail::gemm_kernel::OutputLogits o;
    o.weights = weights_[2].data();  // 1 x H1: contiguous
    o.out_bias = biases_[2][0];
    o.masked_weights = rq.output_weights.data();
    o.bias = biases_[1].data();
    o.scale = s;
    o.changed = rq.changed.size();
    o.changed_rows = rq.changed.data();
    o.changed_columns = rq.changed_column.data();
    o.changed_factor = rq.changed_factor.data();
    o.factor_scratch = rq.changed_scale.data();
    o.masked_out = out;
    return o;
  }

  // d logit / d items of the request's k candidates into rq.unit_gradient (item_dim x k),
  // what certified linear moves scale, with their radii into rq.radius while the gradient
  // reads the same pre-activations (they need the bounds of committed weights).
  void unit_gradient_and_radius(TowerWorkspace& ws) const {
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    auto ones = detail::scratch_head(rq.ones, k);
    ones.setOnes();
    auto unit = detail::scratch_cols(rq.unit_gradient, static_cast<Index>(item_dim_), k);
    Eigen::Ref<RowVector> radius = detail::scratch_head(rq.radius, k);
    item_gradient(ws.pre, kept_columns(rq), ones, rq, unit, weights_committed_ ? &radius : nullptr);
    rq.unit_gradient_valid = true;
    rq.radius_valid = weights_committed_;
  }

  // The input gradient from the per-layer pre-activations `pre` of a no-dropout pass
  // (the cached one or a moved one): down from d_logit through each ReLU, then W_item^T.
  // Candidate n's column of `pre` is columns[n] (nullptr: n), see request_select.
  // With `radius` (k; committed weights only), also each candidate's certified radius at
  // that point (linear_radius), found by the table pass while it reads the top two
  // layers' pre-activations.
  void item_gradient(const std::vector<Matrix>& pre, const Index* columns, Eigen::Ref<const RowVector> d_logit,
                     TowerRequestScratch& rq, Eigen::Ref<Matrix> g, Eigen::Ref<RowVector>* radius = nullptr) const {
    // k = d_logit.size(): the request's candidates, or the gathered ones of a moved pass.
    const Index k = d_logit.size();
    const Index di = static_cast<Index>(item_dim_);
    detail::require_dim("item gradient: output rows (item_dim)", item_dim_, static_cast<std::size_t>(g.rows()));
    detail::require_dim("item gradient: output columns (candidates)", static_cast<std::size_t>(k),
                        static_cast<std::size_t>(g.cols()));
    const auto w_item = weights_[0].rightCols(di);
    const std::size_t hidden = hidden_.size();
    if (hidden == 0) {
      for (Index n = 0; n < k; ++n) g.col(n) = d_logit[n] * w_item.row(0).transpose();
      if (radius) radius->setConstant(std::numeric_limits<Scalar>::infinity());
      return;
    }
    const std::size_t top = hidden - 1;
    std::size_t l = top;
    const bool tabled = weights_committed_ && !sign_table_.empty();
    if (tabled) {
      // The top layer's product by table lookups (age/model/sign_table.hpp): straight to
      // d(pre) of the layer below it, or to g for a tower of one hidden layer.
      detail::SignTable::SmallestRatio ratio{inverse_move_bound_[top].data(),
                                             top > 0 ? inverse_move_bound_[top - 1].data() : nullptr,
                                             radius ? radius->data() : nullptr};
      if (top == 0) {
        sign_table_.multiply(pre[0], columns, d_logit, nullptr, g, radius ? &ratio : nullptr);
      } else {
        auto below = detail::scratch_cols(rq.act[top - 1], weights_[top - 1].rows(), k);
        sign_table_.multiply(pre[top], columns, d_logit, &pre[top - 1], below, radius ? &ratio : nullptr);
        --l;
      }
      if (radius) {
        // The layers under the top two, then the margin (linear_radius).
        fold_smallest_ratios(pre, columns, 0, top > 0 ? top - 1 : 0, *radius);
        *radius *= kRadiusMargin;
      }
      if (top == 0) return;
    } else {
      // d(pre) of the top hidden layer: w_out^T d_logit through its ReLU.
      const auto w_out = weights_[hidden].row(0);
      auto d = detail::scratch_cols(rq.act[top], weights_[top].rows(), k);
      for (Index n = 0; n < k; ++n)
        d.col(n) = (pre[top].col(columns ? columns[n] : n).array() > Scalar(0))
                       .select(d_logit[n] * w_out.transpose().array(), Scalar(0));
    }
    for (; l > 0; --l) {
      auto below = detail::scratch_cols(rq.act[l - 1], weights_[l - 1].rows(), k);
      transposed_product(l, rq.act[l].leftCols(k), below, pre[l - 1], columns);
    }
    transposed_product(0, rq.act[0].leftCols(k), g);
    if (radius && !tabled) {
      radius->setConstant(std::numeric_limits<Scalar>::infinity());
      fold_smallest_ratios(pre, columns, 0, hidden, *radius);
      *radius *= kRadiusMargin;
    }
  }

  // The pass at h + dh for m candidates into rq.pre's first m columns: pre0 + W_item dh,
  // then the layers above. `columns` (optional) maps them to the cached pass's columns
  // (the gathered candidates of a certified linear move); without it they are 0..m-1.
  void moved_pass(ConstMatrixRef moves, TowerWorkspace& ws, Index m, const Index* columns = nullptr) const {
    TowerRequestScratch& rq = ws.request;
    auto p0 = detail::scratch_cols(rq.pre[0], weights_[0].rows(), m);
    for (Index j = 0; j < m; ++j) p0.col(j) = ws.pre[0].col(cached_column(rq, columns ? columns[j] : j));
    // Each hidden layer's ReLU is written by the product below it (see forward()).
    const std::size_t hidden = hidden_.size();
    const auto w_item = weights_[0].rightCols(static_cast<Index>(item_dim_));
    if (hidden == 0) {
      detail::gemm_add(p0, w_item, moves);
      return;
    }
    detail::gemm_add(p0, w_item, moves, detail::also_relu(detail::scratch_cols(rq.act[0], weights_[0].rows(), m)));
    for (std::size_t l = 0; l < hidden; ++l) {
      auto next = detail::scratch_cols(rq.pre[l + 1], weights_[l + 1].rows(), m);
      if (l + 1 < hidden) {
        auto next_act = detail::scratch_cols(rq.act[l + 1], weights_[l + 1].rows(), m);
        layer_product(l + 1, rq.act[l].leftCols(m), next, &next_act);
      } else {
        layer_product(l + 1, rq.act[l].leftCols(m), next);
      }
    }
  }

  // r per cached candidate (see set_linear_moves): min over hidden units of |pre| / bound,
  // with a 1% margin for the rounding of pre and of the bounds.
  static constexpr Scalar kRadiusMargin = Scalar(0.99);
  void linear_radius(const TowerWorkspace& ws, Eigen::Ref<RowVector> r) const {
    r.setConstant(std::numeric_limits<Scalar>::infinity());
    fold_smallest_ratios(ws.pre, kept_columns(ws.request), 0, hidden_.size(), r);
    r *= kRadiusMargin;
  }
  // r[n] = min(r[n], |pre_l| / bound over the units of hidden layers first <= l < last) for
  // the r.size() candidates, candidate n in column columns[n] (nullptr: n) of `pre`.
  void fold_smallest_ratios(const std::vector<Matrix>& pre_of, const Index* columns, std::size_t first,
                            std::size_t last, Eigen::Ref<RowVector> r) const {
    if (first >= last) return;
    for (Index n = 0; n < r.size(); ++n) {
      const Index c = columns ? columns[n] : n;
      simd::Vec smallest = simd::broadcast(r[n]);
      Scalar tail = r[n];
      for (std::size_t l = first; l < last; ++l) {
        const Scalar* pre = pre_of[l].col(c).data();
        const Scalar* inv = inverse_move_bound_[l].data();
        const Index h = pre_of[l].rows();
        Index i = 0;
        for (; i + simd::kWidth <= h; i += simd::kWidth) {
          const simd::Vec p = simd::load(pre + i);
          const simd::Vec v = simd::abs(p) * simd::load(inv + i);
          smallest = simd::min(smallest, v);
        }
        for (; i < h; ++i) tail = std::min(tail, std::abs(pre[i]) * inv[i]);
      }
      r[n] = std::min(tail, simd::min_lanes(smallest));
    }
  }

  // pre = b_l 1^T + W_l a for layer l >= 1: the tower's own product kernel
  // (age/model/gemm.hpp), or Eigen's for a layer narrower than one vector (the output
  // logit), where the kernel would fall back to one scalar dot product per candidate.
  // With `act` (pre's shape), also act = ReLU(pre), in the same pass on the kernel.
  template <class Act = Matrix>
  void layer_product(std::size_t l, ConstMatrixRef a, MatrixRef pre, Act* act = nullptr) const {
    if (weights_[l].rows() >= detail::gemm_kernel::kWidth) {
      detail::gemm_from_column(pre, biases_[l], weights_[l], a,
                               act ? detail::also_relu(*act) : detail::gemm_kernel::Finish{});
      return;
    }
    if (weights_[l].rows() == 1) {
      // The output logit: a row vector times the batch, written as one so that Eigen
      // takes its matrix-vector product rather than its general (packing) product.
      pre.row(0).setConstant(biases_[l][0]);
      pre.row(0).noalias() += weights_[l].row(0) * a;
    } else {
      pre.colwise() = biases_[l];
      pre.noalias() += weights_[l] * a;
    }
    if (act) *act = pre.cwiseMax(Scalar(0));
  }

  // y = W_l^T d (layer l >= 1) or W_item^T d (l = 0), the products of the input gradient:
  // the product kernel on the committed transposed copy, or Eigen's transposed product
  // while the weights are being edited (see weight()) or the output is narrower than one
  // vector. The overload with `below` (the pre-activation of layer l - 1, with y's rows;
  // its column columns[n], or n without a list, goes with y's column n: request_select)
  // goes through that layer's ReLU: y = 1[below > 0] .* W_l^T d, in the same pass on the
  // kernel.
  void transposed_product(std::size_t l, ConstMatrixRef d, MatrixRef y) const {
    if (weights_committed_ && y.rows() >= detail::gemm_kernel::kWidth) {
      detail::gemm_assign(y, transposed_[l], d);
    } else if (l == 0) {
      y.noalias() = weights_[0].rightCols(static_cast<Index>(item_dim_)).transpose() * d;
    } else {
      y.noalias() = weights_[l].transpose() * d;
    }
  }
  void transposed_product(std::size_t l, ConstMatrixRef d, MatrixRef y, const Matrix& below,
                          const Index* columns) const {
    if (weights_committed_ && y.rows() >= detail::gemm_kernel::kWidth) {
      detail::gemm_assign(y, transposed_[l], d, detail::keep_if_positive(below, columns));
      return;
    }
    transposed_product(l, d, y);
    for (Index n = 0; n < y.cols(); ++n)
      y.col(n) = (below.col(columns ? columns[n] : n).array() > Scalar(0)).select(y.col(n), Scalar(0));
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

  template <class X>
  static void apply_mask(const Matrix& m, X&& x) {
    if (m.cols() == 1)
      x.array().colwise() *= m.col(0).array();
    else
      x.array() *= m.array();
  }

  std::size_t user_dim_ = 0, item_dim_ = 0;
  std::vector<std::size_t> hidden_;
  std::vector<Matrix> weights_;
  std::vector<Vector> biases_;
  // transposed_[0] = W_item^T, transposed_[l] = W_l^T (l >= 1), as of the last
  // commit_weights(); used only while weights_committed_.
  std::vector<Matrix> transposed_;
  bool weights_committed_ = false;
  // Per hidden layer: 1 / bound of |delta pre| per unit of item move (commit_weights()).
  std::vector<Vector> inverse_move_bound_;
  bool linear_moves_ = true;
  // B = W_top^T diag(w_out) tabulated for the input gradient (commit_weights()).
  detail::SignTable sign_table_;
  bool gradient_tables_ = true;
};

}  // namespace age
