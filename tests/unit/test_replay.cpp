// The replay evaluator (Li et al. 2011) and the online runner: exact accept/skip and click
// counting on a hand-made log, the always-displayed policy accepting everything, the
// random policy's acceptance rate near 1/K, the online runner's accounting, and the study
// model's fast MC-Dropout pass against the tower.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "age/core/rng.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/sim/agent.hpp"
#include "age/sim/environment.hpp"
#include "age/sim/r6b.hpp"
#include "age/sim/replay.hpp"
// The study's agent and policy registry (study code, outside the installed headers).
#include "../../examples/replay/model_agent.hpp"
#include "../../examples/replay/policies.hpp"

using namespace age;
using namespace age::sim;
using namespace study;

namespace {

R6bEvent event(std::int64_t t, std::uint64_t shown, bool click, std::vector<std::uint64_t> candidates) {
  R6bEvent e;
  e.timestamp = t;
  e.displayed = shown;
  e.click = click;
  e.user = {1, static_cast<std::uint32_t>(2 + t % 100)};
  e.candidates = std::move(candidates);
  return e;
}

// Picks by a fixed rule and records what it was told.
class RuleAgent : public Agent {
 public:
  enum class Rule { smallest_id, first, random };
  explicit RuleAgent(Rule rule, std::uint64_t seed = 0) : rule_(rule), seed_(seed) {}

  void warm_start(std::span<const Impression> data) override { warm = data.size(); }
  std::size_t choose(const Context& ctx) override {
    ++chosen;
    if (rule_ == Rule::first) return 0;
    if (rule_ == Rule::random) return static_cast<std::size_t>(Rng(seed_, ctx.id).below(ctx.candidates.size()));
    std::size_t best = 0;
    for (std::size_t i = 1; i < ctx.candidates.size(); ++i)
      if (ctx.candidates[i] < ctx.candidates[best]) best = i;
    return best;
  }
  void learn(const Context& ctx, std::size_t shown, bool clicked) override {
    learned.push_back({ctx.id, ctx.candidates[shown], clicked});
  }

  struct Fed {
    std::uint64_t id, article;
    bool click;
    bool operator==(const Fed&) const = default;
  };
  std::size_t warm = 0, chosen = 0;
  std::vector<Fed> learned;

 private:
  Rule rule_;
  std::uint64_t seed_;
};

// Always shows the logged article (it peeks at the log: the upper bound of acceptance).
class DisplayedAgent : public Agent {
 public:
  explicit DisplayedAgent(const std::vector<R6bEvent>& log) : log_(log) {}
  void warm_start(std::span<const Impression>) override {}
  std::size_t choose(const Context& ctx) override {
    return static_cast<std::size_t>(log_.at(ctx.id).displayed_index());
  }
  void learn(const Context&, std::size_t, bool) override { ++learned; }
  std::size_t learned = 0;

 private:
  const std::vector<R6bEvent>& log_;
};

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::path(AGE_TEST_BINARY_DIR) / "replay_tmp";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

}  // namespace

TEST_CASE("Replay accepts exactly the events whose pick is the displayed article", "[replay]") {
  // The rule picks the smallest id. Lines 0-1 are the warm start.
  const std::vector<R6bEvent> log{
      event(0, 5, true, {5, 6}),        // warm
      event(1, 6, false, {5, 6}),       // warm
      event(2, 3, true, {7, 3, 9}),     // pick 3 = shown: accepted, click
      event(3, 9, true, {7, 3, 9}),     // pick 3 != 9: skipped (its click does not count)
      event(4, 2, false, {2, 8}),       // accepted, no click
      event(5, 4, true, {4}),           // accepted, click
      event(6, 8, true, {2, 8}),        // skipped
      event(7, 1, true, {10, 1, 12}),   // accepted, click
  };
  EventList source(log);
  RuleAgent agent(RuleAgent::Rule::smallest_id);
  ReplayOptions opt;
  opt.warmup = 2;
  opt.curve_every = 3;
  const RunResult r = run_replay(source, agent, opt);
  CHECK(agent.warm == 2);
  CHECK(r.warmup == 2);
  CHECK(agent.chosen == 6);
  CHECK(r.visits == 6);
  CHECK(r.events == 4);
  CHECK(r.clicks == 3);
  CHECK(r.ctr() == Approx(0.75));
  CHECK_FALSE(r.online);
  CHECK(std::isnan(r.expected_clicks));
  const std::vector<RuleAgent::Fed> fed{{2, 3, true}, {4, 2, false}, {5, 4, true}, {7, 1, true}};
  CHECK(agent.learned == fed);
  // Curve after 3 and 6 replayed lines: clicks 1 (line 2) and 3.
  REQUIRE(r.curve.size() == 2);
  CHECK(r.curve[0].visits == 3);
  CHECK(r.curve[0].clicks == 1);
  CHECK(r.curve[1].visits == 6);
  CHECK(r.curve[1].clicks == 3);
}

TEST_CASE("Replay from an R6B file equals replay from memory, short logs only warm up", "[replay]") {
  Environment env(2, 4000);
  const std::string path = temp_path("log.txt.gz");
  env.write_log(path);
  std::vector<R6bEvent> log;
  {
    R6bReader reader(path);
    R6bEvent e;
    while (reader.next(e)) log.push_back(e);
  }
  REQUIRE(log.size() == 4000);
  ReplayOptions opt;
  opt.warmup = 1000;
  RuleAgent a(RuleAgent::Rule::smallest_id), b(RuleAgent::Rule::smallest_id);
  R6bReader reader(path);
  EventList list(log);
  const RunResult from_file = run_replay(reader, a, opt);
  const RunResult from_memory = run_replay(list, b, opt);
  CHECK(from_file.visits == 3000);
  CHECK(from_file.events == from_memory.events);
  CHECK(from_file.clicks == from_memory.clicks);
  CHECK(a.learned == b.learned);

  EventList shorter(std::span<const R6bEvent>(log).first(10));
  RuleAgent c(RuleAgent::Rule::first);
  const RunResult r = run_replay(shorter, c, opt);
  CHECK(c.warm == 10);
  CHECK(r.visits == 0);
  CHECK(r.events == 0);
}

TEST_CASE("A policy that always picks the displayed article accepts every event", "[replay]") {
  Environment env(8, 5000);
  std::vector<R6bEvent> log(5000);
  Visit v;
  double clicks = 0;
  for (std::uint64_t i = 0; i < log.size(); ++i) {
    env.visit(i, v);
    Environment::to_event(v, log[i]);
    if (i >= 500) clicks += log[i].click;
  }
  EventList source(log);
  DisplayedAgent agent(log);
  ReplayOptions opt;
  opt.warmup = 500;
  const RunResult r = run_replay(source, agent, opt);
  CHECK(r.visits == 4500);
  CHECK(r.events == 4500);
  CHECK(agent.learned == 4500);
  CHECK(r.clicks == clicks);
}

TEST_CASE("The random policy accepts about 1/K of the events", "[replay]") {
  // K = 20 candidates per line, 40,000 replayed lines: 2,000 acceptances expected, binomial
  // standard deviation sqrt(40000 * 0.05 * 0.95) = 43.6; tolerance 4.5 standard deviations.
  const std::size_t K = 20, n = 40000;
  std::vector<R6bEvent> log(n);
  Rng rng(3);
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<std::uint64_t> c(K);
    for (std::size_t k = 0; k < K; ++k) c[k] = 552000 + (i + k * 31) % 652;
    log[i] = event(static_cast<std::int64_t>(i), c[rng.below(K)], rng.bernoulli(0.05), c);
  }
  EventList source(log);
  RuleAgent agent(RuleAgent::Rule::random, 99);
  ReplayOptions opt;
  opt.warmup = 0;
  const RunResult r = run_replay(source, agent, opt);
  const double expected = static_cast<double>(n) / K, sd = std::sqrt(n * (1.0 / K) * (1 - 1.0 / K));
  INFO("accepted " << r.events);
  CHECK(std::abs(static_cast<double>(r.events) - expected) < 4.5 * sd);
  CHECK(r.visits == n);
}

TEST_CASE("The online runner counts clicks, expected clicks and regret", "[replay]") {
  Environment env(6, 6000);
  const auto warm = online_warm_start(env, 600);
  REQUIRE(warm.size() == 600);
  // The warm start is the logging policy's uniform picks with their clicks.
  Visit v;
  env.visit(17, v);
  CHECK(warm[17].article == v.candidate_ids[v.logged]);
  CHECK(warm[17].click == v.clicked(v.logged));

  OnlineOptions opt;
  opt.warmup = 600;
  RuleAgent first(RuleAgent::Rule::first);
  const RunResult r = run_online(env, warm, first, opt);
  double clicks = 0, expected = 0, regret = 0;
  for (std::uint64_t i = 600; i < 6000; ++i) {
    env.visit(i, v);
    clicks += v.clicked(0);
    expected += v.click_prob[0];
    regret += v.best_prob() - v.click_prob[0];
  }
  CHECK(first.warm == 600);
  CHECK(r.online);
  CHECK(r.visits == 5400);
  CHECK(r.events == 5400);
  CHECK(r.clicks == clicks);
  CHECK(r.expected_clicks == Approx(expected).epsilon(1e-12));
  CHECK(r.regret == Approx(regret).epsilon(1e-12));
  CHECK(first.learned.size() == 5400);
  CHECK(r.curve.back().visits == 5400);
  CHECK(r.curve.back().clicks == clicks);
}

TEST_CASE("Study agents start from the same warm model and run end to end", "[replay]") {
  Environment env(12, 3000);
  const auto warm = online_warm_start(env, 300);
  LearningSettings ls;
  const PolicySpec vanilla = find_policy("vanilla"), age_ts = find_policy("age-ts");
  ModelAgent a(ls, 1, false, 12, vanilla.make, vanilla.defaults, 1);
  ModelAgent b(ls, 1, true, 12, age_ts.make, age_ts.defaults, 2);
  a.warm_start(warm);
  b.warm_start(warm);
  // Same seed, same data: the main models are equal bit for bit (the DGU does not touch them).
  CHECK(a.model().tower().weight(1) == b.model().tower().weight(1));
  CHECK(a.model().tables().table(1) == b.model().tables().table(1));
  OnlineOptions opt;
  opt.warmup = 300;
  ModelAgent c(ls, 1, true, 12, age_ts.make, age_ts.defaults, 2);
  const RunResult r = run_online(env, warm, c, opt);
  CHECK(r.visits == 2700);
  CHECK(r.clicks > 0);
  CHECK(c.training_steps() > 0);
  CHECK_THROWS_WITH(find_policy("age-tx"), Catch::Contains("vanilla, random, egreedy"));
}

