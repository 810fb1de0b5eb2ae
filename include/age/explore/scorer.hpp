// The AGE scorer: exploration-adjusted scores for one request (AGE-METHOD.md, "Algorithm"):
//   1. y = f(h | theta)                 base pCTR of every candidate
//   2. delta_y                          Uncertainty policy (MC-Dropout TS by default)
//   3. sigma                            Gate policy (Dynamic Gating Unit by default)
//   4. dh, y_e = f(h + sigma * dh)      Perturbation policy (PGD by default), only for the
//                                       candidates whose gate is open
// Candidates are ranked by y_e; no bonus term is added. A closed gate gives EXACTLY y.
//
// AgeScorer<Model, Uncertainty, Perturbation, Gate> composes the four seams; each one is a
// concept (CtrModel, UncertaintyPolicy, PerturbationPolicy, GatePolicy), so a type that
// does not fit is rejected at compile time with the failed requirement named.
//
//   Tower dgu = make_dgu_tower(model.item_dim());      // trained by OnlineTrainer
//   AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu), {}, Pgd{.lambda = 2e-3}, seed);
//   AgeTs<EmbeddingCtrModel>::Workspace ws;              // one per thread
//   ScoredRequest out;
//   scorer.score(Request{user, items, request_id}, out, ws);
//
// Validation: every request is checked first (check_request: 1 to max_candidates()
// candidates, default kDefaultMaxCandidates = 100000; item_dim / user_dim rows; finite
// embeddings, in one pass), and score() throws InputError or DimensionError naming the
// field and the actual value. try_score() is the non-throwing form, for services that do
// not use exceptions on the scoring path: it returns an age::Status (code + message in a
// fixed buffer) and allocates nothing more than score() does:
//   if (Status s = scorer.try_score(request, out, ws); !s.ok()) log(s.message());
//
// Thread safety and reproducibility: the scorer keeps a const pointer to the model (which
// must outlive it) and never changes after construction, so one scorer serves many
// threads, each with its own Workspace. All randomness of a request comes from Rngs seeded
// by (scorer seed, request id): the same request scores identically every time, on every
// thread, in any order. Once warmed up on requests of N candidates, scoring allocates
// nothing as long as the number of open candidates repeats, and never with
// set_gather_open(false) (with the library's model and policies).
//
// Request passes. With a model that has them (RequestPassModel: Tower, EmbeddingCtrModel)
// and policies that use them (the library's, when only the item part moves), a request
// costs one no-dropout pass that every later step reuses: the MC-Dropout samples redo
// only what a mask changes (TS's one sample is drawn first and computed with that pass:
// UncertaintyPolicy's split form), the input gradient walks down from the cached pass,
// and h + dh costs pre0 + W_item dh; the passes read the open candidates in place
// (request_select). The scores equal the plain path's up to float rounding, with the same
// random draws; the workspace's buffers only grow, so once warmed up on the largest N,
// scoring allocates nothing, whatever the number of open candidates.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/status.hpp"
#include "age/core/types.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/perturbation.hpp"
#include "age/explore/request.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/model/ctr_model.hpp"

namespace age {

template <CtrModel Model, class Uncertainty = McDropoutTs, class Perturbation = Pgd, class Gate = DguGate>
  requires UncertaintyPolicy<Uncertainty, Model> && PerturbationPolicy<Perturbation, Model> &&
           GatePolicy<Gate, Model>
class AgeScorer : public CandidateLimit {
 public:
  using model_type = Model;
  using uncertainty_type = Uncertainty;
  using perturbation_type = Perturbation;
  using gate_type = Gate;

  // Per-thread scratch: the model's and each policy's for the whole request, and a second
  // set for the gathered open candidates (so that the full-size buffers keep their size).
  struct Workspace {
    typename Model::Workspace model, model_open;
    typename Uncertainty::template Workspace<Model> uncertainty;
    typename Perturbation::template Workspace<Model> perturbation, perturbation_open;
    typename Gate::Workspace gate;
    std::vector<Index> open;
    Matrix items, user;
    RowVector base, delta, explored;
  };

  // Validates every policy (ConfigError: lambda' < 0, p outside [0, 1), PGD steps = 0,
  // UCB samples = 0, a DGU gate without a tower, ...).
  explicit AgeScorer(const Model& model, Gate gate = Gate(), Uncertainty uncertainty = Uncertainty(),
                     Perturbation perturbation = Perturbation(), std::uint64_t seed = 0)
      : model_(&model),
        uncertainty_(std::move(uncertainty)),
        perturbation_(std::move(perturbation)),
        gate_(std::move(gate)),
        seed_(seed) {
    uncertainty_.validate();
    perturbation_.validate();
    gate_.validate();
    detail::validate_against_model(gate_, model);
  }
  // The scorer keeps a pointer to the model: a temporary would dangle.
  AgeScorer(const Model&&, Gate = Gate(), Uncertainty = Uncertainty(), Perturbation = Perturbation(),
            std::uint64_t = 0) = delete;

  // Whether this combination has request passes (see the top of this file); they are
  // used when, in addition, perturbation().request_ready().
  static constexpr bool has_request_passes =
      RequestPassModel<Model> &&
      requires(const Uncertainty& u, const Perturbation& p, const Model& m, Eigen::Ref<const RowVector> base, Rng& rng,
               typename Model::Workspace& model_ws, typename Uncertainty::template Workspace<Model>& u_ws,
               typename Perturbation::template Workspace<Model>& p_ws, Eigen::Ref<RowVector> out) {
        u.compute_request(m, base, rng, model_ws, u_ws, out);
        { p.request_ready() } -> std::convertible_to<bool>;
        p.explore_request(m, base, base, rng, model_ws, p_ws, out);
      };

  // Scores every candidate of `request` into `out` (sized here) and ranks them. Throws
  // InputError / DimensionError for a request that check_request() rejects.
  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const Status status = check_request(request);
    if (!status.ok()) status.raise();
    score_checked(request, out, ws);
  }

  // score() without exceptions: the status of what score() would have thrown, or ok. A bad
  // request is refused by check_request() without throwing; the rest runs inside a
  // try/catch. On success it allocates exactly what score() allocates (nothing once warmed
  // up, see the top of this file).
  Status try_score(const Request& request, ScoredRequest& out, Workspace& ws) const noexcept {
    Status status = check_request(request);
    if (!status.ok()) return status;
    try {
      score_checked(request, out, ws);
    } catch (...) {
      return Status::from_current_exception();
    }
    return status;
  }

  // What a request must satisfy (detail::check_request, explore/request.hpp): 1 to
  // max_candidates() candidates (default 100000), the model's item_dim and user_dim rows,
  // 1 or N user columns, one impression count per candidate when given, and finite
  // embeddings. O(N * d), one pass; no throw, no allocation.
  Status check_request(const Request& request) const noexcept {
    return detail::check_request(request, static_cast<Index>(model_->user_dim()),
                                 static_cast<Index>(model_->item_dim()), max_candidates());
  }

  // Convenience for one-off calls (allocates a workspace and a result).
  ScoredRequest score(const Request& request) const {
    Workspace ws;
    ScoredRequest out;
    score(request, out, ws);
    return out;
  }

 private:
  void score_checked(const Request& request, ScoredRequest& out, Workspace& ws) const {
    if constexpr (has_request_passes) {
      if (perturbation_.request_ready()) {
        score_by_request_passes(request, out, ws);
        return;
      }
    }
    const Model& model = *model_;
    const Index n = request.size();
    out.resize(n);

    // 1. y = f(h | theta)
    predict_probabilities(model, request.user, request.items, nullptr, ws.model, out.base);
    // 2. delta_y
    Rng uncertainty_stream = uncertainty_rng(request.id);
    uncertainty_.compute(model, request.user, request.items, out.base, uncertainty_stream, ws.model,
                         ws.uncertainty, out.delta);
    // 3. sigma
    gate_.evaluate(model, request, out.base, ws.gate, std::span<std::uint8_t>(out.gate));
    // 4. y_e = f(h + sigma * dh): a closed gate keeps the base prediction bit for bit.
    out.explored = out.base;
    ws.open.clear();
    for (Index i = 0; i < n; ++i)
      if (out.gate[static_cast<std::size_t>(i)]) ws.open.push_back(i);
    const Index k = static_cast<Index>(ws.open.size());
    Rng perturbation_stream = perturbation_rng(request.id);
    if (k == n || (k > 0 && !gather_open_)) {
      ws.explored.resize(n);
      perturbation_.explore(model, request.user, request.items, out.base, out.delta, perturbation_stream, ws.model,
                            ws.perturbation, ws.explored);
      for (Index i = 0; i < n; ++i)
        if (out.gate[static_cast<std::size_t>(i)]) out.explored[i] = ws.explored[i];
    } else if (k > 0) {
      explore_subset(request, out, ws, perturbation_stream);
    }
    out.rank();
  }

 public:
  // The request's random streams, so that a caller can reproduce a step on its own.
  Rng uncertainty_rng(std::uint64_t request_id) const noexcept { return Rng(seed_, request_id); }
  Rng perturbation_rng(std::uint64_t request_id) const noexcept {
    return Rng(detail::mix64(seed_ ^ 0x5045525455524221ULL), request_id);
  }

  // Whether only the open candidates are moved, gathered into one smaller batch (default:
  // the perturbation, the costly step, then runs on k <= N columns). The size of that batch
  // changes with the number of open candidates, and so the second workspace may reallocate;
  // with gathering off every pass runs on all N columns (closed candidates are computed and
  // discarded) and a warmed-up workspace never allocates. Set before sharing the scorer.
  void set_gather_open(bool on) noexcept { gather_open_ = on; }
  bool gather_open() const noexcept { return gather_open_; }

  const Model& model() const noexcept { return *model_; }
  const Uncertainty& uncertainty() const noexcept { return uncertainty_; }
  const Perturbation& perturbation() const noexcept { return perturbation_; }
  const Gate& gate() const noexcept { return gate_; }
  std::uint64_t seed() const noexcept { return seed_; }

 private:
  // Whether the uncertainty's one mask is handed to the model's first pass (see
  // UncertaintyPolicy's split form and Tower::begin_request with a mask).
  static constexpr bool has_one_pass_sample =
      requires(const Uncertainty& u, const Model& m, Index n, Rng& rng, ConstMatrixRef user, ConstMatrixRef items,
               typename Model::Workspace& model_ws, typename Uncertainty::template Workspace<Model>& u_ws,
               Eigen::Ref<const RowVector> base, Eigen::Ref<RowVector> out) {
        { u.sample_request_mask(m, n, rng, u_ws) } -> std::same_as<const typename Model::Mask&>;
        m.begin_request(user, items, model_ws, out, &u.sample_request_mask(m, n, rng, u_ws), out);
        u.delta_from_masked_logits(base, out);
      };

  // score() on the request passes: the same four steps, one no-dropout pass.
  void score_by_request_passes(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const Model& model = *model_;
    const Index n = request.size();
    out.resize(n);

    // 1. y = f(h | theta), kept in ws.model for the passes below, and 2. delta_y
    Rng uncertainty_stream = uncertainty_rng(request.id);
    if constexpr (has_one_pass_sample) {
      // The mask is drawn first (the same draws): its logits come with the no-dropout pass.
      const auto& mask = uncertainty_.sample_request_mask(model, n, uncertainty_stream, ws.uncertainty);
      model.begin_request(request.user, request.items, ws.model, out.base, &mask, out.delta);
      sigmoid_in_place(out.base);
      uncertainty_.delta_from_masked_logits(out.base, out.delta);
    } else {
      model.begin_request(request.user, request.items, ws.model, out.base);
      sigmoid_in_place(out.base);
      uncertainty_.compute_request(model, out.base, uncertainty_stream, ws.model, ws.uncertainty, out.delta);
    }
    // 3. sigma
    gate_.evaluate(model, request, out.base, ws.gate, std::span<std::uint8_t>(out.gate));
    // 4. y_e = f(h + sigma * dh): a closed gate keeps the base prediction bit for bit.
    // Scratch sized for all N first, so that any number of open candidates fits.
    out.explored = out.base;
    ws.open.reserve(static_cast<std::size_t>(n));
    ws.open.clear();
    for (Index i = 0; i < n; ++i)
      if (out.gate[static_cast<std::size_t>(i)]) ws.open.push_back(i);
    const Index k = static_cast<Index>(ws.open.size());
    detail::scratch_head(ws.base, n);
    detail::scratch_head(ws.delta, n);
    detail::scratch_head(ws.explored, n);
    if constexpr (requires { perturbation_.reserve_request(model, n, ws.perturbation); })
      perturbation_.reserve_request(model, n, ws.perturbation);
    Rng perturbation_stream = perturbation_rng(request.id);
    if (k == n || (k > 0 && !gather_open_)) {
      auto explored = detail::scratch_head(ws.explored, n);
      perturbation_.explore_request(model, out.base, out.delta, perturbation_stream, ws.model, ws.perturbation,
                                    explored);
      for (Index i : ws.open) out.explored[i] = explored[i];
    } else if (k > 0) {
      // Only the open candidates move: the passes read them in place in the cached pass.
      model.request_select(std::span<const Index>(ws.open), ws.model);
      auto base = detail::scratch_head(ws.base, k);
      auto delta = detail::scratch_head(ws.delta, k);
      auto explored = detail::scratch_head(ws.explored, k);
      for (Index j = 0; j < k; ++j) {
        const Index i = ws.open[static_cast<std::size_t>(j)];
        base[j] = out.base[i];
        delta[j] = out.delta[i];
      }
      perturbation_.explore_request(model, base, delta, perturbation_stream, ws.model, ws.perturbation, explored);
      for (Index j = 0; j < k; ++j) out.explored[ws.open[static_cast<std::size_t>(j)]] = explored[j];
    }
    out.rank();
  }

  // Moves only the open candidates: gathered into contiguous columns, explored as one
  // batch, scattered back (candidates are independent, see CtrModel).
  void explore_subset(const Request& request, ScoredRequest& out, Workspace& ws, Rng& rng) const {
    const Index k = static_cast<Index>(ws.open.size());
    const bool shared_user = request.user.cols() == 1;
    ws.items.resize(request.items.rows(), k);
    if (!shared_user) ws.user.resize(request.user.rows(), k);
    ws.base.resize(k);
    ws.delta.resize(k);
    ws.explored.resize(k);
    for (Index j = 0; j < k; ++j) {
      const Index i = ws.open[static_cast<std::size_t>(j)];
      ws.items.col(j) = request.items.col(i);
      if (!shared_user) ws.user.col(j) = request.user.col(i);
      ws.base[j] = out.base[i];
      ws.delta[j] = out.delta[i];
    }
    if (shared_user)
      perturbation_.explore(*model_, request.user, ws.items, ws.base, ws.delta, rng, ws.model_open,
                            ws.perturbation_open, ws.explored);
    else
      perturbation_.explore(*model_, ws.user, ws.items, ws.base, ws.delta, rng, ws.model_open,
                            ws.perturbation_open, ws.explored);
    for (Index j = 0; j < k; ++j) out.explored[ws.open[static_cast<std::size_t>(j)]] = ws.explored[j];
  }

  const Model* model_;
  Uncertainty uncertainty_;
  Perturbation perturbation_;
  Gate gate_;
  std::uint64_t seed_;
  bool gather_open_ = true;
};

// The paper's two main variants (PGD, DGU) and their FGM forms (Table 3).
template <class Model>
using AgeTs = AgeScorer<Model, McDropoutTs, Pgd, DguGate>;
template <class Model>
using AgeUcb = AgeScorer<Model, McDropoutUcb, Pgd, DguGate>;
template <class Model>
using AgeTsFgm = AgeScorer<Model, McDropoutTs, Fgm, DguGate>;
template <class Model>
using AgeUcbFgm = AgeScorer<Model, McDropoutUcb, Fgm, DguGate>;

}  // namespace age
