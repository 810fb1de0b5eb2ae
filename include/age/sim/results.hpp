// Summaries of evaluated runs: per policy, the mean and sample standard deviation over its
// runs (seeds) of what the replay evaluator and the online runner report (clicks, expected
// clicks, regret, accepted events, CTR). Plain statistics of age::sim::RunResult, with no
// study format attached: the study's tables and CSV files are examples/replay/report.hpp.
#pragma once

#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "age/sim/replay.hpp"

namespace age::sim {

struct MeanStd {
  double mean = 0, std = 0;  // std: sample standard deviation (n - 1); 0 for one run
  std::size_t n = 0;
};

inline MeanStd mean_std(const std::vector<double>& x) {
  MeanStd m;
  m.n = x.size();
  if (x.empty()) return m;
  for (double v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  if (x.size() > 1) {
    double ss = 0;
    for (double v : x) ss += (v - m.mean) * (v - m.mean);
    m.std = std::sqrt(ss / static_cast<double>(x.size() - 1));
  }
  return m;
}

struct PolicySummary {
  std::string policy;
  MeanStd clicks, expected_clicks, regret, events, ctr;
  bool online = false;
};

// Summaries in the order the policies first appear in `runs`.
inline std::vector<PolicySummary> summarize(const std::vector<RunResult>& runs) {
  std::vector<PolicySummary> out;
  std::map<std::string, std::size_t> index;
  std::vector<std::vector<const RunResult*>> groups;
  for (const RunResult& r : runs) {
    auto [it, inserted] = index.try_emplace(r.policy, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(&r);
  }
  for (const auto& g : groups) {
    PolicySummary s;
    s.policy = g.front()->policy;
    s.online = g.front()->online;
    std::vector<double> c, e, rg, ev, ctr;
    for (const RunResult* r : g) {
      c.push_back(r->clicks);
      e.push_back(r->expected_clicks);
      rg.push_back(r->regret);
      ev.push_back(static_cast<double>(r->events));
      ctr.push_back(r->ctr());
    }
    s.clicks = mean_std(c);
    s.expected_clicks = mean_std(e);
    s.regret = mean_std(rg);
    s.events = mean_std(ev);
    s.ctr = mean_std(ctr);
    out.push_back(s);
  }
  return out;
}

}  // namespace age::sim
