// The command line of age-ope: one command (evaluate, train, fill, convert, obd-check) and
// its flags. main.cpp dispatches; usage() lists everything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <string>

namespace ope {

struct RowRange {
  std::size_t begin = 0, end = std::numeric_limits<std::size_t>::max();  // [begin, end)
  bool contains(std::size_t i) const noexcept { return i >= begin && i < end; }
};

struct Options {
  std::string command;
  // Inputs and outputs.
  std::string log;           // OBD men.csv (with --items) or a served log (.jsonl / .csv)
  std::string items;         // OBD item_context.csv: the log is in the Open Bandit format
  std::string model, dgu;    // the policy's model and DGU (safetensors, save_model / save_tower)
  std::string reward_model;  // DM/DR's model; default: --model
  std::string marginal_log, marginal_items;  // bts-marginal: the OBD log whose action shares it replays
  std::string out;           // train: folder; fill, convert: file
  std::string data;          // obd-check: the folder with random/ and bts/
  RowRange rows;             // rows of an OBD log that are evaluated / trained on / converted
  RowRange observe;          // OBD rows whose shown items a learning policy observes first
  bool observe_given = false;
  // The policy.
  std::string policy = "greedy";
  std::uint64_t policy_seed = 0;
  double epsilon = 0.1;   // epsilon-greedy
  double lambda = 1.0;    // AGE's lambda' (the OBD model's embedding units)
  double nu = 0.1;        // Gradient-TS/UCB
  bool lambda_given = false, nu_given = false;  // obd-check calibrates the ones not given
  // Propensities and estimators.
  std::size_t draws = 256;
  double floor = 0.0;
  std::size_t bootstrap = 1000;
  double confidence = 0.95;
  std::uint64_t seed = 1;  // bootstrap and training
  // Training (train, obd-check).
  std::size_t epochs = 10, batch = 32;
  double lr = 1e-2;
  bool skip_bad_rows = false;
  bool checks_only = false;  // obd-check: the two real-data checks, no learned policies
};

void usage(std::ostream& out);
// Throws age::ConfigError naming the flag and the value.
Options parse_options(int argc, char** argv);

}  // namespace ope
