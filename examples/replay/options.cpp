// The command line of age-replay (flags, checks, usage), the policy sets of --study, and
// the tuned knobs file.
#include "options.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "../common/command_line.hpp"

#ifndef AGE_EXAMPLES_DIR
#define AGE_EXAMPLES_DIR "examples"
#endif

namespace study {

using age_examples::parse_count;
using age_examples::parse_real;

namespace {

const std::vector<std::string> kFlags{"--mode",  "--log",     "--generate-log", "--visits", "--seeds",
                                      "--policies", "--study", "--threads", "--out", "--tune", "--params",
                                      "--calibrate", "--quick", "--quiet", "--seed-base", "--lr", "--batch",
                                      "--warm-epochs", "--hidden", "--help"};

std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += sep;
    s += x;
  }
  return s;
}

}  // namespace

void usage(std::ostream& o) {
  o << "usage: age-replay [--mode replay|online] [--log FILE] [--generate-log FILE] [--visits N]\n"
       "                  [--seeds K] [--policies a,b,...] [--study core|full|ablation|all] [--quick]\n"
       "                  [--threads N] [--out DIR] [--tune] [--calibrate] [--params FILE] [--quiet]\n"
       "                  [--seed-base B] [--lr X] [--batch N] [--warm-epochs N] [--hidden A,B]\n"
       "policies: "
    << policy_names() << "\n";
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ConfigError(a + ": expected a value, got end of arguments");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(std::cout);
      std::exit(0);
    } else if (a == "--mode") {
      o.mode = value();
      o.mode_given = true;
      if (o.mode != "online" && o.mode != "replay")
        throw ConfigError("--mode: expected online or replay, got '" + o.mode + "'");
    } else if (a == "--log") {
      o.log = value();
    } else if (a == "--generate-log") {
      o.generate_log = value();
    } else if (a == "--visits") {
      o.visits = parse_count(a, value());
      if (o.visits == 0) throw ConfigError("--visits: expected >= 1, got 0");
    } else if (a == "--seeds") {
      o.seeds = parse_count(a, value());
      if (o.seeds == 0) throw ConfigError("--seeds: expected >= 1, got 0");
    } else if (a == "--policies") {
      std::stringstream ss(value());
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) o.policies.push_back(p);
      for (const auto& p : o.policies) (void)find_policy(p);  // unknown name -> error with the list
    } else if (a == "--study") {
      o.study = value();
      if (o.study != "core" && o.study != "full" && o.study != "ablation" && o.study != "all")
        throw ConfigError("--study: expected core, full, ablation or all, got '" + o.study + "'");
    } else if (a == "--threads") {
      o.threads = parse_count(a, value());
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--params") {
      o.params = value();
    } else if (a == "--tune") {
      o.tune = true;
    } else if (a == "--calibrate") {
      o.calibrate = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--seed-base") {
      o.seed_base = parse_count(a, value());
    } else if (a == "--lr") {
      const std::string v = value();
      o.learning.lr = parse_real(a, v);
      if (!(o.learning.lr > 0)) throw ConfigError("--lr: expected a number > 0, got '" + v + "'");
    } else if (a == "--batch") {
      o.learning.batch = parse_count(a, value());
      if (o.learning.batch == 0) throw ConfigError("--batch: expected >= 1, got 0");
    } else if (a == "--warm-epochs") {
      o.learning.warm_epochs = parse_count(a, value());
    } else if (a == "--hidden") {
      const std::string v = value();
      std::stringstream ss(v);
      o.learning.hidden.clear();
      for (std::string h; std::getline(ss, h, ',');) {
        const std::uint64_t units = parse_count(a, h);
        if (units == 0) throw ConfigError("--hidden: expected units >= 1 per layer, got '" + v + "'");
        o.learning.hidden.push_back(static_cast<std::size_t>(units));
      }
      if (o.learning.hidden.size() != 2)
        throw ConfigError("--hidden: expected two layer widths 'A,B' (the study's tower is 2 hidden layers), got '" +
                          v + "'");
    } else {
      throw ConfigError("unknown flag '" + a + "': expected one of " + join(kFlags));
    }
  }
  if (!o.log.empty()) {
    if (o.mode_given && o.mode == "online") throw ConfigError("--log: replays a file, expected --mode replay, got online");
    o.mode = "replay";
  }
  if (o.params.empty()) o.params = std::string(AGE_EXAMPLES_DIR) + "/tuned_params.txt";
  if (o.quick) {
    if (o.visits == 0) o.visits = o.mode == "replay" ? kQuickVisits : kOnlineVisits;
    if (o.seeds == 0) o.seeds = kQuickSeeds;
  }
  if (o.visits == 0) o.visits = o.mode == "replay" ? kReplayVisits : kOnlineVisits;
  return o;
}

std::vector<std::string> study_set(const std::string& study) {
  // The headline: no exploration, the strongest baselines, faithful AGE-TS and its noise
  // floor, and the count-aware AGE-TS with the two controls that isolate its move.
  if (study == "core")
    return {"vanilla",         "egreedy",      "gradient-ts",           "age-ts",
            "age-ts-placebo",  "age-ts-adaptive", "age-ts-adaptive-randdir", "age-ts-adaptive-bonus"};
  if (study == "full")
    return {"vanilla",          "random",           "egreedy",         "ensemble-ts",
            "ensemble-ucb",     "gradient-ts",      "gradient-ucb",    "age-ts",
            "age-ucb",          "age-ts-fgm",       "age-ts-placebo",  "age-ts-permask",
            "age-ts-capped",    "age-ts-adaptive",  "age-ts-adaptive-randdir", "age-ts-adaptive-bonus",
            "age-ucb-adaptive", "age-ucb-adaptive-randdir", "age-ucb-adaptive-bonus"};
  const std::vector<std::string> ablation{"vanilla",           "age-ts",           "age-ts-nodelta",
                                          "age-ts-nodir",      "age-ts-nogate",    "age-ts-fixed0.005",
                                          "age-ts-fixed0.01",  "age-ts-fixed0.02", "age-ts-fgm",
                                          "age-ucb",           "age-ucb-nogate"};
  if (study == "ablation") return ablation;
  // all: the full study and the ablation in one run (shared rows are run once).
  std::vector<std::string> all = study_set("full");
  for (const auto& p : ablation)
    if (std::find(all.begin(), all.end(), p) == all.end()) all.push_back(p);
  return all;
}


std::map<std::string, Knobs> read_params(const std::string& path) {
  std::map<std::string, Knobs> out;
  std::ifstream f(path);
  if (!f) return out;
  std::string line;
  for (std::size_t n = 1; std::getline(f, line); ++n) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ss(line);
    std::string policy, name;
    double value = 0;
    if (!(ss >> policy)) continue;
    if (!(ss >> name >> value))
      throw FormatError(path + ":" + std::to_string(n) + ": expected 'policy knob value', got '" + line + "'");
    out[policy][name] = value;
  }
  return out;
}

Knobs knobs_for(const PolicySpec& spec, const std::map<std::string, Knobs>& tuned) {
  Knobs k;
  auto overlay = [&](const Knobs& extra) {
    for (const auto& [n, v] : extra) k[n] = v;
  };
  auto overlay_tuned = [&](const std::string& name) {
    if (const auto it = tuned.find(name); it != tuned.end()) overlay(it->second);
  };
  if (!spec.tuned_as.empty()) {
    overlay(find_policy(spec.tuned_as).defaults);
    overlay_tuned(spec.tuned_as);
  }
  overlay(spec.defaults);
  overlay_tuned(spec.name);
  return k;
}

std::string knobs_text(const Knobs& k) {
  std::string s;
  for (const auto& [n, v] : k) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s=%g", n.c_str(), v);
    if (!s.empty()) s += ' ';
    s += buf;
  }
  return s.empty() ? "-" : s;
}

}  // namespace study
