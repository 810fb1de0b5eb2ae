// The two ways to evaluate a policy (an age::sim::Agent, age/sim/agent.hpp) offline:
//
// Replay (Li, Chu, Langford, Wang, WSDM 2011): a log whose displayed article was chosen
// uniformly at random is read in time order. The first `warmup` lines (80,000) warm-start
// the agent. On every later line the agent scores the logged candidates; when its pick is
// the displayed article the event is ACCEPTED ((M23), METHOD.md "Offline replay
// protocol"): its click counts and it joins the agent's training stream; otherwise the
// line is skipped. Reported: clicks, accepted events, CTR.
// Works on any event source with `bool next(R6bEvent&)`, e.g. R6bReader on a real R6B file
// or on a log the synthetic environment wrote.
//
// Online (synthetic environment only): the first W = 20,000 visits are served uniformly at
// random and warm-start the agent (the same data for every policy); from visit W on the
// agent picks one candidate per visit, the click is drawn from the true probability with
// the visit's own uniform draw (common random numbers), and the event trains the agent.
// Reported: clicks, expected clicks (sum of the true p of the picked articles) and regret
// (sum of max_a p - p of the pick).
#pragma once

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/sim/agent.hpp"
#include "age/sim/environment.hpp"
#include "age/sim/r6b.hpp"

namespace age::sim {

// A point of the cumulative-clicks curve, after `visits` evaluated visits (log lines).
struct CurvePoint {
  std::uint64_t visits = 0;
  double clicks = 0;
  double expected_clicks = 0;  // online only
};

struct RunResult {
  std::string policy;
  std::uint64_t seed = 0;
  bool online = false;
  std::uint64_t visits = 0;   // evaluated visits (online) or log lines after the warm start
  std::uint64_t events = 0;   // served visits (online) or accepted events (replay)
  double clicks = 0;
  double expected_clicks = std::numeric_limits<double>::quiet_NaN();  // online only
  double regret = std::numeric_limits<double>::quiet_NaN();           // online only
  std::uint64_t warmup = 0;   // warm-start impressions
  std::vector<CurvePoint> curve;

  double ctr() const noexcept { return events ? clicks / static_cast<double>(events) : 0.0; }
};

template <class S>
concept EventSource = requires(S& s, R6bEvent& e) {
  { s.next(e) } -> std::convertible_to<bool>;
};

// An in-memory event source (tests, small logs).
class EventList {
 public:
  explicit EventList(std::span<const R6bEvent> events) : events_(events) {}
  bool next(R6bEvent& e) {
    if (pos_ >= events_.size()) return false;
    e = events_[pos_++];
    return true;
  }

 private:
  std::span<const R6bEvent> events_;
  std::size_t pos_ = 0;
};

struct ReplayOptions {
  std::uint64_t warmup = 80000;         // lines that warm-start the agent
  std::uint64_t curve_every = 10000;    // lines between two curve points
  std::atomic<std::uint64_t>* progress = nullptr;  // advanced by the lines read
};

template <EventSource Source>
RunResult run_replay(Source& source, Agent& agent, const ReplayOptions& options = {}) {
  if (options.curve_every == 0) throw ConfigError("ReplayOptions.curve_every: expected >= 1, got 0");
  RunResult r;
  r.online = false;
  R6bEvent e;
  std::vector<Impression> warm;
  std::uint64_t line = 0, pending = 0;
  auto tick = [&] {
    if (options.progress && ++pending == 256) {
      options.progress->fetch_add(pending, std::memory_order_relaxed);
      pending = 0;
    }
  };
  bool warmed = options.warmup == 0;
  while (source.next(e)) {
    const std::uint64_t index = line++;
    tick();
    if (index < options.warmup) {
      warm.push_back(Impression{e.user, e.displayed, e.click});
      continue;
    }
    if (!warmed) {
      agent.warm_start(warm);
      r.warmup = warm.size();
      warm = {};
      warmed = true;
    }
    const Context ctx{index, e.user, e.candidates};
    const std::size_t pick = agent.choose(ctx);
    ++r.visits;
    if (e.candidates.at(pick) == e.displayed) {
      ++r.events;
      r.clicks += e.click ? 1.0 : 0.0;
      agent.learn(ctx, pick, e.click);
    }
    if (r.visits % options.curve_every == 0) r.curve.push_back({r.visits, r.clicks, 0.0});
  }
  if (!warmed) {  // a log shorter than the warm-up: train on what there is
    agent.warm_start(warm);
    r.warmup = warm.size();
  }
  if (r.curve.empty() || r.curve.back().visits != r.visits) r.curve.push_back({r.visits, r.clicks, 0.0});
  if (options.progress) options.progress->fetch_add(pending, std::memory_order_relaxed);
  return r;
}

struct OnlineOptions {
  std::uint64_t warmup = 20000;        // W: uniformly served visits
  std::uint64_t curve_every = 2000;    // visits between two curve points
  std::atomic<std::uint64_t>* progress = nullptr;  // advanced by the visits run
};

// The warm-start impressions of the online mode: visits 0..W-1 served uniformly at random
// (the visit's logging draw), with their clicks. The same for every policy of a seed.
inline std::vector<Impression> online_warm_start(const Environment& env, std::uint64_t warmup) {
  std::vector<Impression> out;
  const std::uint64_t n = std::min(warmup, env.visits());
  out.reserve(n);
  Visit v;
  for (std::uint64_t i = 0; i < n; ++i) {
    env.visit(i, v);
    out.push_back(Impression{v.features, v.candidate_ids[v.logged], v.clicked(v.logged)});
  }
  return out;
}

// Runs the agent online on visits W..V-1 after warm-starting it on `warm` (from
// online_warm_start(env, W)).
inline RunResult run_online(const Environment& env, std::span<const Impression> warm, Agent& agent,
                            const OnlineOptions& options = {}) {
  if (options.curve_every == 0) throw ConfigError("OnlineOptions.curve_every: expected >= 1, got 0");
  RunResult r;
  r.online = true;
  r.expected_clicks = 0;
  r.regret = 0;
  r.warmup = warm.size();
  agent.warm_start(warm);
  Visit visit;
  std::uint64_t pending = 0;
  for (std::uint64_t v = std::min(options.warmup, env.visits()); v < env.visits(); ++v) {
    env.visit(v, visit);
    const Context ctx{v, visit.features, visit.candidate_ids};
    const std::size_t pick = agent.choose(ctx);
    const bool click = visit.clicked(pick);
    ++r.visits;
    ++r.events;
    r.clicks += click ? 1.0 : 0.0;
    r.expected_clicks += visit.click_prob[pick];
    r.regret += visit.best_prob() - visit.click_prob[pick];
    agent.learn(ctx, pick, click);
    if (r.visits % options.curve_every == 0) r.curve.push_back({r.visits, r.clicks, r.expected_clicks});
    if (options.progress && ++pending == 256) {
      options.progress->fetch_add(pending, std::memory_order_relaxed);
      pending = 0;
    }
  }
  if (r.curve.empty() || r.curve.back().visits != r.visits) r.curve.push_back({r.visits, r.clicks, r.expected_clicks});
  if (options.progress) options.progress->fetch_add(pending, std::memory_order_relaxed);
  return r;
}

}  // namespace age::sim
