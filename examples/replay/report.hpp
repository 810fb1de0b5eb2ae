// The study's result tables and files: Markdown summaries with the change against a
// reference policy (the layout of Table 1 of AGE-METHOD.md), results.csv (one row per
// policy and seed) and curves.csv (cumulative clicks over visits).
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/sim/replay.hpp"
#include "age/sim/results.hpp"

namespace study {

using namespace age;
using namespace age::sim;

inline std::string format_fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// "+12.3%" relative change of `value` against `reference`.
inline std::string percent_change(double value, double reference) {
  if (!(reference != 0) || !std::isfinite(value) || !std::isfinite(reference)) return "n/a";
  const double pct = 100.0 * (value - reference) / reference;
  return (pct >= 0 ? "+" : "") + format_fixed(pct, 1) + "%";
}

// A Markdown table: policy | clicks (mean +- std) | change vs `reference` | more columns.
inline std::string summary_table(const std::vector<PolicySummary>& rows, const std::string& reference,
                                 const std::map<std::string, std::string>& labels = {}) {
  const PolicySummary* ref = nullptr;
  for (const auto& r : rows)
    if (r.policy == reference) ref = &r;
  const bool online = !rows.empty() && rows.front().online;
  std::ostringstream t;
  t << "| policy | clicks (mean +- std) | change vs " << reference;
  if (online)
    t << " | expected clicks | change (expected) | regret |\n|---|---|---|---|---|---|\n";
  else
    t << " | accepted events | CTR |\n|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    const auto label = labels.find(r.policy);
    t << "| " << (label == labels.end() ? r.policy : label->second) << " | " << format_fixed(r.clicks.mean, 1)
      << " +- " << format_fixed(r.clicks.std, 1) << " | "
      << (ref ? (&r == ref ? std::string("-") : percent_change(r.clicks.mean, ref->clicks.mean)) : "n/a") << " | ";
    if (online) {
      t << format_fixed(r.expected_clicks.mean, 1) << " +- " << format_fixed(r.expected_clicks.std, 1) << " | "
        << (ref ? (&r == ref ? std::string("-") : percent_change(r.expected_clicks.mean, ref->expected_clicks.mean))
                : "n/a")
        << " | " << format_fixed(r.regret.mean, 1) << " |\n";
    } else {
      t << format_fixed(r.events.mean, 1) << " +- " << format_fixed(r.events.std, 1) << " | "
        << format_fixed(100.0 * r.ctr.mean, 3) << "% |\n";
    }
  }
  return t.str();
}

inline std::ofstream open_output(const std::string& path) {
  std::ofstream f(path);
  if (!f) throw IoError("cannot open '" + path + "' for writing");
  f.precision(10);
  return f;
}

// results.csv: policy,seed,visits,events,clicks,expected_clicks (empty in replay mode).
inline void write_results_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ofstream f = open_output(path);
  f << "policy,seed,visits,events,clicks,expected_clicks\n";
  for (const RunResult& r : runs) {
    f << r.policy << ',' << r.seed << ',' << r.visits << ',' << r.events << ',' << r.clicks << ',';
    if (r.online) f << r.expected_clicks;
    f << '\n';
  }
  if (!f) throw IoError("writing '" + path + "' failed");
}

// curves.csv: policy,seed,visits,clicks,expected_clicks (cumulative; expected empty in replay).
inline void write_curves_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ofstream f = open_output(path);
  f << "policy,seed,visits,clicks,expected_clicks\n";
  for (const RunResult& r : runs)
    for (const CurvePoint& p : r.curve) {
      f << r.policy << ',' << r.seed << ',' << p.visits << ',' << p.clicks << ',';
      if (r.online) f << p.expected_clicks;
      f << '\n';
    }
  if (!f) throw IoError("writing '" + path + "' failed");
}

}  // namespace study
