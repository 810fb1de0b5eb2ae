// age-replay: the paper's offline study (METHOD.md, "Offline replay protocol"), rerunnable by
// anyone. Runs every exploration policy of the library on the synthetic R6B-like world
// (age/sim/environment.hpp), by Li et al. replay of its uniformly random log (default) or
// online, or by replay of a real Yahoo! R6B file (Webscope licence), and reports cumulative
// clicks as in the paper's Table 1 (and Tables 2 and 3 with --study ablation / full), each
// policy against DNN-vanilla on the same seeds with a 95% interval.
//
//   age-replay [--mode replay|online] [--log FILE] [--generate-log FILE] [--visits N]
//              [--seeds K] [--policies a,b,...] [--study core|full|ablation|all] [--quick]
//              [--threads N] [--out DIR] [--tune] [--calibrate] [--params FILE] [--quiet]
//
// Writes DIR/results.csv (policy,seed,visits,events,clicks,expected_clicks), DIR/curves.csv,
// DIR/summary.md and DIR/curves.png (through examples/plot_curves.py and matplotlib).
// Knobs of each policy come from examples/tuned_params.txt, written by --tune.
//
// This file only dispatches to the job the flags name; the others each hold one job:
//   options.cpp    flags, usage, --study sets, the tuned knobs file
//   study.cpp      worlds, jobs, agents, threads and progress; the study run
//   tuning.cpp     --tune
//   calibrate.cpp  --calibrate
//   report.cpp     tables, results.csv, curves.csv, summary.md and the plot call
// and the study's learner and policies are model_agent.hpp and policies.hpp.
#include <chrono>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/sim/environment.hpp"
#include "options.hpp"
#include "study.hpp"

using namespace study;

namespace {

int run(const Options& o) {
  const StudySetup setup = make_setup(o);

  if (!o.generate_log.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    Environment env(o.seed_base + 1, o.visits);
    env.write_log(o.generate_log);
    std::printf("wrote %llu R6B lines of the synthetic world (seed %llu) to %s in %.1f s\n",
                static_cast<unsigned long long>(o.visits), static_cast<unsigned long long>(o.seed_base + 1),
                o.generate_log.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }
  const std::vector<std::string> names = o.policies.empty() ? study_set(o.study) : o.policies;
  if (o.calibrate) {
    calibrate(o, setup, names);
    return 0;
  }
  if (o.tune) {
    tune(o, setup, names, o.seeds ? o.seeds : kValidationSeeds);
    return 0;
  }
  const std::size_t n_seeds = o.seeds ? o.seeds : kReportedSeeds;

  run_study(o, setup, names, n_seeds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const age::ConfigError& e) {  // a bad command line: show the valid flags and names
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    usage(std::cerr);
    return 2;
  } catch (const age::Error& e) {
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    return 1;
  }
}
