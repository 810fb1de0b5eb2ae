// The --tune job: runs every grid point of the policies' knobs on validation seeds and
// writes the winners to the knobs file (--params) that the study reads, with the score of
// every grid point as a comment.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "age/sim/results.hpp"
#include "report.hpp"
#include "study.hpp"

namespace study {

namespace {
// A grid point's knobs: those the policy runs with (knobs_for: e.g. a control's are those
// of the variant it controls, tuned before it), with the grid point's values over them.
Knobs grid_knobs(const PolicySpec& spec, std::size_t g, const std::map<std::string, Knobs>& tuned) {
  Knobs k = knobs_for(spec, tuned);
  for (const auto& [n, v] : spec.grid[g]) k[n] = v;
  return k;
}
}  // namespace

// --tune: every policy of the set that has knobs, on validation seeds, the same grid
// budget for each; the best mean score (expected clicks online, clicks in replay) wins.
void tune(const Options& o, const StudySetup& setup, const std::vector<std::string>& names, std::size_t n_seeds) {
  std::vector<std::uint64_t> seeds;
  for (std::size_t k = 1; k <= n_seeds; ++k) seeds.push_back(kValidationSeedBase + k);
  const auto worlds = make_worlds(o, setup, seeds);
  auto existing = read_params(o.params);
  std::vector<Job> jobs;
  std::vector<std::string> tuned_names;
  for (const auto& name : names) {
    const PolicySpec spec = find_policy(name);
    if (spec.grid.empty()) continue;
    tuned_names.push_back(name);
    for (std::size_t g = 0; g < spec.grid.size(); ++g)
      for (std::size_t w = 0; w < seeds.size(); ++w) {
        jobs.push_back(Job{spec, grid_knobs(spec, g, existing), seeds[w], w, policy_cost(spec),
                           name + "#" + std::to_string(g)});
      }
  }
  if (jobs.empty()) {
    std::printf("--tune: none of the policies has knobs to tune\n");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto results = run_jobs(setup, jobs, worlds, work_per_job(o, setup.online), "tuning");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ostringstream report;
  for (const auto& name : tuned_names) {
    const PolicySpec spec = find_policy(name);
    double best = -1;
    std::size_t best_g = 0;
    for (std::size_t g = 0; g < spec.grid.size(); ++g) {
      std::vector<double> score;
      for (const auto& r : results)
        if (r.policy == name + "#" + std::to_string(g)) score.push_back(setup.online ? r.expected_clicks : r.clicks);
      const MeanStd ms = mean_std(score);
      const double m = ms.mean;
      report << "#   " << name << " " << knobs_text(spec.grid[g]) << " -> " << format_fixed(m, 1) << " +- "
             << format_fixed(ms.std, 1) << "\n";
      if (m > best) {
        best = m;
        best_g = g;
      }
    }
    existing[name] = spec.grid[best_g];
    std::printf("tuned %-14s %s\n", name.c_str(), knobs_text(spec.grid[best_g]).c_str());
  }
  // Earlier runs' lines (their grid scores and run descriptions) stay, but for the
  // policies tuned again now.
  std::vector<std::string> kept_runs, kept_scores;
  {
    std::ifstream old(o.params);
    for (std::string line; std::getline(old, line);) {
      if (line.rfind("# run: ", 0) == 0) kept_runs.push_back(line);
      if (line.rfind("#   ", 0) != 0) continue;
      std::istringstream ss(line.substr(4));
      std::string policy;
      ss >> policy;
      if (std::find(tuned_names.begin(), tuned_names.end(), policy) == tuned_names.end()) kept_scores.push_back(line);
    }
  }
  std::ostringstream run;
  run << "# run: mode " << o.mode << ", V = " << o.visits << ", validation seeds " << kValidationSeedBase + 1 << ".."
      << kValidationSeedBase + n_seeds << ", " << format_duration(secs) << " on " << setup.threads << " threads:";
  for (const auto& name : tuned_names) run << ' ' << name;
  kept_runs.push_back(run.str());
  std::ofstream f(o.params);
  if (!f) throw IoError("cannot write tuned parameters to '" + o.params + "'");
  f << "# Knobs chosen by `age-replay --tune`: for each policy, the grid point (" << study::detail::kGridSize
    << " per policy) with the most clicks (expected clicks online) on the mean over validation seeds that are never "
       "reported (mean +- std over the seeds below).\n";
  for (const auto& line : kept_runs) f << line << '\n';
  f << "# Grid scores:\n";
  for (const auto& line : kept_scores) f << line << '\n';
  f << report.str() << "# policy knob value\n";
  for (const auto& [policy, knobs] : existing)
    for (const auto& [n, v] : knobs) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.6g", v);
      f << policy << ' ' << n << ' ' << buf << '\n';
    }
  std::printf("tuned knobs written to %s (%s)\n", o.params.c_str(), format_duration(secs).c_str());
}

}  // namespace study
