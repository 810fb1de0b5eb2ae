// The study's report: its tables, CSV files, summary.md and the plot call.
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "age/core/error.hpp"
#include "age/sim/statistics.hpp"
#include "policies.hpp"

#ifndef AGE_EXAMPLES_DIR
#define AGE_EXAMPLES_DIR "examples"
#endif
#ifndef AGE_PYTHON
#define AGE_PYTHON "/usr/bin/python3"
#endif

namespace study {

namespace fs = std::filesystem;

std::string format_fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

namespace {

std::string signed_fixed(double v, int decimals) { return (v >= 0 ? "+" : "") + format_fixed(v, decimals); }

// The runs of one policy by seed.
std::map<std::uint64_t, const RunResult*> by_seed(const std::vector<RunResult>& runs, const std::string& policy) {
  std::map<std::uint64_t, const RunResult*> m;
  for (const RunResult& r : runs)
    if (r.policy == policy) m[r.seed] = &r;
  return m;
}

double score_of(const RunResult& r, bool expected_clicks) { return expected_clicks ? r.expected_clicks : r.clicks; }

}  // namespace

Comparison compare_runs(const std::vector<RunResult>& runs, const std::string& treatment, const std::string& control,
                        bool expected_clicks) {
  Comparison c{treatment, control, {}};
  const auto t = by_seed(runs, treatment), k = by_seed(runs, control);
  std::vector<double> a, b;
  for (const auto& [seed, run] : t)
    if (const auto it = k.find(seed); it != k.end()) {
      a.push_back(score_of(*run, expected_clicks));
      b.push_back(score_of(*it->second, expected_clicks));
    }
  if (a.size() >= 2) c.diff = age::sim::paired_difference(a, b);
  return c;
}

std::string change_text(const Comparison& c) {
  if (c.diff.n < 2 || !(c.diff.control_mean != 0)) return "n/a";
  return signed_fixed(c.diff.percent(), 1) + "% [" + signed_fixed(c.diff.percent_low(), 1) + ", " +
         signed_fixed(c.diff.percent_high(), 1) + "]";
}

std::string gains_text(const Comparison& c) {
  if (c.diff.n < 2) return "n/a";
  return std::to_string(c.diff.gains) + "/" + std::to_string(c.diff.n);
}

std::string finding_text(const Comparison& c) {
  if (c.diff.n < 2) return "n/a";
  if (!c.diff.significant()) return "no";
  return c.diff.mean > 0 ? "**gain**" : "**loss**";
}

std::string comparison_table(const std::vector<RunResult>& runs, const std::vector<std::string>& rows,
                             const std::string& control, const std::map<std::string, std::string>& labels) {
  const bool online = !runs.empty() && runs.front().online;
  const auto label_of = [&](const std::string& name) {
    const auto it = labels.find(name);
    return it == labels.end() ? name : it->second;
  };
  std::ostringstream t;
  t << "| policy | clicks (mean +- std) | " << (online ? "expected clicks | " : "accepted events | ")
    << "change vs " << label_of(control) << " [95% CI] | seeds that gain | finding |\n"
    << "|---|---|---|---|---|---|\n";
  const auto summary = summarize(runs);
  for (const std::string& name : rows) {
    const PolicySummary* s = nullptr;
    for (const auto& x : summary)
      if (x.policy == name) s = &x;
    if (!s) continue;
    t << "| " << label_of(name) << " | " << format_fixed(s->clicks.mean, 1) << " +- " << format_fixed(s->clicks.std, 1)
      << " | ";
    if (online)
      t << format_fixed(s->expected_clicks.mean, 1);
    else
      t << format_fixed(s->events.mean, 0);
    if (name == control) {
      t << " | - | - | - |\n";
      continue;
    }
    const Comparison c = compare_runs(runs, name, control, online);
    t << " | " << change_text(c) << " | " << gains_text(c) << " | " << finding_text(c) << " |\n";
  }
  return t.str();
}

std::ofstream open_output(const std::string& path) {
  std::ofstream f(path);
  if (!f) throw IoError("cannot open '" + path + "' for writing");
  f.precision(10);
  return f;
}

void write_results_csv(const std::string& path, const std::vector<RunResult>& runs) {
  std::ofstream f = open_output(path);
  f << "policy,seed,visits,events,clicks,expected_clicks\n";
  for (const RunResult& r : runs) {
    f << r.policy << ',' << r.seed << ',' << r.visits << ',' << r.events << ',' << r.clicks << ',';
    if (r.online) f << r.expected_clicks;
    f << '\n';
  }
  if (!f) throw IoError("writing '" + path + "' failed");
}

void write_curves_csv(const std::string& path, const std::vector<RunResult>& runs) {
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

void write_report(const Options& o, const StudySetup& setup, const std::vector<std::string>& names,
                  std::size_t n_seeds, double secs, std::vector<RunResult> results) {
  // Order: policies as requested, then seed.
  std::stable_sort(results.begin(), results.end(), [&](const RunResult& a, const RunResult& b) {
    const auto ia = std::find(names.begin(), names.end(), a.policy) - names.begin();
    const auto ib = std::find(names.begin(), names.end(), b.policy) - names.begin();
    return ia != ib ? ia < ib : a.seed < b.seed;
  });

  fs::create_directories(o.out);
  write_results_csv((fs::path(o.out) / "results.csv").string(), results);
  write_curves_csv((fs::path(o.out) / "curves.csv").string(), results);

  std::map<std::string, std::string> labels;
  for (const auto& name : names) labels[name] = find_policy(name).label;
  auto ran = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  std::ostringstream md;
  const std::uint64_t warmup = setup.online ? setup.online_warmup : setup.replay_warmup;
  md << "Cumulative clicks "
     << (setup.online ? "over visits " + std::to_string(warmup) + ".." + std::to_string(o.visits - 1) + " (online)"
                      : "over the replayed lines after the first " + std::to_string(warmup) + " of " +
                            std::to_string(o.visits) + " (replay: only accepted events count)")
     << "; " << n_seeds << " seed(s) (" << o.seed_base + 1 << ".." << o.seed_base + n_seeds << "), "
     << format_duration(secs) << " on " << setup.threads << " thread(s). The change is the mean of the per-seed "
     << "paired differences, in percent of the control's mean, with its 95% Student-t interval; a finding only "
     << "when the interval excludes 0.\n\n";
  const std::string reference = ran("vanilla") ? "vanilla" : names[0];
  md << comparison_table(results, names, reference, labels);

  // The best baseline (highest mean clicks among the policies that do not move the
  // embeddings, DNN-vanilla excluded): the AGE rows against it too.
  const auto summary = summarize(results);
  const std::vector<std::string> baselines{"random",      "egreedy",      "ensemble-ts",
                                           "ensemble-ucb", "gradient-ts", "gradient-ucb"};
  std::string best;
  double best_clicks = -1;
  for (const auto& s : summary)
    if (std::find(baselines.begin(), baselines.end(), s.policy) != baselines.end() && s.clicks.mean > best_clicks) {
      best = s.policy;
      best_clicks = s.clicks.mean;
    }
  std::vector<std::string> age_rows{best};
  for (const char* a : {"age-ts", "age-ucb", "age-ts-adaptive", "age-ucb-adaptive"})
    if (ran(a)) age_rows.push_back(a);
  if (!best.empty() && age_rows.size() > 1)
    md << "\nAGE against the best baseline (" << labels[best] << "):\n\n"
       << comparison_table(results, age_rows, best, labels);

  // The count-aware variants against the controls that isolate their move.
  for (const char* a : {"age-ts-adaptive", "age-ucb-adaptive"}) {
    const std::string variant = a, randdir = variant + "-randdir", bonus = variant + "-bonus";
    if (!ran(variant) || (!ran(randdir) && !ran(bonus))) continue;
    std::vector<std::string> rows{randdir, bonus};
    rows.insert(rows.begin(), variant);
    std::vector<std::string> present;
    for (const auto& r : rows)
      if (ran(r)) present.push_back(r);
    std::ostringstream vs;
    for (const std::string& control : {randdir, bonus})
      if (ran(control)) {
        const Comparison c = compare_runs(results, variant, control, setup.online);
        vs << "| " << labels[variant] << " vs " << labels[control] << " | " << change_text(c) << " | "
           << gains_text(c) << " | " << finding_text(c) << " |\n";
      }
    md << "\n" << labels[variant] << " against its controls (paired, same seeds):\n\n"
       << "| comparison | change [95% CI] | seeds that gain | finding |\n|---|---|---|---|\n"
       << vs.str();
  }

  // Table 2 (ablation) against AGE-TS, and AGE-UCB without its gate against AGE-UCB.
  if (ran("age-ts-nodelta") || ran("age-ts-nodir") || ran("age-ts-nogate")) {
    std::vector<std::string> rows{"age-ts"};
    for (const char* a : {"age-ts-nodelta", "age-ts-nodir", "age-ts-nogate", "age-ts-fixed0.005", "age-ts-fixed0.01",
                          "age-ts-fixed0.02", "age-ts-permask", "age-ts-capped"})
      if (ran(a)) rows.push_back(a);
    md << "\nAblation (the paper's Table 2), against AGE-TS:\n\n" << comparison_table(results, rows, "age-ts", labels);
    if (ran("age-ucb") && ran("age-ucb-nogate"))
      md << "\nAGE-UCB without its DGU, against AGE-UCB:\n\n"
         << comparison_table(results, {"age-ucb", "age-ucb-nogate"}, "age-ucb", labels);
  }
  // Table 3: PGD against FGM.
  if (ran("age-ts-fgm") && ran("age-ts"))
    md << "\nPGD against FGM (the paper's Table 3), against AGE-TS (FGM):\n\n"
       << comparison_table(results, {"age-ts-fgm", "age-ts"}, "age-ts-fgm", labels);
  std::printf("\n%s\n", md.str().c_str());
  {
    std::ofstream f = open_output((fs::path(o.out) / "summary.md").string());
    f << md.str();
  }
  std::printf("wrote %s/results.csv, curves.csv, summary.md\n", o.out.c_str());
  plot(o);
}

void plot(const Options& o) {
  const std::string script = std::string(AGE_EXAMPLES_DIR) + "/plot_curves.py";
  const std::string py = AGE_PYTHON;
  const std::string check = py + " -c 'import matplotlib' >/dev/null 2>&1";
  if (std::system(check.c_str()) != 0) {
    std::printf("picture skipped: %s cannot import matplotlib (Debian: apt-get install python3-matplotlib)\n", py.c_str());
    return;
  }
  const std::string png = (fs::path(o.out) / "curves.png").string();
  const std::string cmd = py + " '" + script + "' '" + (fs::path(o.out) / "curves.csv").string() + "' '" + png + "'";
  if (std::system(cmd.c_str()) != 0)
    std::printf("picture skipped: '%s' failed\n", cmd.c_str());
  else
    std::printf("picture: %s\n", png.c_str());
}

}  // namespace study
