// The bodies of Tower's passes (age/model/tower.hpp): included by tower.hpp in the
// header-only build, or compiled once by age/impl/src.hpp under AGE_SEPARATE_COMPILATION
// (age/core/config.hpp). Each one checks that no Edit is open and hands the work to the
// pass of its own header.
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "age/core/config.hpp"
#include "age/core/error.hpp"
#include "age/model/plain_passes.hpp"
#include "age/model/request_passes.hpp"
#include "age/model/tower.hpp"

namespace age {

AGE_DECL Tower::Tower(std::size_t user_dim, std::size_t item_dim, std::vector<std::size_t> hidden)
    : layers_(user_dim, item_dim, std::move(hidden)) {
  commit();
}

AGE_DECL void Tower::initialize(Rng& rng) {
  require_shape("initialize");
  Edit e = edit();
  layers_.initialize(rng);
}

// --- Plain passes (age/model/plain_passes.hpp) -----------------------------------------
AGE_DECL void Tower::forward(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                             TowerWorkspace& ws) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::forward");
  require_committed("forward");
  detail::forward(layers_, user, items, mask, ws);
}

AGE_DECL void Tower::backward(const Eigen::Ref<const RowVector>& d_logit, ConstMatrixRef user, ConstMatrixRef items,
                              TowerWorkspace& ws, TowerGradients* params, Matrix* d_user, Matrix* d_items) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::backward");
  require_committed("backward");
  detail::backward(layers_, tables_, d_logit, user, items, ws, params, d_user, d_items);
}

AGE_DECL void Tower::logits(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
                            Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::logits");
  require_committed("logits");
  detail::forward(layers_, user, items, mask, ws);
  detail::require_dim("logits output length", static_cast<std::size_t>(items.cols()),
                      static_cast<std::size_t>(out.size()));
  out = ws.logits();
}

AGE_DECL void Tower::probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                                          TowerWorkspace& ws, Eigen::Ref<RowVector> prob, Matrix* d_items,
                                          Matrix* d_user) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::probability_gradient");
  require_committed("probability_gradient");
  detail::probability_gradient(layers_, tables_, user, items, mask, ws, prob, d_items, d_user);
}

// --- Request passes (age/model/request_passes.hpp) -------------------------------------
AGE_DECL void Tower::begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws,
                                   Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::begin_request");
  passes("begin_request").begin(user, items, ws, out);
}

AGE_DECL void Tower::begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws,
                                   Eigen::Ref<RowVector> out, const DropoutMask* mask,
                                   Eigen::Ref<RowVector> masked_out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::begin_request");
  passes("begin_request").begin(user, items, ws, out, mask, masked_out);
}

AGE_DECL Index Tower::request_size(const TowerWorkspace& ws) const { return passes("request_size").size(ws); }

AGE_DECL void Tower::request_select(std::span<const Index> keep, TowerWorkspace& ws) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_select");
  passes("request_select").select(keep, ws);
}

AGE_DECL void Tower::request_logits(const DropoutMask* mask, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_logits");
  passes("request_logits").logits(mask, ws, out);
}

AGE_DECL void Tower::request_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                           Eigen::Ref<Matrix> d_items) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_item_gradient");
  passes("request_item_gradient").item_gradient(d_logit, ws, d_items);
}

AGE_DECL void Tower::request_moved_logits(ConstMatrixRef d_items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_moved_logits");
  passes("request_moved_logits").moved_logits(d_items, ws, out);
}

AGE_DECL bool Tower::request_normalized_move_logits(Eigen::Ref<const RowVector> d_logit,
                                                    Eigen::Ref<const RowVector> length, TowerWorkspace& ws,
                                                    Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_normalized_move_logits");
  return passes("request_normalized_move_logits").normalized_move_logits(d_logit, length, ws, out);
}

AGE_DECL void Tower::request_moved_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                                 Eigen::Ref<Matrix> d_items) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_moved_item_gradient");
  passes("request_moved_item_gradient").moved_item_gradient(d_logit, ws, d_items);
}

AGE_DECL void Tower::request_linear_radius(TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
  const detail::WorkspaceUse use(ws.in_use, "Tower::request_linear_radius");
  passes("request_linear_radius").linear_radius(ws, out);
}

// --- Options and the derived tables ----------------------------------------------------
AGE_DECL void Tower::set_gradient_tables(bool on) {
  gradient_tables_ = on;
  tables_.build_sign_table(layers_, on);
}

AGE_DECL TowerRequestPaths Tower::request_paths() const noexcept {
  TowerRequestPaths p;
  p.first_pass_without_relu = layers_.all_hidden_on_kernel();
  p.two_layer_masked_logits = p.first_pass_without_relu && layers_.hidden.size() == 2;
  p.gradient_table = !tables_.sign_table.empty();
  p.certified_moves = linear_moves_;
  return p;
}

AGE_DECL void Tower::commit() { tables_.build(layers_, gradient_tables_); }

AGE_DECL void Tower::close_edit() noexcept {
  if (open_edits_ > 1) {
    --open_edits_;
    return;
  }
  // A failed rebuild (out of memory) leaves the edit open: the passes keep refusing.
  try {
    commit();
    open_edits_ = 0;
  } catch (...) {
  }
}

AGE_DECL void Tower::require_committed(const char* pass) const {
  require_shape(pass);
  if (open_edits_ != 0)
    throw InputError(std::string("tower ") + pass + ": expected no open Tower::Edit, got " +
                     std::to_string(open_edits_) + " (its derived tables are rebuilt when it ends)");
}

AGE_DECL detail::TowerRequestPasses Tower::passes(const char* pass) const {
  require_committed(pass);
  return detail::TowerRequestPasses(layers_, tables_, linear_moves_);
}

}  // namespace age
