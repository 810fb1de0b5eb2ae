// Online training of an EmbeddingCtrModel on mini-batches of logged impressions, and of an
// optional auxiliary item tower (AGE's Dynamic Gating Unit) alongside it.
//
// One step: embed the batch (one user column per sample), forward the tower under a fresh
// per-sample dropout mask (rate p on the hidden units, inverted scaling), mean BCE, backward
// to the tower's parameters and to the input embeddings, scatter the embedding gradient
// into the rows the batch used, then update the tower and ONLY those rows. All randomness
// comes from Rng(seed, step number), so a run is reproducible bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/features/embedding.hpp"
#include "age/features/layout.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/train/loss.hpp"
#include "age/train/optimizer.hpp"

namespace age {

// One logged impression: who saw it, what was shown, and whether it was clicked.
struct Sample {
  SideInput user;
  SideInput item;
  float label = 0.0f;  // 1 = click, 0 = no click
};

// Gradient of the batch loss with respect to every trainable parameter of the model: the
// tower (dense) and the embedding rows the batch used (sparse, one entry per layout field;
// dense fields have no table and their entry stays empty).
struct ModelGradients {
  TowerGradients tower;
  std::vector<SparseRowGradient> tables;
};

// Scratch space of the batch passes; reused across steps.
struct TrainWorkspace {
  Matrix users;     // user_dim x N, one column per sample
  Matrix items;     // item_dim x N
  RowVector labels, d_logit;
  Matrix d_users, d_items;
  TowerWorkspace tower;
};

namespace detail {
inline void check_batch(std::span<const Sample> batch) {
  if (batch.empty()) throw InputError("training batch: expected at least 1 sample, got 0");
  for (std::size_t n = 0; n < batch.size(); ++n)
    if (batch[n].label != 0.0f && batch[n].label != 1.0f)
      throw InputError("training sample " + std::to_string(n) + ": label: expected 0 or 1, got " +
                       std::to_string(batch[n].label));
}
}  // namespace detail

// Embeds a batch: ws.users (user_dim x N), ws.items (item_dim x N), ws.labels (1 x N).
inline void embed_batch(const EmbeddingCtrModel& model, std::span<const Sample> batch, TrainWorkspace& ws) {
  detail::check_batch(batch);
  const Index n = static_cast<Index>(batch.size());
  const EmbeddingTables& tables = model.tables();
  ws.users.resize(static_cast<Index>(model.user_dim()), n);
  ws.items.resize(static_cast<Index>(model.item_dim()), n);
  ws.labels.resize(n);
  for (Index i = 0; i < n; ++i) {
    const Sample& s = batch[static_cast<std::size_t>(i)];
    tables.embed(Side::User, s.user, ws.users.col(i));
    tables.embed(Side::Item, s.item, ws.items.col(i));
    ws.labels[i] = s.label;
  }
}

// Mean BCE of the model on a batch under `mask` (nullptr: no dropout; otherwise 1 or N
// columns), without gradients.
inline double batch_loss(const EmbeddingCtrModel& model, std::span<const Sample> batch, const DropoutMask* mask,
                         TrainWorkspace& ws) {
  embed_batch(model, batch, ws);
  model.tower().forward(ws.users, ws.items, mask, ws.tower);
  return bce_loss(ws.tower.logits(), ws.labels);
}

// Mean BCE of the model on a batch under `mask`, and its gradient with respect to every
// tower parameter and every embedding row the batch used. d loss / d h comes from the
// tower's backward pass per sample; EmbeddingTables::scatter_gradient sends it to the rows
// it was pooled from (sum pooling: each id gets it; mean pooling: each id gets 1/|bag|).
inline double loss_and_gradients(const EmbeddingCtrModel& model, std::span<const Sample> batch,
                                 const DropoutMask* mask, TrainWorkspace& ws, ModelGradients& grads) {
  embed_batch(model, batch, ws);
  const Tower& tower = model.tower();
  tower.forward(ws.users, ws.items, mask, ws.tower);
  const double loss = bce_loss(ws.tower.logits(), ws.labels, &ws.d_logit);
  tower.backward(ws.d_logit, ws.users, ws.items, ws.tower, &grads.tower, &ws.d_users, &ws.d_items);

  const EmbeddingTables& tables = model.tables();
  const FeatureLayout& layout = model.layout();
  grads.tables.resize(layout.size());
  for (std::size_t f = 0; f < layout.size(); ++f) grads.tables[f].reset(static_cast<Index>(layout.field(f).dim));
  auto add_row = [&](std::size_t f, std::size_t row, const auto& g, Scalar scale) { grads.tables[f].add(row, g, scale); };
  for (std::size_t n = 0; n < batch.size(); ++n) {
    const Index i = static_cast<Index>(n);
    tables.scatter_gradient(Side::User, batch[n].user, ws.d_users.col(i), add_row);
    tables.scatter_gradient(Side::Item, batch[n].item, ws.d_items.col(i), add_row);
  }
  return loss;
}

// Settings of an OnlineTrainer besides the optimizer.
struct TrainerOptions {
  // Dropout rate p on the main tower's hidden units during training; 0.01 as in (M9),
  // METHOD.md "MC-Dropout uncertainty", so that the MC-Dropout uncertainty at scoring
  // time samples the same posterior the model was trained under.
  double dropout = 0.01;
  // Dropout rate of the attached item tower. Its output is a point estimate (the item's
  // average CTR), not an uncertainty, so none by default.
  double item_tower_dropout = 0.0;
  std::uint64_t seed = 0;

  void validate() const {
    if (!(dropout >= 0.0 && dropout < 1.0))
      throw ConfigError("trainer: dropout: expected a value in [0, 1), got " + std::to_string(dropout));
    if (!(item_tower_dropout >= 0.0 && item_tower_dropout < 1.0))
      throw ConfigError("trainer: item_tower_dropout: expected a value in [0, 1), got " +
                        std::to_string(item_tower_dropout));
  }
};

// Mean losses of the last step (under that step's dropout masks, before its update).
struct StepLoss {
  double main = 0.0;        // BCE(f(h | theta), y)
  double item_tower = 0.0;  // BCE(f_dgu(sg(h_item)), y); 0 without an item tower
  double total() const noexcept { return main + item_tower; }
};

// Online trainer of one EmbeddingCtrModel, with an Optimizer policy (Sgd, Adagrad, Adam or
// a user's own type modelling the Optimizer concept).
//
// Several models trained with identical settings (an ensemble, or the arms of a replay
// study) get one trainer each, built from the same settings:
//   OnlineTrainer<Adam> b(model_b, a.optimizer(), a.options());
// Two trainers with equal settings, seeds and data leave equal models bit for bit.
//
// The trainer keeps pointers to the model and to an attached item tower: both must
// outlive it (or be re-attached after they move). It is movable, not copyable.
template <Optimizer Opt = Adam>
class OnlineTrainer {
 public:
  explicit OnlineTrainer(EmbeddingCtrModel& model, Opt optimizer = Opt{}, TrainerOptions options = {})
      : model_(&model), tower_opt_(optimizer), options_(options) {
    detail::require_usable_model(model, "trainer");
    options_.validate();
  }

  OnlineTrainer(const OnlineTrainer&) = delete;
  OnlineTrainer& operator=(const OnlineTrainer&) = delete;
  OnlineTrainer(OnlineTrainer&&) noexcept = default;
  OnlineTrainer& operator=(OnlineTrainer&&) noexcept = default;

  // Trains `item_tower` jointly from now on: the Dynamic Gating Unit ((M15), METHOD.md), a
  // Tower(0, item_dim, {hidden}) on the ITEM embeddings predicting the item's average CTR.
  // Every step then also minimises BCE(f_dgu(sg(h_item)), y) on the same samples, with its
  // own optimizer state (settings: `optimizer`, by default the main model's). The
  // stop-gradient sg() means its loss updates only the item tower's weights, never the
  // shared embedding tables: the main model trains exactly as it would without it.
  // The total loss of a step is BCE(main) + BCE(item tower), as in (M18), METHOD.md
  // "Dynamic Gating Unit".
  void attach_item_tower(Tower& item_tower) { attach_item_tower(item_tower, tower_opt_.optimizer()); }
  void attach_item_tower(Tower& item_tower, Opt optimizer) {
    detail::require_usable_model(item_tower, "trainer: item tower");
    detail::require_dim("item tower: user_dim (it reads item embeddings only)", 0, item_tower.user_dim());
    detail::require_dim("item tower: item_dim (the model's item embedding width)", model_->item_dim(),
                        item_tower.item_dim());
    item_tower_ = &item_tower;
    item_opt_ = TowerOptimizer<Opt>(std::move(optimizer));
  }
  void detach_item_tower() noexcept { item_tower_ = nullptr; }
  Tower* item_tower() const noexcept { return item_tower_; }

  // One optimizer step on a mini-batch; returns its total loss (see StepLoss).
  double step(std::span<const Sample> batch) {
    detail::require_usable_model(*model_, "trainer: step");  // moved from since?
    detail::check_batch(batch);
    Rng rng(options_.seed, 2 * steps_);
    const DropoutMask* mask = nullptr;
    if (options_.dropout > 0.0 && !model_->tower().hidden().empty()) {
      model_->sample_mask(options_.dropout, static_cast<Index>(batch.size()), rng, mask_);
      mask = &mask_;
    }
    loss_.main = loss_and_gradients(*model_, batch, mask, ws_, grads_);
    // The item tower reads the same (pre-update) item embeddings, before they move.
    loss_.item_tower = item_tower_ ? item_tower_step(batch.size()) : 0.0;

    tower_opt_.update(model_->tower(), grads_.tower);
    const FeatureLayout& layout = model_->layout();
    table_states_.resize(layout.size());
    for (std::size_t f = 0; f < layout.size(); ++f)
      if (layout.field(f).has_table())
        update_rows(tower_opt_.optimizer(), model_->tables().table(f), grads_.tables[f], table_states_[f]);
    ++steps_;
    return loss_.total();
  }

  // One step on a single sample (a batch of one).
  double step(const Sample& sample) { return step(std::span<const Sample>(&sample, 1)); }

  // Trains only the attached item tower on a batch, the main model left as it is (e.g. to
  // warm up a DGU on an already trained model). Returns its BCE.
  double step_item_tower(std::span<const Sample> batch) {
    if (!item_tower_) throw ConfigError("trainer: step_item_tower: no item tower attached");
    detail::require_usable_model(*model_, "trainer: step_item_tower");
    embed_batch(*model_, batch, ws_);
    loss_.main = 0.0;
    loss_.item_tower = item_tower_step(batch.size());
    ++steps_;
    return loss_.item_tower;
  }

  const StepLoss& last_loss() const noexcept { return loss_; }
  // Gradients of the last step's main loss (tower and used embedding rows).
  const ModelGradients& last_gradients() const noexcept { return grads_; }
  std::uint64_t steps() const noexcept { return steps_; }
  const Opt& optimizer() const noexcept { return tower_opt_.optimizer(); }
  const TrainerOptions& options() const noexcept { return options_; }
  EmbeddingCtrModel& model() const noexcept { return *model_; }

 private:
  // The item tower's step on ws_.items, which embed_batch filled: sg(h_item) is a copy the
  // backward pass never writes back, so no gradient reaches the tables.
  double item_tower_step(std::size_t batch_size) {
    Rng rng(options_.seed, 2 * steps_ + 1);
    const DropoutMask* mask = nullptr;
    if (options_.item_tower_dropout > 0.0 && !item_tower_->hidden().empty()) {
      item_tower_->sample_mask(options_.item_tower_dropout, static_cast<Index>(batch_size), rng, item_mask_);
      mask = &item_mask_;
    }
    if (no_user_.rows() != 0 || no_user_.cols() != 1) no_user_.resize(0, 1);
    item_tower_->forward(no_user_, ws_.items, mask, item_ws_);
    const double loss = bce_loss(item_ws_.logits(), ws_.labels, &item_d_logit_);
    item_tower_->backward(item_d_logit_, no_user_, ws_.items, item_ws_, &item_grads_, nullptr, nullptr);
    item_opt_.update(*item_tower_, item_grads_);
    return loss;
  }

  EmbeddingCtrModel* model_;
  TowerOptimizer<Opt> tower_opt_;
  std::vector<ParameterState> table_states_;
  TrainerOptions options_;
  std::uint64_t steps_ = 0;

  TrainWorkspace ws_;
  ModelGradients grads_;
  DropoutMask mask_;
  StepLoss loss_;

  Tower* item_tower_ = nullptr;
  TowerOptimizer<Opt> item_opt_;
  TowerWorkspace item_ws_;
  TowerGradients item_grads_;
  DropoutMask item_mask_;
  RowVector item_d_logit_;
  Matrix no_user_ = Matrix(0, 1);
};

}  // namespace age
