// The --tune job: runs every grid point of the policies' knobs on validation seeds and
// writes the winners to the knobs file (--params) that the study reads, with the score of
// every grid point as a comment.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "age/sim/results.hpp"
#include "report.hpp"
#include "study.hpp"

namespace study {

namespace {
constexpr std::uint64_t kValidationSeedBase = 1000;  // tuning uses seeds 1001.., never reported
}  // namespace

// --tune: every policy of the set that has knobs, on validation seeds, the same grid
// budget for each; the best mean score (expected clicks online, clicks in replay) wins.
void tune(const Options& o, const StudySetup& setup, const std::vector<std::string>& names, std::size_t n_seeds) {
  std::vector<std::uint64_t> seeds;
  for (std::size_t k = 1; k <= n_seeds; ++k) seeds.push_back(kValidationSeedBase + k);
  const auto worlds = make_worlds(o, seeds, setup.online);
  std::vector<Job> jobs;
  std::vector<std::string> tuned_names;
  for (const auto& name : names) {
    const PolicySpec spec = find_policy(name);
    if (spec.grid.empty()) continue;
    tuned_names.push_back(name);
    for (std::size_t g = 0; g < spec.grid.size(); ++g)
      for (std::size_t w = 0; w < seeds.size(); ++w) {
        jobs.push_back(Job{spec, spec.grid[g], seeds[w], w, policy_cost(spec), name + "#" + std::to_string(g)});
      }
  }
  if (jobs.empty()) {
    std::printf("--tune: none of the policies has knobs to tune\n");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto results = run_jobs(setup, jobs, worlds, work_per_job(o, setup.online), "tuning");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto existing = read_params(o.params);
  std::ostringstream report;
  for (const auto& name : tuned_names) {
    const PolicySpec spec = find_policy(name);
    double best = -1;
    std::size_t best_g = 0;
    for (std::size_t g = 0; g < spec.grid.size(); ++g) {
      std::vector<double> score;
      for (const auto& r : results)
        if (r.policy == name + "#" + std::to_string(g)) score.push_back(setup.online ? r.expected_clicks : r.clicks);
      const double m = mean_std(score).mean;
      report << "#   " << name << " " << knobs_text(spec.grid[g]) << " -> " << format_fixed(m, 1) << "\n";
      if (m > best) {
        best = m;
        best_g = g;
      }
    }
    existing[name] = spec.grid[best_g];
    std::printf("tuned %-14s %s\n", name.c_str(), knobs_text(spec.grid[best_g]).c_str());
  }
  std::ofstream f(o.params);
  if (!f) throw IoError("cannot write tuned parameters to '" + o.params + "'");
  f << "# Knobs chosen by `age-replay --tune` (mode " << o.mode << ", V = " << o.visits << ", validation seeds "
    << kValidationSeedBase + 1 << ".." << kValidationSeedBase + n_seeds
    << ", never reported), one grid of " << study::detail::kGridSize << " points per policy, selected by mean "
    << (setup.online ? "expected clicks" : "clicks") << "; " << format_duration(secs) << " on " << setup.threads
    << " threads.\n# Grid scores of the last tuning run:\n"
    << report.str() << "# policy knob value\n";
  for (const auto& [policy, knobs] : existing)
    for (const auto& [n, v] : knobs) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.6g", v);
      f << policy << ' ' << n << ' ' << buf << '\n';
    }
  std::printf("tuned knobs written to %s (%s)\n", o.params.c_str(), format_duration(secs).c_str());
}

}  // namespace study
