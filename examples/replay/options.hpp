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
  std::string mode = "online";
  bool mode_given = false;
  std::string log, generate_log, out = "age-replay-out", study = "core", params;
  std::uint64_t visits = 200000;
  std::size_t seeds = 0;  // 0: the study's default
  std::uint64_t seed_base = 0;  // seeds are seed_base + 1 .. seed_base + K
  std::vector<std::string> policies;
  std::size_t threads = 0;
  bool tune = false, diagnose = false, quiet = false;
  LearningSettings learning;
};

// The usage line and the valid policy names.
void usage(std::ostream& o);

// The options of argv; --help prints the usage and exits. A bad flag or value is a
// ConfigError naming it (main() then prints the usage).
Options parse_args(int argc, char** argv);

// The policies of --study core|full|ablation|all, and the default number of seeds.
std::vector<std::string> study_set(const std::string& study);
std::size_t default_seeds(const std::string& study);

// ---- tuned knobs file ------------------------------------------------------------------
// Lines "policy knob value"; '#' starts a comment. A missing file is no knobs.
std::map<std::string, Knobs> read_params(const std::string& path);
// The knobs a run of `spec` uses: its defaults (or those of the policy it is tuned as),
// overridden by the tuned values.
Knobs knobs_for(const PolicySpec& spec, const std::map<std::string, Knobs>& tuned);
// "name=value name=value", or "-" for none.
std::string knobs_text(const Knobs& k);

}  // namespace study
