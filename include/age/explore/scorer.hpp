// The AGE scorer: exploration-adjusted scores for one request (METHOD.md, "One request,
// step by step"):
//   1. y = f(h | theta)                 base pCTR of every candidate (M1)
//   2. delta_y                          Uncertainty policy (MC-Dropout TS (M10) by default)
//   3. sigma                            Gate policy (Dynamic Gating Unit (M16) by default)
//   4. dh, y_e = f(h + sigma * dh)      (M17); Perturbation policy (PGD (M13) by default),
//                                       only for the candidates whose gate is open
// Candidates are ranked by y_e; no bonus term is added. A closed gate gives EXACTLY y.
//
// AgeScorer<Model, Uncertainty, Perturbation, Gate, Engine> composes the seams; each one is
// a concept (CtrModel, UncertaintyPolicy, PerturbationPolicy, GatePolicy, EvaluationEngine),
// so a type that does not fit is rejected at compile time with the failed requirement named.
//
//   Tower dgu = make_dgu_tower(model.item_dim());      // trained by OnlineTrainer
//   AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu), {}, Pgd{.lambda = 2e-3}, seed);
//   AgeTs<EmbeddingCtrModel>::Workspace ws;              // one per thread
//   ScoredRequest out;
//   scorer.score(Request{user, items, request_id}, out, ws);
//
// Validation: every request is checked first (check_request: a usable model, 1 to
// max_candidates() candidates, default kDefaultMaxCandidates = 100000; item_dim / user_dim
// rows; finite embeddings, in one pass), and score() throws InputError or DimensionError
// naming the field and the actual value (ConfigError for an empty model: default-
// constructed or moved from). The scores are checked last: a base, delta or explored
// score that is not finite (float overflowed in the model) is an InputError naming the
// candidate, never a NaN returned as a score. try_score() is the non-throwing form, for
// services that do not use exceptions on the scoring path: it returns an age::Status
// (code + message in a fixed buffer) and allocates nothing more than score() does:
//   if (Status s = scorer.try_score(request, out, ws); !s.ok()) log(s.message());
//
// Thread safety and reproducibility: the scorer keeps a const pointer to the model (which
// must outlive it) and never changes after construction, so one scorer serves many
// threads, each with its own Workspace (a Workspace shared by two calls at once is caught
// by an assertion in debug builds, age/core/workspace_use.hpp). All randomness of a request comes from Rngs seeded
// by (scorer seed, request id): the same request scores identically every time, on every
// thread, in any order. With the library's model and policies on the request-pass engine,
// scoring allocates nothing once warmed up on the largest N, whatever the number of open
// candidates; on the plain engine the gathered open candidates are reallocated when their
// number changes (never with set_gather_open(false)).
//
// Engines. The scorer's steps are written once against an evaluation engine
// (age/explore/engine.hpp), its fifth template parameter: by default the model's request
// passes where it has them (RequestPassModel: Tower, EmbeddingCtrModel), so that a
// request costs one no-dropout pass that every later step reuses, and its plain passes
// otherwise. `AgeTs<MyModel>::uses_request_passes` says which, at compile time. A policy
// that moves the user part (PerturbTarget::whole_input) needs PlainEngine, and a scorer
// built with another engine refuses it (ConfigError).
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
#include "age/core/scratch.hpp"
#include "age/core/workspace_use.hpp"
#include "age/explore/engine.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/perturbation.hpp"
#include "age/explore/request.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/model/ctr_model.hpp"

namespace age {

template <CtrModel Model, class Uncertainty = McDropoutTs, class Perturbation = Pgd, class Gate = DguGate,
          class Engine = DefaultEngine<Model>>
  requires EvaluationEngine<Engine> && std::same_as<typename Engine::model_type, Model> &&
           UncertaintyPolicy<Uncertainty, Engine> && PerturbationPolicy<Perturbation, Engine> &&
           GatePolicy<Gate, Model>
class AgeScorer : public CandidateLimit {
 public:
  using model_type = Model;
  using uncertainty_type = Uncertainty;
  using perturbation_type = Perturbation;
  using gate_type = Gate;
  using engine_type = Engine;

  // Whether scoring runs on the model's request passes (see the top of this file).
  static constexpr bool uses_request_passes = Engine::uses_request_passes;

  // Per-thread scratch: the engine's (with the model's), each policy's, and the open
  // candidates' inputs and outputs.
  struct Workspace {
    typename Engine::Workspace engine;
    typename Uncertainty::template Workspace<Engine> uncertainty;
    typename Perturbation::template Workspace<Engine> perturbation;
    typename Gate::Workspace gate;
    std::vector<Index> open;
    RowVector base, delta, explored;
    detail::WorkspaceMark in_use;  // debug builds: one call at a time
  };

  // Validates the model and every policy (ConfigError: an empty model, lambda' outside
  // [0, kMaxSettingScale], p outside [0, 1), PGD steps = 0, UCB samples = 0, a DGU gate
  // without a tower, a move of the user part on an engine that moves the item part only,
  // ...).
  explicit AgeScorer(const Model& model, Gate gate = Gate(), Uncertainty uncertainty = Uncertainty(),
                     Perturbation perturbation = Perturbation(), std::uint64_t seed = 0)
      : model_(&model),
        uncertainty_(std::move(uncertainty)),
        perturbation_(std::move(perturbation)),
        gate_(std::move(gate)),
        seed_(seed) {
    detail::require_usable_model(model, "AgeScorer");
    uncertainty_.validate();
    perturbation_.validate();
    gate_.validate();
    detail::validate_against_model(gate_, model);
    if constexpr (MovingPolicy<Perturbation>)
      if (moves_user(perturbation_) && !Engine::moves_user)
        throw ConfigError(
            "AgeScorer: perturbation target: expected PerturbTarget::items on an engine that moves the item part "
            "only (the default engine of a model with request passes), got whole_input; choose PlainEngine<Model> "
            "as the scorer's engine for it");
  }
  // The scorer keeps a pointer to the model: a temporary would dangle.
  AgeScorer(const Model&&, Gate = Gate(), Uncertainty = Uncertainty(), Perturbation = Perturbation(),
            std::uint64_t = 0) = delete;

  // Scores every candidate of `request` into `out` (sized here) and ranks them. Throws
  // InputError / DimensionError for a request that check_request() rejects.
  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const detail::WorkspaceUse use(ws.in_use, "AgeScorer::score");
    const Status status = check_request(request);
    if (!status.ok()) status.raise();
    score_checked(request, out, ws);
    detail::require_finite_scores(out);
  }

  // score() without exceptions: the status of what score() would have thrown, or ok. A bad
  // request is refused by check_request() without throwing; the rest runs inside a
  // try/catch. On success it allocates exactly what score() allocates (nothing once warmed
  // up, see the top of this file).
  Status try_score(const Request& request, ScoredRequest& out, Workspace& ws) const noexcept {
    const detail::WorkspaceUse use(ws.in_use, "AgeScorer::try_score");
    Status status = check_request(request);
    if (!status.ok()) return status;
    try {
      score_checked(request, out, ws);
    } catch (...) {
      return Status::from_current_exception();
    }
    return out.check_finite();
  }

  // What a request must satisfy (detail::check_request, explore/request.hpp): a model that
  // is not empty (moved from after the scorer was built), 1 to max_candidates() candidates
  // (default 100000), the model's item_dim and user_dim rows, 1 or N user columns, one
  // impression count per candidate when given, and finite embeddings. O(N * d), one pass;
  // no throw, no allocation.
  Status check_request(const Request& request) const noexcept {
    if (detail::is_empty_model(*model_))
      return Status::format(StatusCode::config, "AgeScorer: model: %s", detail::kEmptyModelMessage);
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

  // The request's random streams, so that a caller can reproduce a step on its own.
  Rng uncertainty_rng(std::uint64_t request_id) const noexcept { return Rng(seed_, request_id); }
  Rng perturbation_rng(std::uint64_t request_id) const noexcept {
    return Rng(detail::mix64(seed_ ^ 0x5045525455524221ULL), request_id);
  }

  // Whether only the open candidates are moved (default): the engine narrows the request
  // to them (select()), and the perturbation, the costly step, runs on k <= N candidates.
  // Off, every step runs on all N (closed candidates are computed and discarded). Set
  // before sharing the scorer.
  void set_gather_open(bool on) noexcept { gather_open_ = on; }
  bool gather_open() const noexcept { return gather_open_; }

  const Model& model() const noexcept { return *model_; }
  const Uncertainty& uncertainty() const noexcept { return uncertainty_; }
  const Perturbation& perturbation() const noexcept { return perturbation_; }
  const Gate& gate() const noexcept { return gate_; }
  std::uint64_t seed() const noexcept { return seed_; }

 private:
  void score_checked(const Request& request, ScoredRequest& out, Workspace& ws) const {
    Engine engine(*model_, ws.engine);
    const Index n = request.size();
    out.resize(n);

    // 1. y = f(h | theta), and 2. delta_y. A single-mask uncertainty (TS) draws its mask
    // first (the same draws), so that the engine computes its logits with the first pass.
    Rng uncertainty_stream = uncertainty_rng(request.id);
    if constexpr (SingleMaskUncertainty<Uncertainty, Engine>) {
      const auto& mask = uncertainty_.sample_first_pass_mask(engine, n, uncertainty_stream, ws.uncertainty);
      engine.begin(request, out.base, mask, out.delta);
      sigmoid_in_place(out.base);
      uncertainty_.delta_from_masked_logits(out.base, out.delta);
    } else {
      engine.begin(request, out.base);
      sigmoid_in_place(out.base);
      uncertainty_.compute(engine, out.base, uncertainty_stream, ws.uncertainty, out.delta);
    }
    // 3. sigma
    gate_.evaluate(*model_, request, out.base, ws.gate, std::span<std::uint8_t>(out.gate));
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
    if constexpr (MovingPolicy<Perturbation>) reserve_moves(perturbation_, engine, n, ws.perturbation);
    Rng perturbation_stream = perturbation_rng(request.id);
    if (k == n || (k > 0 && !gather_open_)) {
      auto explored = ws.explored.head(n);
      perturbation_.explore(engine, out.base, out.delta, perturbation_stream, ws.perturbation, explored);
      for (Index i : ws.open) out.explored[i] = explored[i];
    } else if (k > 0) {
      engine.select(std::span<const Index>(ws.open));
      auto base = ws.base.head(k);
      auto delta = ws.delta.head(k);
      auto explored = ws.explored.head(k);
      for (Index j = 0; j < k; ++j) {
        const Index i = ws.open[static_cast<std::size_t>(j)];
        base[j] = out.base[i];
        delta[j] = out.delta[i];
      }
      perturbation_.explore(engine, base, delta, perturbation_stream, ws.perturbation, explored);
      for (Index j = 0; j < k; ++j) out.explored[ws.open[static_cast<std::size_t>(j)]] = explored[j];
    }
    out.rank();
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
