// The study's report: its tables, CSV files, summary.md and the plot call.
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "age/core/error.hpp"
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

std::string percent_change(double value, double reference) {
  if (!(reference != 0) || !std::isfinite(value) || !std::isfinite(reference)) return "n/a";
  const double pct = 100.0 * (value - reference) / reference;
  return (pct >= 0 ? "+" : "") + format_fixed(pct, 1) + "%";
}

std::string summary_table(const std::vector<PolicySummary>& rows, const std::string& reference,
                          const std::map<std::string, std::string>& labels) {
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
  const auto summary = summarize(results);
  std::ostringstream md;
  md << "Cumulative clicks over "
     << (setup.online ? "visits " + std::to_string(setup.online_warmup) + ".." + std::to_string(o.visits - 1)
                      : "the replayed lines after the first " + std::to_string(setup.replay_warmup))
     << ", mean +- std over " << n_seeds << " seed(s); " << format_duration(secs) << " on " << setup.threads
     << " thread(s).\n\n";
  const std::string reference = std::find(names.begin(), names.end(), "vanilla") != names.end() ? "vanilla" : names[0];
  md << summary_table(summary, reference, labels);
  if (std::find(names.begin(), names.end(), "age-ts-nodelta") != names.end()) {
    std::vector<PolicySummary> ts_rows, ucb_rows;
    for (const auto& s : summary) {
      if (s.policy.rfind("age-ts", 0) == 0 && s.policy != "age-ts-fgm") ts_rows.push_back(s);
      if (s.policy.rfind("age-ucb", 0) == 0) ucb_rows.push_back(s);
    }
    if (!ts_rows.empty()) md << "\nAblation (Table 2), change vs AGE-TS:\n\n" << summary_table(ts_rows, "age-ts", labels);
    if (ucb_rows.size() > 1) md << "\nAblation, change vs AGE-UCB:\n\n" << summary_table(ucb_rows, "age-ucb", labels);
  }
  if (std::find(names.begin(), names.end(), "age-ts-fgm") != names.end() &&
      std::find(names.begin(), names.end(), "age-ts") != names.end()) {
    std::vector<PolicySummary> rows;
    for (const auto& s : summary)
      if (s.policy == "age-ts-fgm" || s.policy == "age-ts") rows.push_back(s);
    md << "\nFGM vs PGD (Table 3), change vs AGE-TS (FGM):\n\n" << summary_table(rows, "age-ts-fgm", labels);
  }
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
