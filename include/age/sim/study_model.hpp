// StudyModel: the CtrModel the offline study scores with. It wraps an EmbeddingCtrModel's
// tower and adds two things the study needs:
//
// 1. Stacked inputs, for ensembles. The explorers see one embedded request; an ensemble of
//    M models with their own embedding tables is embedded as the stack [h_1; ...; h_M], and
//    member m is a StudyModel that reads its own rows (offset m * dim). With offset 0 and
//    the model's own sizes it is the plain model.
//
// 2. A fast MC-Dropout forward. MC-Dropout (AGE-METHOD.md, "Uncertainty delta_y") scores
//    the SAME request under 1 (TS) or 20 (UCB) masks with p = 0.01, right after the
//    no-dropout forward. With a mask shared by the candidates, the masked pre-activation of
//    the layer after the first hidden layer differs from the cached no-dropout one only
//    through the few dropped units:
//      W1 (a0 .* m0) = s W1 a0 + sum_{j : m0_j != s} (m0_j - s) W1[:, j] a0[j, :]
//    (s = 1 / (1 - p), the kept units' scale), i.e. s (pre1 - b1) + b1 plus a rank-|D|
//    correction; the layers above are recomputed in full. For the 256-64 tower this costs
//    about 64 x (|D| + 2) x N multiply-adds instead of 64 x 256 x N, and is exact up to
//    float rounding. The cache is the last no-dropout logits() call of the workspace and
//    is used only when the inputs are bit-for-bit the cached ones; anything else (other
//    inputs, per-candidate masks, many dropped units) takes the tower's ordinary path.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"

namespace age::sim {

class StudyModel {
 public:
  using Mask = DropoutMask;

  struct Workspace {
    TowerWorkspace tower;
    // Cache of the last no-dropout logits() call: its inputs and the tower's first hidden
    // activations a0 (h0 x N) and next pre-activations pre1 (rows(W1) x N).
    Matrix cached_user, cached_items, act0, pre1;
    bool cache_valid = false;
    // Scratch of the fast masked pass.
    std::vector<Index> exceptions;
    Matrix pre, act, next;
    Matrix grad_items, grad_user;
  };

  StudyModel() = default;
  // Member reading rows [user_offset, +user_dim) of a stacked user input of user_total rows
  // and likewise for items; totals 0 mean the model's own sizes (no stacking).
  explicit StudyModel(const EmbeddingCtrModel& model, std::size_t user_offset = 0, std::size_t item_offset = 0,
                      std::size_t user_total = 0, std::size_t item_total = 0)
      : model_(&model),
        user_offset_(static_cast<Index>(user_offset)),
        item_offset_(static_cast<Index>(item_offset)),
        user_total_(user_total ? user_total : model.user_dim()),
        item_total_(item_total ? item_total : model.item_dim()) {
    if (user_offset + model.user_dim() > user_total_ || item_offset + model.item_dim() > item_total_)
      throw DimensionError("StudyModel: member slice [" + std::to_string(user_offset) + ", " +
                           std::to_string(user_offset + model.user_dim()) + ") does not fit in " +
                           std::to_string(user_total_) + " user rows (or the item slice in " +
                           std::to_string(item_total_) + " item rows)");
  }

  std::size_t user_dim() const noexcept { return user_total_; }
  std::size_t item_dim() const noexcept { return item_total_; }
  const Tower& tower() const noexcept { return model_->tower(); }
  const EmbeddingCtrModel& model() const noexcept { return *model_; }
  bool stacked() const noexcept {
    return user_offset_ != 0 || item_offset_ != 0 || user_total_ != model_->user_dim() ||
           item_total_ != model_->item_dim();
  }

  void sample_mask(double p, Index columns, Rng& rng, DropoutMask& mask) const {
    model_->tower().sample_mask(p, columns, rng, mask);
  }

  void logits(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    check(user, items);
    const auto u = user.middleRows(user_offset_, static_cast<Index>(model_->user_dim()));
    const auto it = items.middleRows(item_offset_, static_cast<Index>(model_->item_dim()));
    const Tower& t = model_->tower();
    const bool masked = mask && !mask->empty();
    if (!masked) {
      t.logits(u, it, nullptr, ws.tower, out);
      remember(u, it, ws);
      return;
    }
    if (fast_masked(u, it, *mask, ws, out)) return;
    t.logits(u, it, mask, ws.tower, out);
  }

  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user = nullptr) const {
    check(user, items);
    const auto u = user.middleRows(user_offset_, static_cast<Index>(model_->user_dim()));
    const auto it = items.middleRows(item_offset_, static_cast<Index>(model_->item_dim()));
    if (!stacked()) {
      model_->tower().probability_gradient(u, it, mask, ws.tower, prob, d_items, d_user);
      return;
    }
    model_->tower().probability_gradient(u, it, mask, ws.tower, prob, d_items ? &ws.grad_items : nullptr,
                                         d_user ? &ws.grad_user : nullptr);
    const Index n = items.cols();
    if (d_items) {
      d_items->setZero(static_cast<Index>(item_total_), n);
      d_items->middleRows(item_offset_, ws.grad_items.rows()) = ws.grad_items;
    }
    if (d_user) {
      d_user->setZero(static_cast<Index>(user_total_), n);
      d_user->middleRows(user_offset_, ws.grad_user.rows()) = ws.grad_user;
    }
  }

 private:
  void check(ConstMatrixRef user, ConstMatrixRef items) const {
    age::detail::require_dim("StudyModel: user rows", user_total_, static_cast<std::size_t>(user.rows()));
    age::detail::require_dim("StudyModel: item rows", item_total_, static_cast<std::size_t>(items.rows()));
  }

  template <class U, class I>
  void remember(const U& u, const I& it, Workspace& ws) const {
    const Tower& t = model_->tower();
    ws.cache_valid = false;
    if (t.hidden().empty() || u.cols() != 1) return;
    ws.cached_user = u;
    ws.cached_items = it;
    ws.act0 = ws.tower.act[0];
    ws.pre1 = ws.tower.pre[1];
    ws.cache_valid = true;
  }

  // The rank-|D| update described at the top of the file; false when it does not apply.
  template <class U, class I>
  bool fast_masked(const U& u, const I& it, const DropoutMask& mask, Workspace& ws, Eigen::Ref<RowVector> out) const {
    const Tower& t = model_->tower();
    if (!ws.cache_valid || mask.columns() != 1 || mask.layers.size() != t.hidden().size()) return false;
    if (u.cols() != 1 || ws.cached_user.rows() != u.rows() || ws.cached_items.cols() != it.cols() ||
        ws.cached_items.rows() != it.rows())
      return false;
    if (!(ws.cached_user.array() == u.array()).all() || !(ws.cached_items.array() == it.array()).all()) return false;

    const auto m0 = mask.layers[0].col(0);
    const Scalar s = m0.maxCoeff();
    if (!(s > 0)) return false;
    ws.exceptions.clear();
    for (Index j = 0; j < m0.size(); ++j)
      if (m0[j] != s) ws.exceptions.push_back(j);
    if (static_cast<Index>(ws.exceptions.size()) * 8 > m0.size()) return false;

    // pre1 under the mask of hidden layer 0.
    const Matrix& w1 = t.weight(1);
    const Vector& b1 = t.bias(1);
    ws.pre = s * (ws.pre1.colwise() - b1);
    for (Index j : ws.exceptions) ws.pre.noalias() += ((m0[j] - s) * w1.col(j)) * ws.act0.row(j);
    ws.pre.colwise() += b1;
    // Layers above: in full, with their masks.
    const std::size_t layers = t.num_layers();
    for (std::size_t l = 1; l + 1 < layers; ++l) {
      ws.act = ws.pre.cwiseMax(Scalar(0));
      ws.act.array().colwise() *= mask.layers[l].col(0).array();
      ws.next.noalias() = t.weight(l + 1) * ws.act;
      ws.next.colwise() += t.bias(l + 1);
      ws.pre.swap(ws.next);
    }
    age::detail::require_dim("logits output length", static_cast<std::size_t>(it.cols()), static_cast<std::size_t>(out.size()));
    out = ws.pre.row(0);
    return true;
  }

  const EmbeddingCtrModel* model_ = nullptr;
  Index user_offset_ = 0, item_offset_ = 0;
  std::size_t user_total_ = 0, item_total_ = 0;
};

static_assert(DropoutCtrModel<StudyModel>);

}  // namespace age::sim
