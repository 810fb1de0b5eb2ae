// AnyExplorer: an Explorer chosen at run time. The exploration policies are templates
// (AgeScorer<...>, Greedy<Model>, GradientTs<Model>, ...) with a Workspace type of their
// own, which suits a service that fixes its policy when it is compiled. A service (or an
// experiment) that picks the policy by name from its configuration needs one type for all
// of them: AnyExplorer is that interface, and ExplorerBox<E> binds one policy E to one
// workspace of E behind it, so that the caller no longer names E::Workspace.
//
//   std::unique_ptr<AnyExplorer> policy;
//   if (name == "age-ts") policy = box(age_ts(model, dgu, settings));
//   else                  policy = box(Greedy<EmbeddingCtrModel>(model));
//   policy->score(Request{user, items, request_id}, out);   // one virtual call per request
//   policy->observe(request, shown, clicked);                // no-op unless E learns
//
// Scores are exactly those of the unboxed policy with a workspace of its own: the box
// calls E::score with its workspace and adds nothing. The cost is one virtual call per
// request, small next to scoring N candidates.
//
// Thread safety: one box is one thread's workspace. score() writes the box's workspace,
// so a box must not be used by two threads at once; give each thread its own box. The
// policies' score() is const, so the boxes of several threads may wrap copies of one
// policy over the same model (a copy of a library policy is cheap: the model is held by
// pointer and must outlive every box). observe() changes a LearningExplorer's state (e.g.
// Gradient-TS's accumulator): it must not run while any thread scores with that policy
// object, and boxes holding copies of a learning policy learn separately.
#pragma once

#include <memory>
#include <utility>

#include "age/core/status.hpp"
#include "age/core/types.hpp"
#include "age/explore/request.hpp"

namespace age {

class AnyExplorer {
 public:
  virtual ~AnyExplorer() = default;

  // The policy's score(request, out, ws) with the box's workspace; throws what it throws.
  virtual void score(const Request& request, ScoredRequest& out) = 0;
  // The non-throwing form (age::try_score): the error as a Status, or ok.
  virtual Status try_score(const Request& request, ScoredRequest& out) noexcept = 0;
  // Feedback of the shown candidate of `request`: forwarded to a LearningExplorer's
  // observe(), ignored by a policy that does not learn.
  virtual void observe(const Request& request, Index shown, bool clicked) = 0;
  // Whether observe() reaches the policy (it is a LearningExplorer).
  virtual bool learns() const noexcept = 0;
};

// One policy E and one E::Workspace, owned by the box. The workspace starts empty (it grows
// on the first requests) unless one is handed in, e.g. a workspace already sized by
// earlier requests of the same shape.
template <Explorer E>
class ExplorerBox final : public AnyExplorer {
 public:
  using Workspace = typename E::Workspace;

  explicit ExplorerBox(E explorer) : explorer_(std::move(explorer)) {}
  ExplorerBox(E explorer, Workspace workspace) : explorer_(std::move(explorer)), ws_(std::move(workspace)) {}

  void score(const Request& request, ScoredRequest& out) override { explorer_.score(request, out, ws_); }
  Status try_score(const Request& request, ScoredRequest& out) noexcept override {
    return age::try_score(explorer_, request, out, ws_);
  }
  void observe(const Request& request, Index shown, bool clicked) override {
    if constexpr (LearningExplorer<E>) explorer_.observe(request, shown, clicked);
  }
  bool learns() const noexcept override { return LearningExplorer<E>; }

  // The boxed policy (e.g. to read a learning policy's state or set its candidate limit
  // before the box is used) and its workspace.
  E& explorer() noexcept { return explorer_; }
  const E& explorer() const noexcept { return explorer_; }
  Workspace& workspace() noexcept { return ws_; }

 private:
  E explorer_;
  Workspace ws_;
};

// `explorer` boxed behind AnyExplorer, with a workspace of its own (or the one given).
template <Explorer E>
std::unique_ptr<AnyExplorer> box(E explorer) {
  return std::make_unique<ExplorerBox<E>>(std::move(explorer));
}
template <Explorer E>
std::unique_ptr<AnyExplorer> box(E explorer, typename E::Workspace workspace) {
  return std::make_unique<ExplorerBox<E>>(std::move(explorer), std::move(workspace));
}

}  // namespace age
