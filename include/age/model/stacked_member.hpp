// StackedMember: one member of an ensemble whose members have embeddings of their own.
// The explorers see one embedded request; an ensemble of M models with their own tables
// is embedded as the stack h = [h_1; ...; h_M] (user parts stacked, item parts stacked),
// and member m is a CtrModel over the whole stack that reads its own rows. Ensemble-TS
// and Ensemble-UCB (age/explore/baselines/ensemble.hpp) take such members. The gradient
// is the member's own, zero on the other members' rows.
#pragma once

#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"

namespace age {

template <CtrModel M>
class StackedMember {
 public:
  using Mask = typename M::Mask;
  struct Workspace {
    typename M::Workspace model;
    Matrix grad_items, grad_user;
  };

  // Member reading rows [user_offset, user_offset + user_dim) of a stacked user input of
  // user_total rows, and likewise for the items. The model must outlive the view.
  StackedMember(const M& model, std::size_t user_offset, std::size_t item_offset, std::size_t user_total,
                std::size_t item_total)
      : model_(&model),
        user_offset_(static_cast<Index>(user_offset)),
        item_offset_(static_cast<Index>(item_offset)),
        user_total_(user_total),
        item_total_(item_total) {
    if (user_offset + model.user_dim() > user_total || item_offset + model.item_dim() > item_total)
      throw DimensionError("StackedMember: member rows: user [" + std::to_string(user_offset) + ", " +
                           std::to_string(user_offset + model.user_dim()) + ") of " + std::to_string(user_total) +
                           ", item [" + std::to_string(item_offset) + ", " +
                           std::to_string(item_offset + model.item_dim()) + ") of " + std::to_string(item_total) +
                           ": expected within the stack");
  }
  StackedMember(const M&&, std::size_t, std::size_t, std::size_t, std::size_t) = delete;

  // Member m of an ensemble of `count` models of equal sizes.
  static StackedMember of(const M& model, std::size_t m, std::size_t count) {
    const std::size_t du = model.user_dim(), di = model.item_dim();
    return StackedMember(model, m * du, m * di, count * du, count * di);
  }

  std::size_t user_dim() const noexcept { return user_total_; }
  std::size_t item_dim() const noexcept { return item_total_; }
  const M& model() const noexcept { return *model_; }

  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    check(user, items);
    model_->logits(own_user(user), own_items(items), mask, ws.model, out);
  }

  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    check(user, items);
    model_->probability_gradient(own_user(user), own_items(items), mask, ws.model, prob,
                                 d_items ? &ws.grad_items : nullptr, d_user ? &ws.grad_user : nullptr);
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

  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const
    requires DropoutCtrModel<M>
  {
    model_->sample_mask(p, columns, rng, mask);
  }

 private:
  void check(ConstMatrixRef user, ConstMatrixRef items) const {
    detail::require_dim("StackedMember: user rows (the stack)", user_total_, static_cast<std::size_t>(user.rows()));
    detail::require_dim("StackedMember: item rows (the stack)", item_total_, static_cast<std::size_t>(items.rows()));
  }
  auto own_user(ConstMatrixRef user) const {
    return user.middleRows(user_offset_, static_cast<Index>(model_->user_dim()));
  }
  auto own_items(ConstMatrixRef items) const {
    return items.middleRows(item_offset_, static_cast<Index>(model_->item_dim()));
  }

  const M* model_;
  Index user_offset_, item_offset_;
  std::size_t user_total_, item_total_;
};

}  // namespace age
