// The dense CTR tower f(h | theta): an MLP with ReLU hidden layers and one output logit,
// y = sigmoid(logit), over h = [user | item] (the paper's backbone, "MLP 256-64" in its
// replay study). Tower is the object a user holds; its jobs live in their own headers:
//   tower_layers.hpp     shape and parameters; W0 = [W_user | W_item] split
//   tower_tables.hpp     what is derived from the weights at each commit (Edit)
//   tower_workspace.hpp  the per-thread scratch, with the request's RequestStage
//   plain_passes.hpp     forward and backward on a batch (training, the CtrModel passes)
//   request_passes.hpp   the request passes that reuse one no-dropout pass per request
//   masked_update.hpp    the MC-Dropout rank update of the masked passes
//   certified_moves.hpp  moves of the item part that provably stay in one linear piece
// The products run on the tower's own kernel (age/model/gemm.hpp).
//
// Changing weights: `{ Tower::Edit e = tower.edit(); e.weight(0)(i, j) = x; }` -- the
// derived tables are rebuilt when the last open Edit ends, and every pass refuses to run
// (InputError) while one is open, so a score never reads tables of other weights.
//
// An empty tower -- default-constructed, or moved from (a move leaves the source exactly
// as a default-constructed one, never with dimensions but no layers) -- has no layers:
// it can be assigned to, and every pass, sample_mask() and initialize() refuse it
// (ConfigError), as do the scorers and the savers.
//
// This header declares the passes; their bodies are in age/model/impl/tower.ipp, included
// below in the default header-only build, or compiled once into age::compiled under
// AGE_SEPARATE_COMPILATION (age/core/config.hpp), so that a translation unit that scores
// does not compile the tower's passes again.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "age/core/config.hpp"
#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"
#include "age/model/tower_layers.hpp"
#include "age/model/tower_tables.hpp"
#include "age/model/tower_workspace.hpp"

namespace age {

namespace detail {
class TowerRequestPasses;
}

// Which of the request passes' shortcuts apply to a tower (Tower::request_paths()), so
// that none of them is a silent property of its shape.
struct TowerRequestPaths {
  // The first pass writes no ReLU and reads the logits from the top layer's product:
  // every hidden layer has at least simd::kWidth units.
  bool first_pass_without_relu = false;
  // Thompson sampling's masked logit with the first pass, and the rank update and output
  // layer fused per candidate in the masked passes: exactly two hidden layers (and the
  // above). The named specialisation of masked_update.hpp; other depths take the rank
  // update of layer 1 and dense products above it.
  bool two_layer_masked_logits = false;
  // The input gradient's top product by table lookups (set_gradient_tables, and a top
  // layer of at most 128 units over a whole number of vectors).
  bool gradient_table = false;
  // Moves shorter than their certified radius scored without a pass (set_linear_moves).
  bool certified_moves = false;
};

class Tower {
 public:
  // CtrModel types (age/model/ctr_model.hpp).
  using Workspace = TowerWorkspace;
  using Mask = DropoutMask;

  // Write access to the weights; the derived tables are rebuilt when it ends (the last
  // open one, if several). Keep it short: every pass of the tower refuses to run while an
  // Edit is open.
  class Edit {
   public:
    Edit(const Edit&) = delete;
    Edit& operator=(const Edit&) = delete;
    Edit(Edit&& other) noexcept : tower_(std::exchange(other.tower_, nullptr)) {}
    Edit& operator=(Edit&&) = delete;
    ~Edit() {
      if (tower_) tower_->close_edit();
    }

    // Layer l's weights (out_size(l) x in_size(l)) and bias; their shape is fixed.
    MatrixRef weight(std::size_t l) {
      require_index("tower edit: weight layer", l, tower_->layers_.layers());
      return tower_->layers_.weights[l];
    }
    VectorRef bias(std::size_t l) {
      require_index("tower edit: bias layer", l, tower_->layers_.layers());
      return tower_->layers_.biases[l];
    }

   private:
    friend class Tower;
    explicit Edit(Tower& tower) noexcept : tower_(&tower) { ++tower.open_edits_; }
    static void require_index(const char* what, std::size_t l, std::size_t count) {
      detail::require_index(what, l, count);
    }
    Tower* tower_;
  };

  Tower() = default;
  AGE_DECL Tower(std::size_t user_dim, std::size_t item_dim, std::vector<std::size_t> hidden);
  Tower(const Tower&) = default;
  Tower& operator=(const Tower&) = default;
  Tower(Tower&& other) noexcept
      : layers_(std::move(other.layers_)),
        tables_(std::move(other.tables_)),
        open_edits_(other.open_edits_),
        linear_moves_(other.linear_moves_),
        gradient_tables_(other.gradient_tables_) {
    other.make_empty();
  }
  Tower& operator=(Tower&& other) noexcept {
    if (this != &other) {
      layers_ = std::move(other.layers_);
      tables_ = std::move(other.tables_);
      open_edits_ = other.open_edits_;
      linear_moves_ = other.linear_moves_;
      gradient_tables_ = other.gradient_tables_;
      other.make_empty();
    }
    return *this;
  }

  // No layers: default-constructed or moved from (see the top of this file).
  bool empty() const noexcept { return layers_.layers() == 0; }

  // PyTorch's nn.Linear default: W and b uniform in +-1/sqrt(fan_in).
  AGE_DECL void initialize(Rng& rng);

  Edit edit() noexcept { return Edit(*this); }
  // Whether an Edit is open (the passes refuse to run then).
  bool editing() const noexcept { return open_edits_ != 0; }

  std::size_t user_dim() const noexcept { return layers_.user_dim; }
  std::size_t item_dim() const noexcept { return layers_.item_dim; }
  std::size_t input_dim() const noexcept { return layers_.input_dim(); }
  const std::vector<std::size_t>& hidden() const noexcept { return layers_.hidden; }
  std::size_t num_layers() const noexcept { return layers_.layers(); }  // hidden + output
  std::size_t in_size(std::size_t l) const {
    detail::require_index("tower: layer", l, layers_.layers());
    return layers_.in_size(l);
  }
  std::size_t out_size(std::size_t l) const { return layers_.out_size(l); }
  const Matrix& weight(std::size_t l) const {
    return detail::require_index("tower: weight layer", l, layers_.layers()), layers_.weights[l];
  }
  const Vector& bias(std::size_t l) const {
    return detail::require_index("tower: bias layer", l, layers_.layers()), layers_.biases[l];
  }
  std::size_t parameter_count() const noexcept {
    std::size_t n = 0;
    for (std::size_t l = 0; l < layers_.layers(); ++l)
      n += static_cast<std::size_t>(layers_.weights[l].size() + layers_.biases[l].size());
    return n;
  }

  void sample_mask(double p, Index columns, Rng& rng, DropoutMask& mask) const {
    require_shape("sample_mask");
    sample_dropout_mask(layers_.hidden, p, columns, rng, mask);
  }

  // --- Plain passes (age/model/plain_passes.hpp) -------------------------------------
  // Forward pass: `user` user_dim x 1 (shared) or x N, `items` item_dim x N, `mask`
  // optional (1 or N columns). Logits land in ws.logits().
  AGE_DECL void forward(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws) const;
  // Backward pass from d(objective)/d(logit) of the last forward on ws; outputs may be
  // null; parameter gradients are summed over the batch.
  AGE_DECL void backward(const Eigen::Ref<const RowVector>& d_logit, ConstMatrixRef user, ConstMatrixRef items,
                         TowerWorkspace& ws, TowerGradients* params, Matrix* d_user, Matrix* d_items) const;
  // Logits of every candidate, written into `out` (N).
  AGE_DECL void logits(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask, TowerWorkspace& ws,
                       Eigen::Ref<RowVector> out) const;
  // y = sigmoid(logit) and dy/d(items) (item_dim x N), optionally dy/d(user) (user_dim x N).
  AGE_DECL void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const DropoutMask* mask,
                                     TowerWorkspace& ws, Eigen::Ref<RowVector> prob, Matrix* d_items,
                                     Matrix* d_user = nullptr) const;

  // --- Request passes (age/model/request_passes.hpp; RequestPassModel) ---------------
  // Every request_* pass reads the request that begin_request() cached in `ws` (an
  // InputError if there is none) and works on its k = request_size() candidates.
  AGE_DECL void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws,
                              Eigen::Ref<RowVector> out) const;
  AGE_DECL void begin_request(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out,
                              const DropoutMask* mask, Eigen::Ref<RowVector> masked_out) const;
  AGE_DECL Index request_size(const TowerWorkspace& ws) const;
  AGE_DECL void request_select(std::span<const Index> keep, TowerWorkspace& ws) const;
  AGE_DECL void request_logits(const DropoutMask* mask, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const;
  AGE_DECL void request_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                      Eigen::Ref<Matrix> d_items) const;
  AGE_DECL void request_moved_logits(ConstMatrixRef d_items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const;
  AGE_DECL bool request_normalized_move_logits(Eigen::Ref<const RowVector> d_logit, Eigen::Ref<const RowVector> length,
                                               TowerWorkspace& ws, Eigen::Ref<RowVector> out) const;
  AGE_DECL void request_moved_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                                            Eigen::Ref<Matrix> d_items) const;
  // The certified radius of each of the request's candidates (age/model/certified_moves.hpp).
  AGE_DECL void request_linear_radius(TowerWorkspace& ws, Eigen::Ref<RowVector> out) const;

  // --- Options (set before sharing the tower) -------------------------------------------
  // Certified linear moves (age/model/certified_moves.hpp). On by default; off reproduces
  // the full moved passes' float rounding exactly.
  void set_linear_moves(bool on) noexcept { linear_moves_ = on; }
  bool linear_moves() const noexcept { return linear_moves_; }
  // The input gradient's top product by table lookups (age/model/sign_table.hpp), on by
  // default: 4 x units x input floats (256 kB for 64 x 256), rebuilt at every commit. An
  // Adam step on a 32-256-64-1 tower took 34 instead of 31 us with AVX-512 and 63 instead
  // of 46 us with SSE2 only, so a training loop that computes no input gradients can turn
  // the table off.
  AGE_DECL void set_gradient_tables(bool on);
  bool gradient_tables() const noexcept { return gradient_tables_; }
  std::size_t gradient_table_bytes() const noexcept { return tables_.sign_table_bytes(); }

  AGE_DECL TowerRequestPaths request_paths() const noexcept;

 private:
  AGE_DECL void commit();
  AGE_DECL void close_edit() noexcept;
  AGE_DECL void require_committed(const char* pass) const;
  void require_shape(const char* what) const {
    if (empty())
      throw ConfigError(std::string("tower ") + what +
                        ": expected a tower with layers (constructed with a shape, copied or loaded), got an empty "
                        "one (default-constructed or moved from)");
  }
  // The state of a default-constructed tower (what a move leaves behind).
  void make_empty() noexcept {
    layers_ = detail::TowerLayers();
    tables_ = detail::TowerTables();
    open_edits_ = 0;
  }
  AGE_DECL detail::TowerRequestPasses passes(const char* pass) const;

  detail::TowerLayers layers_;
  detail::TowerTables tables_;
  int open_edits_ = 0;
  bool linear_moves_ = true;
  bool gradient_tables_ = true;
};

}  // namespace age

#if !defined(AGE_SEPARATE_COMPILATION)
#include "age/model/impl/tower.ipp"
#endif
