// The library's CTR model: embedding tables for the fields of a FeatureLayout, feeding a
// dense Tower over h = [user | item]. Scoring goes features -> embeddings -> tower; AGE
// works on the embedding level (it moves the item part of h), so the model exposes both.
//
// An empty model -- default-constructed, or moved from (a move leaves the source exactly
// as a default-constructed one) -- has no layout and no tower: it can be assigned to (e.g.
// `model = load_model(path)`), and every other use refuses it with a ConfigError: the
// passes, embed_request(), predict(), initialize(), the scorers and save_model().
#pragma once

#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/features/embedding.hpp"
#include "age/features/layout.hpp"
#include "age/model/sigmoid.hpp"
#include "age/model/tower.hpp"

namespace age {

// Scratch space of one thread for EmbeddingCtrModel.
struct ModelWorkspace {
  Vector user;    // user_dim
  Matrix items;   // item_dim x N
  TowerWorkspace tower;
  detail::WorkspaceMark in_use;  // debug builds: one predict() at a time
};

class EmbeddingCtrModel {
 public:
  // CtrModel types (age/model/ctr_model.hpp): the embedding-level passes use the tower's.
  using Workspace = TowerWorkspace;
  using Mask = DropoutMask;

  EmbeddingCtrModel() = default;
  EmbeddingCtrModel(FeatureLayout layout, std::vector<std::size_t> hidden)
      : tables_(std::move(layout)),
        tower_(tables_.layout().user_dim(), tables_.layout().item_dim(), std::move(hidden)) {}

  // Embeddings from Normal(0, embedding_std^2) (small, so new ids start near the average
  // prediction); the tower as PyTorch's nn.Linear would be. embedding_std is at most
  // kMaxSettingScale (age/core/limits.hpp).
  void initialize(Rng& rng, double embedding_std = 0.01) {
    if (!(embedding_std >= 0.0 && embedding_std <= kMaxSettingScale))
      throw ConfigError("embedding_std: expected a value in [0, " + detail::setting_number(kMaxSettingScale) +
                        "], got " + detail::setting_number(embedding_std));
    require_usable("initialize");
    tables_.initialize_normal(rng, embedding_std);
    tower_.initialize(rng);
  }

  // No layout and no tower: default-constructed or moved from (see the top of this file).
  bool empty() const noexcept { return tower_.empty(); }

  const FeatureLayout& layout() const noexcept { return tables_.layout(); }
  EmbeddingTables& tables() noexcept { return tables_; }
  const EmbeddingTables& tables() const noexcept { return tables_; }
  Tower& tower() noexcept { return tower_; }
  const Tower& tower() const noexcept { return tower_; }

  std::size_t user_dim() const noexcept { return tower_.user_dim(); }
  std::size_t item_dim() const noexcept { return tower_.item_dim(); }

  // Features of one request -> user vector (once) and item matrix item_dim x N.
  void embed_request(const SideInput& user, std::span<const SideInput> items, Vector& user_out,
                     Matrix& items_out) const {
    require_usable("embed_request");
    if (items.empty()) throw InputError("request: items: expected at least 1 candidate, got 0");
    tables_.embed_request(user, items, user_out, items_out);
  }

  // pCTR of every candidate of a request, from raw features.
  void predict(const SideInput& user, std::span<const SideInput> items, ModelWorkspace& ws,
               Eigen::Ref<RowVector> prob) const {
    const detail::WorkspaceUse use(ws.in_use, "EmbeddingCtrModel::predict");
    embed_request(user, items, ws.user, ws.items);
    tower_.logits(ws.user, ws.items, nullptr, ws.tower, prob);
    sigmoid_in_place(prob);
  }

  // --- Embedding-level passes (what the explorers call) -------------------------------
  // user: user_dim x 1 (shared) or user_dim x N; items: item_dim x N; mask optional.
  void logits(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
              Eigen::Ref<RowVector> out) const {
    tower_.logits(user, items, mask, ws, out);
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                            TowerWorkspace& ws, Eigen::Ref<RowVector> prob, Matrix* d_items,
                            Matrix* d_user = nullptr) const {
    tower_.probability_gradient(user, items, mask, ws, prob, d_items, d_user);
  }
  void sample_mask(double p, Index columns, Rng& rng, DropoutMask& mask) const {
    tower_.sample_mask(p, columns, rng, mask);
  }

  // Request passes (RequestPassModel, age/model/request_passes.hpp): one no-dropout pass per
  // request, reused by the dropout, gradient and moved passes of the explorers.
  void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    tower_.begin_request(user, items, ws, out);
  }
  void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out,
                     const DropoutMask* mask, Eigen::Ref<RowVector> masked_out) const {
    tower_.begin_request(user, items, ws, out, mask, masked_out);
  }
  Index request_size(const TowerWorkspace& ws) const { return tower_.request_size(ws); }
  void request_select(std::span<const Index> keep, TowerWorkspace& ws) const { tower_.request_select(keep, ws); }
  void request_logits(const DropoutMask* mask, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    tower_.request_logits(mask, ws, out);
  }
  void request_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                             Eigen::Ref<Matrix> d_items) const {
    tower_.request_item_gradient(d_logit, ws, d_items);
  }
  void request_moved_logits(ConstMatrixRef d_items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    tower_.request_moved_logits(d_items, ws, out);
  }
  void request_moved_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                   Eigen::Ref<Matrix> d_items) const {
    tower_.request_moved_item_gradient(d_logit, ws, d_items);
  }
  bool request_normalized_move_logits(Eigen::Ref<const RowVector> d_logit, Eigen::Ref<const RowVector> length,
                                      TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    return tower_.request_normalized_move_logits(d_logit, length, ws, out);
  }

 private:
  void require_usable(const char* what) const {
    if (empty())
      throw ConfigError(std::string("EmbeddingCtrModel ") + what +
                        ": expected a model with a layout and a tower (constructed, copied or loaded), got an "
                        "empty one (default-constructed or moved from)");
  }

  EmbeddingTables tables_;
  Tower tower_;
};

}  // namespace age
