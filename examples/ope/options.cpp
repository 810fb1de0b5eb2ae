// Flags of age-ope, their checks and the usage text.
#include "options.hpp"

#include <cstdlib>
#include <iostream>
#include <string>

#include "../common/command_line.hpp"
#include "age/core/error.hpp"

namespace ope {

using age::ConfigError;
using age_examples::parse_count;
using age_examples::parse_real;

namespace {

RowRange parse_rows(const std::string& flag, const std::string& v) {
  const std::size_t colon = v.find(':');
  if (colon == std::string::npos) throw ConfigError(flag + ": expected A:B (rows A to B-1; either may be empty), got '" + v + "'");
  RowRange r;
  if (colon > 0) r.begin = parse_count(flag, v.substr(0, colon));
  if (colon + 1 < v.size()) r.end = parse_count(flag, v.substr(colon + 1));
  if (r.end <= r.begin) throw ConfigError(flag + ": expected A < B, got '" + v + "'");
  return r;
}

}  // namespace

void usage(std::ostream& o) {
  o << "usage: age-ope COMMAND [flags]\n"
       "  evaluate   --log FILE [--items FILE] --policy NAME [--model FILE] [--dgu FILE] [--reward-model FILE]\n"
       "             the table of off-policy estimates of the policy on the log: replay, IPS, SNIPS, DM, DR,\n"
       "             with bootstrap intervals and effective sample sizes. --items: the log is an Open Bandit\n"
       "             Dataset men.csv; otherwise a served log (.jsonl or .csv, examples/ope/LOG_SCHEMA.md)\n"
       "  train      --log men.csv --items FILE --out DIR [--rows A:B]: the library's CTR model and its DGU\n"
       "             on OBD rows, written as DIR/model.safetensors and DIR/dgu.safetensors\n"
       "  fill       --log FILE --out FILE --policy NAME --model FILE [--dgu FILE]: a served log's deferred\n"
       "             propensities, computed offline from each record's request id and seed\n"
       "  convert    --log men.csv --items FILE --out FILE(.jsonl|.csv) [--rows A:B]: OBD rows as served records\n"
       "  obd-check  [--data DIR] [--checks-only]: the real-data checks and the learned policies' table\n"
       "             (examples/data/obd/men by default; README, \"Propensities and off-policy evaluation\")\n"
       "policies: uniform, bts-marginal (--marginal-log FILE --marginal-items FILE), greedy, epsilon-greedy,\n"
       "          gradient-ts, gradient-ucb, age-ts, age-ts-fgm, age-ucb (age-*: --dgu)\n"
       "flags: --rows A:B  --observe-rows A:B (a learning policy observes these OBD rows first)\n"
       "       --policy-seed S  --epsilon E  --lambda L  --nu N  --draws K (Monte-Carlo, default 256)\n"
       "       --floor F  --bootstrap B (default 1000)  --confidence C (0.95)  --seed S\n"
       "       --epochs E  --batch N  --lr R (training)  --skip-bad-rows  --help\n";
}

Options parse_options(int argc, char** argv) {
  Options o;
  int i = 1;
  if (argc >= 2 && argv[1][0] != '-') o.command = argv[i++];
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ConfigError(a + ": expected a value, got end of arguments");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(std::cout);
      std::exit(0);
    } else if (a == "--log") {
      o.log = value();
    } else if (a == "--items") {
      o.items = value();
    } else if (a == "--model") {
      o.model = value();
    } else if (a == "--dgu") {
      o.dgu = value();
    } else if (a == "--reward-model") {
      o.reward_model = value();
    } else if (a == "--marginal-log") {
      o.marginal_log = value();
    } else if (a == "--marginal-items") {
      o.marginal_items = value();
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--data") {
      o.data = value();
    } else if (a == "--rows") {
      o.rows = parse_rows(a, value());
    } else if (a == "--observe-rows") {
      o.observe = parse_rows(a, value());
      o.observe_given = true;
    } else if (a == "--policy") {
      o.policy = value();
    } else if (a == "--policy-seed") {
      o.policy_seed = parse_count(a, value());
    } else if (a == "--epsilon") {
      o.epsilon = parse_real(a, value());
    } else if (a == "--lambda") {
      o.lambda = parse_real(a, value());
      o.lambda_given = true;
    } else if (a == "--nu") {
      o.nu = parse_real(a, value());
      o.nu_given = true;
    } else if (a == "--draws") {
      o.draws = parse_count(a, value());
    } else if (a == "--floor") {
      o.floor = parse_real(a, value());
    } else if (a == "--bootstrap") {
      o.bootstrap = parse_count(a, value());
    } else if (a == "--confidence") {
      o.confidence = parse_real(a, value());
    } else if (a == "--seed") {
      o.seed = parse_count(a, value());
    } else if (a == "--epochs") {
      o.epochs = parse_count(a, value());
    } else if (a == "--batch") {
      o.batch = parse_count(a, value());
      if (o.batch == 0) throw ConfigError("--batch: expected >= 1, got 0");
    } else if (a == "--lr") {
      o.lr = parse_real(a, value());
    } else if (a == "--skip-bad-rows") {
      o.skip_bad_rows = true;
    } else if (a == "--checks-only") {
      o.checks_only = true;
    } else {
      throw ConfigError("unknown flag: expected one of those listed by --help, got '" + a + "'");
    }
  }
  if (o.command.empty()) throw ConfigError("command: expected evaluate, train, fill, convert or obd-check, got none");
  return o;
}

}  // namespace ope
