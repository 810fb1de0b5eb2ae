// The study's machinery, shared by its jobs: the worlds (per seed, a synthetic environment
// with its online warm start, or the log to replay), the runs (a Job is one policy with its
// knobs on one world), the agents they train, and the pool of threads that runs the jobs
// with a progress bar; and the entry point of each job main() dispatches to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "age/sim/environment.hpp"
#include "age/sim/replay.hpp"
#include "model_agent.hpp"
#include "options.hpp"
#include "policies.hpp"

namespace study {

// Validation seeds (tuning, calibration) are kValidationSeedBase + 1, + 2, ...; the
// reported seeds start at --seed-base + 1 (default 1): the two never meet.
inline constexpr std::uint64_t kValidationSeedBase = 1000;

struct Job {
  PolicySpec spec;
  Knobs knobs;
  std::uint64_t seed = 0;
  std::size_t world = 0;  // index into the worlds of the run set
  double cost = 1;
  std::string group;  // name reported for the run (tuning: "policy#grid point")
};

struct World {
  std::uint64_t seed = 0;
  std::unique_ptr<Environment> env;        // synthetic worlds (replay: its log, EnvironmentLog)
  std::vector<Impression> warm;            // online warm start
  std::string log;                         // replay of a real log: the file to read
  std::size_t warm_epochs = 1;             // warm-start epochs of every agent on this world
};

struct StudySetup {
  LearningSettings learning;
  bool online = true;
  std::uint64_t visits = 0;
  std::size_t threads = 1;
  bool quiet = false;
  std::uint64_t online_warmup = 20000, replay_warmup = 80000;
};

// The setup every job of a run shares, from the options.
StudySetup make_setup(const Options& o);

// Warm starts: W = 20,000 uniformly served visits online, the first 80,000 lines in replay
// (the paper's, METHOD.md "Offline replay protocol"). Scaled down only for worlds smaller
// than the default V = 200,000 (so that a short run still evaluates something): W = V / 10,
// 2 V / 5 lines.
std::uint64_t online_warmup(std::uint64_t visits);
std::uint64_t replay_warmup(const Options& o);

// Relative cost of a run of the policy (jobs start longest first).
double policy_cost(const PolicySpec& s);

// A fresh agent for the job: its models initialised from the job's seed, trained on the
// world's warm start for `warm_epochs` epochs.
std::unique_ptr<Agent> make_agent(const StudySetup& s, const Job& job, std::size_t warm_epochs);

// The warm-start impressions of a world: the online warm start, or the first
// replay_warmup lines of its log.
std::vector<Impression> warm_start_data(const StudySetup& s, const World& w);

// Trains to convergence: the number of epochs over `warm` after which the held-out log
// loss (every 10th impression held out) stops falling by more than 0.1%, at most 10. The
// same for every policy of a world (it depends on the seed and the data only).
std::size_t converged_epochs(const StudySetup& s, std::uint64_t seed, const std::vector<Impression>& warm,
                             std::vector<double>* held_out_loss = nullptr);

// Jobs of every named policy on every seed (world w = seeds[w]), with the tuned knobs.
std::vector<Job> make_jobs(const std::vector<std::string>& names, const std::vector<std::uint64_t>& seeds,
                           const std::map<std::string, Knobs>& tuned);

// Worlds for the given seeds: the environment (synthetic; replay reads its log as an
// EnvironmentLog, without a file) or the real log file (--log), the online warm start, and
// the warm-start epochs (LearningSettings::warm_epochs, or converged_epochs() when it is 0).
std::vector<World> make_worlds(const Options& o, const StudySetup& setup, const std::vector<std::uint64_t>& seeds);

// Visits (online) or lines (replay) a job works through, for the progress bar; 0 unknown.
std::uint64_t work_per_job(const Options& o, bool online);

// Runs every job on `threads` threads (longest first), with a progress bar on stderr.
// results[i] belongs to the i-th job of that order; the first error of any job is rethrown.
std::vector<RunResult> run_jobs(const StudySetup& s, std::vector<Job> jobs, const std::vector<World>& worlds,
                                std::uint64_t work_per_job, const std::string& title);

// "4m05s", "1h02m".
std::string format_duration(double seconds);

// ---- the jobs ---------------------------------------------------------------------------
// The study: every named policy on seeds seed_base + 1 .. + n_seeds, reported (study.cpp,
// report.cpp).
void run_study(const Options& o, const StudySetup& setup, const std::vector<std::string>& names,
               std::size_t n_seeds);
// --tune: the knobs of the named policies on validation seeds (tuning.cpp).
void tune(const Options& o, const StudySetup& setup, const std::vector<std::string>& names, std::size_t n_seeds);
// --calibrate: lambda' calibration of the AGE policies on a warm-started model of the first
// validation seed, and how the move relates to the items' impressions (calibrate.cpp).
void calibrate(const Options& o, const StudySetup& setup, const std::vector<std::string>& names);

}  // namespace study
