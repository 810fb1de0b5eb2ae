// The tower's request passes (the RequestPassModel capability, age/model/ctr_model.hpp):
// exploration scores one request many times -- the no-dropout pass, one or 20 MC-Dropout
// passes, the input gradient, passes at h + dh with only the item part moved -- and each
// later pass reuses the first one, which stays in the workspace:
//   - masked passes: layer 0 is the same under every mask on the hidden units, and with a
//     mask shared by the candidates layer 1 is the cached one plus a rank-|J| update
//     (age/model/masked_update.hpp);
//   - the input gradient walks down from the cached pre-activations (no forward), its top
//     product by table lookups (age/model/sign_table.hpp);
//   - a move of the item part changes layer 0 by W_item dh only (M25): pre0(h + dh) =
//     pre0(h) + W_item dh (also more precise than recomputing W_item (items + dh) when dh
//     is tiny);
//   - a move too short to flip any hidden unit needs no pass at all
//     (age/model/certified_moves.hpp).
// Scores equal the plain passes' up to float rounding. What a workspace holds between the
// passes is one RequestStage (age/model/tower_workspace.hpp); each pass checks it.
//
// TowerRequestPasses is a short-lived view of a tower's layers and tables; Tower's
// request_* members construct one per call.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/scratch.hpp"
#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/certified_moves.hpp"
#include "age/model/dropout.hpp"
#include "age/model/gemm.hpp"
#include "age/model/masked_update.hpp"
#include "age/model/plain_passes.hpp"
#include "age/model/tower_layers.hpp"
#include "age/model/tower_tables.hpp"
#include "age/model/tower_workspace.hpp"

namespace age::detail {

class TowerRequestPasses {
 public:
  TowerRequestPasses(const TowerLayers& layers, const TowerTables& tables, bool linear_moves) noexcept
      : t_(layers), tables_(tables), linear_moves_(linear_moves) {}

  // Starts a request: the no-dropout pass over the N candidates, whose pre-activations
  // stay in ws; its logits (N) into `out`. The request lasts until the next plain pass on
  // ws. When every hidden layer runs on the product kernel the pass writes no ReLU: each
  // product reads the pre-activation below through its ReLU (one max per broadcast, on
  // ports the multiply-adds leave free), and the logits are read from the top hidden
  // layer's product panel by panel while it is in the first-level cache
  // (gemm_kernel::OutputLogits through the kernel's panel hook) instead of by the output
  // layer's product. The same pre-activations as the plain forward pass, and its logits up
  // to float rounding (the output layer summed in another order).
  void begin(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    gemm_kernel::OutputLogits output;
    first_pass(user, items, ws, output);
    start(items.cols(), ws, out);
  }

  // begin() and, in the same call, the logits under a dropout `mask` into `masked_out`
  // (N): what logits(mask, ...) gives right after it, up to float rounding (Thompson
  // sampling's one mask sample). For a tower of TWO hidden layers and a mask shared by the
  // candidates (two_layer_masked_logits, the named specialisation), each candidate's masked
  // logit is read from layer 1's product with the no-dropout one, ReLU(pre0) from the
  // product's own operand, instead of by a second pass over the cached pre-activations (on
  // the reference workload ~7 ns per candidate instead of ~13); otherwise it is begin() then
  // logits().
  void begin(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, Eigen::Ref<RowVector> out,
             const DropoutMask* mask, Eigen::Ref<RowVector> masked_out) const {
    const Index n = items.cols();
    check_inputs(t_, user, items, mask);
    require_dim("begin_request: masked logits output length", static_cast<std::size_t>(n),
                static_cast<std::size_t>(masked_out.size()));
    TowerRequestScratch& rq = ws.request;
    prepare(rq);
    Scalar s = 0;
    const bool one_pass = mask && !mask->empty() && t_.hidden.size() == 2 && mask->layers[1].cols() == 1 &&
                          t_.all_hidden_on_kernel() && changed_units(t_, mask->layers[0], rq, s);
    if (!one_pass) {
      begin(user, items, ws, out);
      logits(mask, ws, masked_out);
      return;
    }
    rq.output_weights = t_.weights[2].row(0).transpose().cwiseProduct(mask->layers[1].col(0));
    gemm_kernel::OutputLogits output = two_layer_masked_logits(t_, s, rq, masked_out.data());
    first_pass(user, items, ws, output);
    start(n, ws, out);
  }

  // Candidates in the request: N, or fewer after select().
  Index size(const TowerWorkspace& ws) const {
    require_request(ws, "request_size");
    return ws.request.columns;
  }

  // Keeps only the candidates at positions `keep` (strictly increasing, relative to the
  // current request), in that order, e.g. those whose gate is open. Nothing is copied: the
  // passes read the kept columns of the cached pass where they are (a copy of the kept
  // pre-activations was ~2.5% of an AGE-TS request of 1000 candidates). ws.pre and ws.act
  // keep all N columns; backward() has no meaning on this workspace until its next plain
  // pass.
  void select(std::span<const Index> keep, TowerWorkspace& ws) const {
    require_request(ws, "request_select");
    TowerRequestScratch& rq = ws.request;
    const Index k = static_cast<Index>(keep.size());
    Index previous = -1;
    for (Index j = 0; j < k; ++j) {
      const Index i = keep[static_cast<std::size_t>(j)];
      if (i <= previous || i >= rq.columns)
        throw InputError("request_select: keep[" + std::to_string(j) + "]: expected a position in (" +
                         std::to_string(previous) + ", " + std::to_string(rq.columns) + "), got " + std::to_string(i));
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
    rq.stage = RequestStage::cached;
  }

  // Logits of the request's candidates under a dropout mask (1 or size() columns; nullptr
  // or empty: no dropout) into `out`. Layer 0 is not recomputed; with a mask shared by the
  // candidates, layer 1 is the cached one plus the rank-|J| update.
  void logits(const DropoutMask* mask, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_logits");
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    require_dim("request_logits: output length", static_cast<std::size_t>(k), static_cast<std::size_t>(out.size()));
    rq.stage = without_moved_pass(rq.stage);  // rq.pre is reused below
    if (!mask || mask->empty() || t_.hidden.empty()) {
      out = rq.logits.head(k);
      return;
    }
    check_mask(t_, *mask, k);
    const std::size_t top = t_.hidden.size() - 1;  // the last hidden layer
    const Scalar b_out = t_.biases[top + 1][0];
    // A shared mask on the top hidden layer folds into the output weights, and the logit
    // of a candidate is then one dot product with its top pre-activation's ReLU.
    const bool fold_top = top > 0 && mask->layers[top].cols() == 1;
    if (fold_top) rq.output_weights = t_.weights[top + 1].row(0).transpose().cwiseProduct(mask->layers[top].col(0));
    // Layer 1's pre-activation under the mask of hidden layer 0 (layer 0's is unchanged).
    auto p1 = scratch_cols(rq.pre[1], t_.weights[1].rows(), k);
    Scalar s = 0;
    const bool sparse = changed_units(t_, mask->layers[0], rq, s);
    if (sparse && fold_top && top == 1) {
      // Two hidden layers: each candidate's logit in one go (rq.pre is not written).
      const gemm_kernel::OutputLogits masked = two_layer_masked_logits(t_, s, rq, out.data());
      const Matrix& pre0 = ws.pre[0];
      const Index h0 = t_.weights[0].rows(), h1 = t_.weights[1].rows();
      for (Index n = 0; n < k; ++n) {
        // pre0's rows are 4 * H0 bytes apart, a cache miss per changed unit and candidate:
        // fetched a few candidates ahead.
        if (n + 8 < k)
          for (Index j : rq.changed) simd::prefetch(&pre0(j, cached_column(rq, n + 8)));
        const Index c = cached_column(rq, n);
        Scalar base_logit;  // the cached one; computed again with the masked logit (2 of ~40 operations)
        gemm_kernel::output_logits_of<1, true>(masked, ws.pre[1].col(c).data(), h1, pre0.col(c).data(), h0, h1,
                                               &base_logit, &out[n]);
      }
      return;
    }
    if (sparse) {
      for (Index n = 0; n < k; ++n) sparse_column(t_, rq, s, ws.pre[0], ws.pre[1], cached_column(rq, n), p1.col(n));
    } else {
      auto a = scratch_cols(rq.act[0], t_.weights[0].rows(), k);
      for (Index n = 0; n < k; ++n) a.col(n) = ws.pre[0].col(cached_column(rq, n)).cwiseMax(Scalar(0));
      apply_mask(mask->layers[0], a);
      t_.layer_product(1, a, p1);
    }
    if (top == 0) {  // layer 1 was the output
      out = p1.row(0);
      return;
    }
    for (std::size_t l = 1; l < top; ++l) {
      auto a = scratch_cols(rq.act[l], t_.weights[l].rows(), k);
      a = rq.pre[l].leftCols(k).cwiseMax(Scalar(0));
      apply_mask(mask->layers[l], a);
      t_.layer_product(l + 1, a, scratch_cols(rq.pre[l + 1], t_.weights[l + 1].rows(), k));
    }
    if (fold_top) {
      for (Index n = 0; n < k; ++n) out[n] = rq.output_weights.dot(rq.pre[top].col(n).cwiseMax(Scalar(0))) + b_out;
    } else {
      auto a = scratch_cols(rq.act[top], t_.weights[top].rows(), k);
      a = rq.pre[top].leftCols(k).cwiseMax(Scalar(0));
      apply_mask(mask->layers[top], a);
      auto p = scratch_cols(rq.pre[top + 1], 1, k);
      p.setConstant(b_out);
      multiply_add(p, t_.weights[top + 1], a);
      out = p.row(0);
    }
  }

  // Gradient of sum_n d_logit[n] z_n with respect to the items at the request's cached
  // no-dropout point, item_dim x k, into d_items (sized by the caller). With
  // d_logit = y (1 - y) it is dy/d(items), as probability_gradient() gives it. With
  // certified moves on, the logit's own gradient and the radii are kept (stage gradient).
  void item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws, Eigen::Ref<Matrix> d_items) const {
    require_request(ws, "request_item_gradient");
    TowerRequestScratch& rq = ws.request;
    prepare(rq);
    if (!linear_moves_) {
      gradient_at(ws.pre, kept_columns(rq), d_logit, rq, d_items);
      return;
    }
    scaled_unit_gradient("request_item_gradient", d_logit, ws, d_items, /*compute=*/true);
  }

  // Logits at h + dh with only the item part moved (d_items: item_dim x k), from the
  // cached layer-0 pre-activation: pre0 + W_item dh. After item_gradient() (stage
  // gradient) a certified candidate's logit is logit(h) + grad . dh and only the others
  // get the pass in full, gathered. The pass stays in ws for moved_item_gradient().
  void moved_logits(ConstMatrixRef d_items, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_moved_logits");
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    require_dim("request_moved_logits: move rows (item_dim)", t_.item_dim, static_cast<std::size_t>(d_items.rows()));
    require_dim("request_moved_logits: move columns (candidates)", static_cast<std::size_t>(k),
                static_cast<std::size_t>(d_items.cols()));
    require_dim("request_moved_logits: output length", static_cast<std::size_t>(k), static_cast<std::size_t>(out.size()));
    prepare(rq);
    if (!(linear_moves_ && has_gradient(rq.stage))) {
      moved_pass(d_items, ws, k);
      out = rq.pre.back().row(0).head(k);
      rq.stage = has_gradient(rq.stage) ? RequestStage::gradient_moved : RequestStage::moved;
      return;
    }
    const auto radius = rq.radius.head(k);
    rq.full_moves.clear();
    for (Index n = 0; n < k; ++n) {
      if (d_items.col(n).norm() < radius[n])
        out[n] = rq.logits[n] + rq.unit_gradient.col(n).dot(d_items.col(n));
      else
        rq.full_moves.push_back(n);
    }
    rq.stage = RequestStage::gradient_linear;
    const Index m = static_cast<Index>(rq.full_moves.size());
    if (m == 0) return;
    auto moves = scratch_cols(rq.gathered, t_.di(), m);
    for (Index j = 0; j < m; ++j) moves.col(j) = d_items.col(rq.full_moves[static_cast<std::size_t>(j)]);
    moved_pass(moves, ws, m, rq.full_moves.data());
    for (Index j = 0; j < m; ++j) out[rq.full_moves[static_cast<std::size_t>(j)]] = rq.pre.back()(0, j);
  }

  // FGM in one go: the logit of each request candidate n at
  //   h + length[n] g_n / ||g_n||,   g_n = d_logit[n] d z_n / d items
  // (no move where ||g_n|| is 0 or not finite), what item_gradient() with d_logit, the
  // normalised move and moved_logits() give, up to float rounding. A certified move
  // (|length[n]| < its radius) stays in one linear piece, where the logit is
  // z_n +- length[n] ||d z_n / d items|| (the sign of d_logit[n]): one pass over each
  // candidate's gradient instead of the gradient scaled, its norm, the move written, its
  // norm and a dot product; the others get the moved pass in full. Returns false,
  // computing nothing, with certified moves off: then take those three steps. Leaves the
  // pass as moved_logits() does.
  bool normalized_move_logits(Eigen::Ref<const RowVector> d_logit, Eigen::Ref<const RowVector> length,
                              TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_normalized_move_logits");
    if (!linear_moves_) return false;
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns, di = t_.di();
    require_dim("request_normalized_move_logits: d_logit length", static_cast<std::size_t>(k),
                static_cast<std::size_t>(d_logit.size()));
    require_dim("request_normalized_move_logits: length length", static_cast<std::size_t>(k),
                static_cast<std::size_t>(length.size()));
    require_dim("request_normalized_move_logits: output length", static_cast<std::size_t>(k),
                static_cast<std::size_t>(out.size()));
    prepare(rq);
    unit_gradient_and_radius(ws);
    const auto unit = rq.unit_gradient.leftCols(k);
    const auto radius = rq.radius.head(k);
    rq.stage = RequestStage::gradient_linear;
    rq.full_moves.clear();
    scratch_head(rq.gathered_logit, k);
    for (Index n = 0; n < k; ++n) {
      const double unit_norm = std::sqrt(static_cast<double>(squared_norm(unit.col(n).data(), di)));
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
    auto moves = scratch_cols(rq.gathered, di, m);
    for (Index j = 0; j < m; ++j) moves.col(j) = unit.col(rq.full_moves[static_cast<std::size_t>(j)]) * rq.gathered_logit[j];
    moved_pass(moves, ws, m, rq.full_moves.data());
    for (Index j = 0; j < m; ++j) out[rq.full_moves[static_cast<std::size_t>(j)]] = rq.pre.back()(0, j);
    return true;
  }

  // item_gradient() at the point of the last moved_logits() (a moved stage).
  void moved_item_gradient(Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws, Eigen::Ref<Matrix> d_items) const {
    require_request(ws, "request_moved_item_gradient");
    TowerRequestScratch& rq = ws.request;
    if (!has_moved_pass(rq.stage))
      throw InputError("request_moved_item_gradient: expected a request_moved_logits() pass before, got none");
    if (rq.stage != RequestStage::gradient_linear) {  // moved in full
      gradient_at(rq.pre, nullptr, d_logit, rq, d_items);
      return;
    }
    // Certified candidates: the gradient of their linear piece, the one at h. The others:
    // from their gathered moved pass.
    scaled_unit_gradient("request_moved_item_gradient", d_logit, ws, d_items, /*compute=*/false);
    const Index m = static_cast<Index>(rq.full_moves.size());
    if (m == 0) return;
    auto d_logit_full = scratch_head(rq.gathered_logit, m);
    for (Index j = 0; j < m; ++j) d_logit_full[j] = d_logit[rq.full_moves[static_cast<std::size_t>(j)]];
    auto g = scratch_cols(rq.gathered, t_.di(), m);
    gradient_at(rq.pre, nullptr, d_logit_full, rq, g);
    for (Index j = 0; j < m; ++j) d_items.col(rq.full_moves[static_cast<std::size_t>(j)]) = g.col(j);
  }

  // The certified radius of each of the request's candidates into `out` (size()).
  void linear_radius(TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_request(ws, "request_linear_radius");
    require_dim("request_linear_radius: output length", static_cast<std::size_t>(ws.request.columns),
                static_cast<std::size_t>(out.size()));
    certified_radius(tables_, ws.pre, kept_columns(ws.request), t_.hidden.size(), out);
  }

 private:
  // The no-dropout pass of a request into ws.pre; `output` gets the logits. In the form
  // that writes no ReLU where every hidden layer runs on the kernel, the plain forward
  // pass otherwise.
  void first_pass(ConstMatrixRef user, ConstMatrixRef items, TowerWorkspace& ws, gemm_kernel::OutputLogits& output) const {
    if (!t_.all_hidden_on_kernel()) {
      forward(t_, user, items, nullptr, ws);
      return;
    }
    check_inputs(t_, user, items, nullptr);
    const Index n = items.cols();
    const std::size_t hidden = t_.hidden.size(), top = hidden - 1;
    ws.pre.resize(t_.layers());
    ws.act.resize(hidden);
    for (std::size_t l = 0; l < hidden; ++l) ws.act[l].resize(t_.weights[l].rows(), n);  // for backward()
    ws.pre[top + 1].resize(1, n);
    output.weights = t_.weights[top + 1].data();  // 1 x H: contiguous
    output.out_bias = t_.biases[top + 1][0];
    output.out = ws.pre[top + 1].data();
    gemm_kernel::Finish top_panels;
    top_panels.panel = gemm_kernel::output_logits_hook(output);
    first_layer(t_, user, items, nullptr, ws, hidden == 1 ? top_panels : gemm_kernel::Finish{});
    ws.acts_written = false;
    for (std::size_t l = 1; l < hidden; ++l) {
      ws.pre[l].resize(t_.weights[l].rows(), n);
      gemm_from_column(ws.pre[l], t_.biases[l], t_.weights[l], ws.pre[l - 1],
                       l + 1 == hidden ? top_panels : gemm_kernel::Finish{}, /*relu_x=*/true);
    }
  }

  // After the first pass: the request's logits into `out`, and every scratch buffer sized
  // for its n candidates, whichever passes follow (which ones, and on how many
  // candidates, changes from request to request): none allocates afterwards.
  void start(Index n, TowerWorkspace& ws, Eigen::Ref<RowVector> out) const {
    require_dim("begin_request: logits output length", static_cast<std::size_t>(n), static_cast<std::size_t>(out.size()));
    out = ws.logits();
    TowerRequestScratch& rq = ws.request;
    rq.stage = RequestStage::cached;
    rq.columns = n;
    rq.kept.clear();
    rq.kept.reserve(static_cast<std::size_t>(n));
    prepare(rq);
    for (std::size_t l = 0; l < t_.layers(); ++l) {
      scratch_cols(rq.pre[l], t_.weights[l].rows(), n);
      if (l < t_.hidden.size()) scratch_cols(rq.act[l], t_.weights[l].rows(), n);
    }
    scratch_cols(rq.unit_gradient, t_.di(), n);
    scratch_cols(rq.gathered, t_.di(), n);
    scratch_head(rq.radius, n);
    scratch_head(rq.gathered_logit, n);
    scratch_head(rq.ones, n);
    rq.full_moves.reserve(static_cast<std::size_t>(n));
    scratch_head(rq.logits, n) = out;
    if (!t_.hidden.empty()) rq.output_weights.resize(static_cast<Index>(t_.hidden.back()));
  }

  void require_request(const TowerWorkspace& ws, const char* pass) const {
    if (ws.request.stage == RequestStage::none || ws.pre.size() != t_.layers() || ws.act.size() != t_.hidden.size())
      throw InputError(std::string(pass) +
                       ": request on this workspace: expected one started by begin_request() and not ended by a "
                       "plain pass since, got none");
  }

  // The column of the cached pass (ws.pre) that holds request candidate j (select()).
  static Index cached_column(const TowerRequestScratch& rq, Index j) noexcept {
    return rq.kept.empty() ? j : rq.kept[static_cast<std::size_t>(j)];
  }
  static const Index* kept_columns(const TowerRequestScratch& rq) noexcept {
    return rq.kept.empty() ? nullptr : rq.kept.data();
  }

  // No allocation once sized: resize() to the same length and reserve() within the
  // capacity are no-ops.
  void prepare(TowerRequestScratch& rq) const {
    rq.pre.resize(t_.layers());
    rq.act.resize(t_.hidden.size());
    if (!t_.hidden.empty()) {
      rq.changed.reserve(t_.hidden[0]);
      rq.changed_column.reserve(t_.hidden[0]);
      rq.changed_factor.reserve(t_.hidden[0]);
      rq.changed_scale.reserve(t_.hidden[0] * gemm_kernel::kCols);  // output_logits_of
    }
  }

  // d_items = the unit gradient at h scaled by d_logit per candidate (computed first when
  // `compute`), after checking the shapes for `pass`.
  void scaled_unit_gradient(const char* pass, Eigen::Ref<const RowVector> d_logit, TowerWorkspace& ws,
                            Eigen::Ref<Matrix> d_items, bool compute) const {
    const Index k = ws.request.columns;
    // The messages are built only on failure: this runs on every request.
    if (d_logit.size() != k)
      throw DimensionError(mismatch(std::string(pass) + ": d_logit length", static_cast<std::size_t>(k),
                                    static_cast<std::size_t>(d_logit.size())));
    if (d_items.cols() != k)
      throw DimensionError(mismatch(std::string(pass) + ": output columns (candidates)", static_cast<std::size_t>(k),
                                    static_cast<std::size_t>(d_items.cols())));
    if (compute) unit_gradient_and_radius(ws);
    d_items.noalias() = ws.request.unit_gradient.leftCols(k) * d_logit.asDiagonal();
  }

  // d logit / d items of the request's k candidates into rq.unit_gradient (item_dim x k),
  // what certified moves scale, with their radii into rq.radius while the gradient reads
  // the same pre-activations.
  void unit_gradient_and_radius(TowerWorkspace& ws) const {
    TowerRequestScratch& rq = ws.request;
    const Index k = rq.columns;
    auto ones = scratch_head(rq.ones, k);
    ones.setOnes();
    auto unit = scratch_cols(rq.unit_gradient, t_.di(), k);
    Eigen::Ref<RowVector> radius = scratch_head(rq.radius, k);
    gradient_at(ws.pre, kept_columns(rq), ones, rq, unit, &radius);
    // A moved pass before stays readable (gradient_at writes rq.act only).
    if (rq.stage != RequestStage::gradient_linear)
      rq.stage = has_moved_pass(rq.stage) ? RequestStage::gradient_moved : RequestStage::gradient;
  }

  // The input gradient from the per-layer pre-activations `pre` of a no-dropout pass (the
  // cached one or a moved one): down from d_logit through each ReLU, then W_item^T.
  // Candidate n's column of `pre` is columns[n] (nullptr: n). With `radius` (k), also each
  // candidate's certified radius at that point, found by the table pass while it reads the
  // top two layers' pre-activations. Uses rq.act as scratch.
  void gradient_at(const std::vector<Matrix>& pre, const Index* columns, Eigen::Ref<const RowVector> d_logit,
                   TowerRequestScratch& rq, Eigen::Ref<Matrix> g, Eigen::Ref<RowVector>* radius = nullptr) const {
    // k = d_logit.size(): the request's candidates, or the gathered ones of a moved pass.
    const Index k = d_logit.size();
    require_dim("item gradient: output rows (item_dim)", t_.item_dim, static_cast<std::size_t>(g.rows()));
    require_dim("item gradient: output columns (candidates)", static_cast<std::size_t>(k),
                static_cast<std::size_t>(g.cols()));
    const std::size_t hidden = t_.hidden.size();
    if (hidden == 0) {
      const auto w_item = t_.w_item();
      for (Index n = 0; n < k; ++n) g.col(n) = d_logit[n] * w_item.row(0).transpose();
      if (radius) radius->setConstant(std::numeric_limits<Scalar>::infinity());
      return;
    }
    const std::size_t top = hidden - 1;
    std::size_t l = top;
    const bool tabled = !tables_.sign_table.empty();
    if (tabled) {
      // The top layer's product by table lookups: straight to d(pre) of the layer below
      // it, or to g for a tower of one hidden layer.
      SignTable::SmallestRatio ratio{tables_.inverse_move_bound[top].data(),
                                     top > 0 ? tables_.inverse_move_bound[top - 1].data() : nullptr,
                                     radius ? radius->data() : nullptr};
      if (top == 0) {
        tables_.sign_table.multiply(pre[0], columns, d_logit, nullptr, g, radius ? &ratio : nullptr);
      } else {
        auto below = scratch_cols(rq.act[top - 1], t_.weights[top - 1].rows(), k);
        tables_.sign_table.multiply(pre[top], columns, d_logit, &pre[top - 1], below, radius ? &ratio : nullptr);
        --l;
      }
      if (radius) {
        // The layers under the top two, then the margin.
        fold_smallest_ratios(tables_, pre, columns, 0, top > 0 ? top - 1 : 0, *radius);
        *radius *= kRadiusMargin;
      }
      if (top == 0) return;
    } else {
      // d(pre) of the top hidden layer: w_out^T d_logit through its ReLU.
      const auto w_out = t_.weights[hidden].row(0);
      auto d = scratch_cols(rq.act[top], t_.weights[top].rows(), k);
      for (Index n = 0; n < k; ++n)
        d.col(n) = (pre[top].col(columns ? columns[n] : n).array() > Scalar(0))
                       .select(d_logit[n] * w_out.transpose().array(), Scalar(0));
    }
    for (; l > 0; --l) {
      auto below = scratch_cols(rq.act[l - 1], t_.weights[l - 1].rows(), k);
      tables_.transposed_product(l, rq.act[l].leftCols(k), below, pre[l - 1], columns);
    }
    tables_.transposed_product(0, rq.act[0].leftCols(k), g);
    if (radius && !tabled) certified_radius(tables_, pre, columns, hidden, *radius);
  }

  // The pass at h + dh for m candidates into rq.pre's first m columns: pre0 + W_item dh,
  // then the layers above, each hidden layer's ReLU written by the product below it.
  // `columns` (optional) maps them to the cached pass's columns (the gathered candidates
  // of a certified move); without it they are 0..m-1.
  void moved_pass(ConstMatrixRef moves, TowerWorkspace& ws, Index m, const Index* columns = nullptr) const {
    TowerRequestScratch& rq = ws.request;
    auto p0 = scratch_cols(rq.pre[0], t_.weights[0].rows(), m);
    for (Index j = 0; j < m; ++j) p0.col(j) = ws.pre[0].col(cached_column(rq, columns ? columns[j] : j));
    const std::size_t hidden = t_.hidden.size();
    if (hidden == 0) {
      gemm_add(p0, t_.w_item(), moves);
      return;
    }
    gemm_add(p0, t_.w_item(), moves, also_relu(scratch_cols(rq.act[0], t_.weights[0].rows(), m)));
    for (std::size_t l = 0; l < hidden; ++l) {
      auto next = scratch_cols(rq.pre[l + 1], t_.weights[l + 1].rows(), m);
      if (l + 1 < hidden) {
        MatrixRef next_act = scratch_cols(rq.act[l + 1], t_.weights[l + 1].rows(), m);
        t_.layer_product(l + 1, rq.act[l].leftCols(m), next, &next_act);
      } else {
        t_.layer_product(l + 1, rq.act[l].leftCols(m), next);
      }
    }
  }

  const TowerLayers& t_;
  const TowerTables& tables_;
  bool linear_moves_;
};

}  // namespace age::detail
