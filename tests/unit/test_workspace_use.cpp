// The debug-build check against a Workspace shared by two calls at once (documented as
// unsupported: two threads sharing one corrupt its buffers). Built here with the check on
// (AGE_CHECK_WORKSPACE_USE=1, what a build without NDEBUG gets) whatever the build type.
// Each misuse runs in a child process, which must stop with SIGABRT and the assertion's
// message; the same calls one after the other, or on separate workspaces, must not.
#define AGE_CHECK_WORKSPACE_USE 1

#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "age/age.hpp"

using namespace age;

namespace {

struct ChildResult {
  bool aborted = false;
  int exit_code = -1;
  std::string stderr_text;
};

// Runs fn in a child process, its stderr captured.
ChildResult run_in_child(const std::function<void()>& fn) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child dies of the abort: not through Catch's handler, and without its reports.
    std::signal(SIGABRT, SIG_DFL);
    ::close(fds[0]);
    ::dup2(fds[1], STDERR_FILENO);
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, STDOUT_FILENO);
    try {
      fn();
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  ChildResult r;
  char buf[512];
  ::ssize_t n = 0;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) r.stderr_text.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  r.aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

void require_abort(const std::function<void()>& fn, const std::string& who) {
  const ChildResult r = run_in_child(fn);
  INFO("child stderr: " << r.stderr_text);
  CHECK(r.aborted);
  CHECK_THAT(r.stderr_text, Catch::Contains("age: assertion failed: " + who) &&
                                Catch::Contains("Workspace is already in use by another call") &&
                                Catch::Contains("give each thread its own Workspace"));
}

// A CtrModel around a Tower whose logits pass calls back into the caller: a call that
// re-enters the scorer while it is scoring, as a second thread would overlap it.
struct CallbackModel {
  using Workspace = TowerWorkspace;
  using Mask = DropoutMask;
  const Tower* tower;
  std::function<void()>* during_logits;

  std::size_t user_dim() const noexcept { return tower->user_dim(); }
  std::size_t item_dim() const noexcept { return tower->item_dim(); }
  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    if (*during_logits) {
      auto f = std::move(*during_logits);
      *during_logits = nullptr;
      f();
    }
    tower->logits(user, items, mask, ws, out);
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    tower->probability_gradient(user, items, mask, ws, prob, d_items, d_user);
  }
  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const { tower->sample_mask(p, columns, rng, mask); }
};

struct World {
  Tower tower{3, 5, {8, 4}};
  Matrix user = Matrix::Random(3, 1), items = Matrix::Random(5, 6);
  World() {
    Rng rng(5);
    tower.initialize(rng);
  }
};

}  // namespace

TEST_CASE("a scorer's Workspace used by a second call while the first runs: assertion (debug builds)",
          "[workspace-use]") {
  World w;
  std::function<void()> hook;
  const CallbackModel model{&w.tower, &hook};
  using Scorer = AgeScorer<CallbackModel, McDropoutTs, Pgd, AlwaysOpen>;
  const Scorer scorer(model, AlwaysOpen{}, McDropoutTs{0.1}, Pgd{.lambda = 0.1});
  const Request request{w.user, w.items, 1};
  Scorer::Workspace ws, other_ws;
  ScoredRequest out, inner_out;

  SECTION("one after the other, and nested on separate workspaces: no assertion") {
    const ChildResult r = run_in_child([&] {
      scorer.score(request, out, ws);
      scorer.score(request, out, ws);
      hook = [&] { scorer.score(request, inner_out, other_ws); };
      scorer.score(request, out, ws);
      if (!scorer.try_score(request, out, ws).ok()) ::_exit(4);
    });
    INFO("child stderr: " << r.stderr_text);
    CHECK_FALSE(r.aborted);
    CHECK(r.exit_code == 0);
  }
  SECTION("score() re-entered on the same workspace") {
    require_abort(
        [&] {
          hook = [&] { scorer.score(request, inner_out, ws); };
          scorer.score(request, out, ws);
        },
        "AgeScorer::score");
  }
  SECTION("try_score() (noexcept) entered while score() runs on the workspace") {
    require_abort(
        [&] {
          hook = [&] { (void)scorer.try_score(request, inner_out, ws); };
          scorer.score(request, out, ws);
        },
        "AgeScorer::try_score");
  }
  SECTION("a copy of a workspace in use is a fresh one") {
    const ChildResult r = run_in_child([&] {
      hook = [&] {
        Scorer::Workspace copy = ws;  // copied while the outer call holds ws
        scorer.score(request, inner_out, copy);
      };
      scorer.score(request, out, ws);
    });
    CHECK_FALSE(r.aborted);
    CHECK(r.exit_code == 0);
  }
}

TEST_CASE("the tower's passes, the model's predict and the baselines check their workspace too",
          "[workspace-use]") {
  World w;
  TowerWorkspace tws;
  RowVector out(6);
  // The tower workspace marked in use (as by another thread's pass): the next pass stops.
  require_abort(
      [&] {
        const detail::WorkspaceUse other(tws.in_use, "test");
        w.tower.logits(w.user, w.items, nullptr, tws, out);
      },
      "Tower::logits");
  require_abort(
      [&] {
        const detail::WorkspaceUse other(tws.in_use, "test");
        w.tower.begin_request(w.user, w.items, tws, out);
      },
      "Tower::begin_request");
  require_abort(
      [&] {
        const detail::WorkspaceUse other(tws.in_use, "test");
        ScoredRequest scored;
        Greedy<Tower>(w.tower).score(Request{w.user, w.items, 1}, scored, tws);
      },
      "Tower::");
  require_abort(
      [&] {
        GradientWorkspace gws;
        const detail::WorkspaceUse other(gws.in_use, "test");
        ScoredRequest scored;
        GradientUcb<Tower>(w.tower).score(Request{w.user, w.items, 1}, scored, gws);
      },
      "GradientUcb::score");
  require_abort(
      [&] {
        const std::vector<Tower> members(2, w.tower);
        EnsembleUcb<Tower>::Workspace ews;
        const detail::WorkspaceUse other(ews.in_use, "test");
        ScoredRequest scored;
        EnsembleUcb<Tower>(std::span<const Tower>(members)).score(Request{w.user, w.items, 1}, scored, ews);
      },
      "EnsembleUcb::score");
  require_abort(
      [&] {
        EmbeddingCtrModel model(FeatureLayout().add_categorical("u", Side::User, 4, 2).add_categorical("i", Side::Item, 4, 2),
                                {4});
        ModelWorkspace mws;
        const detail::WorkspaceUse other(mws.in_use, "test");
        RowVector prob(1);
        model.predict(SideInput{FieldInput{{1}, {}}}, std::vector<SideInput>{SideInput{FieldInput{{2}, {}}}}, mws, prob);
      },
      "EmbeddingCtrModel::predict");
  // Released at the end of each call: the same workspace serves the next one.
  const ChildResult r = run_in_child([&] {
    for (int i = 0; i < 3; ++i) w.tower.logits(w.user, w.items, nullptr, tws, out);
    ScoredRequest scored;
    Greedy<Tower>(w.tower).score(Request{w.user, w.items, 1}, scored, tws);
  });
  CHECK_FALSE(r.aborted);
  CHECK(r.exit_code == 0);
  STATIC_REQUIRE(AGE_CHECK_WORKSPACE_USE == 1);
}
