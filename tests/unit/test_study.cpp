// The offline study's statistics and learner (examples/replay/): the paired comparison of
// two policies' runs and its table, checked against values computed by hand on a fixed
// table of runs; the impressions the study's agent passes into every request; the warm
// start trained to convergence. Built with the study's report.cpp, study.cpp, options.cpp.
#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "age/sim/environment.hpp"
#include "age/sim/replay.hpp"

#include "../../examples/replay/model_agent.hpp"
#include "../../examples/replay/policies.hpp"
#include "../../examples/replay/report.hpp"
#include "../../examples/replay/study.hpp"

using namespace study;

namespace {

RunResult run(const std::string& policy, std::uint64_t seed, double clicks) {
  RunResult r;
  r.policy = policy;
  r.seed = seed;
  r.clicks = clicks;
  r.events = 1000;
  return r;
}

}  // namespace

TEST_CASE("The study's paired comparison on a table computed by hand", "[study]") {
  // Seeds 1..5: treatment {10, 12, 9, 14, 11}, control {9, 10, 9, 11, 10}; seed 6 only for
  // the treatment (unpaired, left out). Differences {1, 2, 0, 3, 1}: mean 1.4, sd
  // 1.1401754, t_{0.975, 4} 2.7764451, interval [-0.0157148, 2.8157148]; in percent of the
  // control's mean 9.8: +14.3% [-0.2, +28.7].
  std::vector<RunResult> runs;
  const std::vector<double> t{10, 12, 9, 14, 11}, c{9, 10, 9, 11, 10};
  for (std::uint64_t s = 0; s < 5; ++s) {
    runs.push_back(run("age-ts", s + 1, t[s]));
    runs.push_back(run("vanilla", s + 1, c[s]));
  }
  runs.push_back(run("age-ts", 6, 100));
  const Comparison cmp = compare_runs(runs, "age-ts", "vanilla", false);
  CHECK(cmp.diff.n == 5);
  CHECK(cmp.diff.mean == Approx(1.4));
  CHECK(cmp.diff.low == Approx(-0.0157148).margin(1e-6));
  CHECK(cmp.diff.high == Approx(2.8157148).margin(1e-6));
  CHECK(change_text(cmp) == "+14.3% [-0.2, +28.7]");
  CHECK(gains_text(cmp) == "4/5");
  CHECK(finding_text(cmp) == "no");

  const std::string table = comparison_table(runs, {"vanilla", "age-ts"}, "vanilla", {{"vanilla", "DNN-vanilla"}});
  CHECK_THAT(table, Catch::Contains("| DNN-vanilla | 9.8 +- 0.8 | 1000 | - | - | - |"));
  CHECK_THAT(table, Catch::Contains("| age-ts | 26.0 +- 36.3 | 1000 | +14.3% [-0.2, +28.7] | 4/5 | no |"));

  // A clear loss on every seed is a finding.
  std::vector<RunResult> worse = runs;
  for (std::uint64_t s = 0; s < 5; ++s) worse.push_back(run("random", s + 1, c[s] - 3.0 - 0.1 * s));
  CHECK(finding_text(compare_runs(worse, "random", "vanilla", false)) == "**loss**");
  // One seed only: no interval.
  std::vector<RunResult> single{run("a", 1, 5), run("b", 1, 4)};
  CHECK(change_text(compare_runs(single, "a", "b", false)) == "n/a");
}

TEST_CASE("The study's agent passes each candidate's impressions into its requests", "[study]") {
  LearningSettings ls;
  ls.hidden = {16, 8};
  ls.warm_epochs = 1;
  ModelAgent agent(ls, 1, true, 3, find_policy("age-ts").make, Knobs{{"lambda", 10}, {"pgd_steps", 3}}, 5);
  const std::vector<std::uint32_t> user{1, 4, 9};
  std::vector<Impression> warm;
  for (int i = 0; i < 30; ++i) warm.push_back(Impression{user, 552001, i % 3 == 0});
  for (int i = 0; i < 7; ++i) warm.push_back(Impression{user, 552002, false});
  agent.warm_start(warm);
  const std::vector<std::uint64_t> candidates{552002, 552001, 552009};
  const Context ctx{100, user, candidates};
  agent.choose(ctx);
  const Request r = agent.last_request(100);
  REQUIRE(r.impressions.size() == 3);
  CHECK(r.impressions[0] == 7);
  CHECK(r.impressions[1] == 30);
  CHECK(r.impressions[2] == 0);
  agent.learn(ctx, 2, true);  // an accepted event counts as an impression
  agent.choose(ctx);
  const Request again = agent.last_request(101);
  CHECK(again.impressions[2] == 1);
  CHECK(agent.impressions(552009) == 1);
}

TEST_CASE("The warm start is trained until the held-out loss stops falling", "[study]") {
  StudySetup setup;
  setup.learning.hidden = {16, 8};
  setup.online = false;
  Environment env(7, 20000);
  std::vector<Impression> warm;
  EnvironmentLog log(env, 8000);
  R6bEvent e;
  while (log.next(e)) warm.push_back(Impression{e.user, e.displayed, e.click});
  std::vector<double> losses;
  const std::size_t epochs = converged_epochs(setup, 7, warm, &losses);
  REQUIRE(losses.size() >= 2);
  CHECK(epochs >= 1);
  CHECK(epochs <= 10);
  CHECK(losses[1] < losses[0]);  // the first epoch learns something
  // It stopped where the loss no longer fell by 0.1%, and kept the epochs before.
  const std::size_t last = losses.size() - 1;
  if (last < 10) CHECK_FALSE(losses[last] < losses[last - 1] * (1.0 - 1e-3));
  CHECK(epochs == std::max<std::size_t>(1, last < 10 ? last - 1 : last));
}
