// What a run of age-replay is told: its command line (the flags, their checks and the usage
// text), the policy sets that --study names, and the file of tuned knobs that --params names
// (examples/tuned_params.txt by default; read by every job, written by --tune).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "model_agent.hpp"
#include "policies.hpp"

namespace study {

struct Options {
  std::string mode = "replay";
  bool mode_given = false;
  std::string log, generate_log, out = "age-replay-out", study = "core", params;
  std::uint64_t visits = 0;  // 0: the mode's default (kReplayVisits, kOnlineVisits)
  std::size_t seeds = 0;     // 0: the job's default (kReportedSeeds, kValidationSeeds)
  std::uint64_t seed_base = 0;  // seeds are seed_base + 1 .. seed_base + K
  std::vector<std::string> policies;
  std::size_t threads = 0;
  bool tune = false, calibrate = false, quick = false, quiet = false;
  LearningSettings learning;
};

// Defaults: replay of the world's 2,000,000-visit log (about 52,000 accepted events per
// run), 20 reported seeds, 5 validation seeds for tuning; online runs 200,000 visits.
// --quick: 5 seeds of a 500,000-visit log (about 13,000 accepted events), for a first look.
inline constexpr std::uint64_t kReplayVisits = 2000000, kOnlineVisits = 200000, kQuickVisits = 500000;
inline constexpr std::size_t kReportedSeeds = 20, kValidationSeeds = 5, kQuickSeeds = 5;

// The usage line and the valid policy names.
void usage(std::ostream& o);

// The options of argv; --help prints the usage and exits. A bad flag or value is a
// ConfigError naming it (main() then prints the usage).
Options parse_args(int argc, char** argv);

// The policies of --study core|full|ablation|all.
std::vector<std::string> study_set(const std::string& study);

// ---- tuned knobs file ------------------------------------------------------------------
// Lines "policy knob value"; '#' starts a comment. A missing file is no knobs.
std::map<std::string, Knobs> read_params(const std::string& path);
// The knobs a run of `spec` uses: those of the policy it is tuned as (its defaults, then
// its tuned values), then its own defaults and its own tuned values.
Knobs knobs_for(const PolicySpec& spec, const std::map<std::string, Knobs>& tuned);
// "name=value name=value", or "-" for none.
std::string knobs_text(const Knobs& k);

}  // namespace study
