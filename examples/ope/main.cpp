// age-ope: off-policy evaluation of the library's policies on logged traffic (README,
// "Propensities and off-policy evaluation"). One file per job:
//   options.cpp   flags and usage
//   data.cpp      OBD rows and served logs as logged decisions; the OBD features
//   policies.cpp  target policies by name
//   evaluate.cpp  training on OBD rows, OPE samples and estimators, the report
//   check.cpp     obd-check: the real-data checks and the learned policies' table
// This file: the commands evaluate, train, fill, convert.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "age/core/error.hpp"
#include "age/io/model_io.hpp"
#include "age/io/served_log.hpp"
#include "age/sim/obd.hpp"
#include "check.hpp"
#include "data.hpp"
#include "evaluate.hpp"
#include "options.hpp"
#include "policies.hpp"

namespace ope {
namespace {

struct Loaded {
  std::optional<age::EmbeddingCtrModel> model, reward;
  std::optional<age::Tower> dgu;
  std::optional<age::sim::ObdLog> marginal;
  PolicyInputs inputs() const {
    return PolicyInputs{model ? &*model : nullptr, dgu ? &*dgu : nullptr, marginal ? &*marginal : nullptr};
  }
};

// The DGU in `path`: stored under "dgu" (save_model_with_dgu, save_dgu, the PyTorch
// exporter), or as the file's one tower (dgu.safetensors of earlier versions of `train`).
age::Tower load_dgu_file(const std::string& path) {
  const age::SafetensorsFile file(path);
  const bool named = file.metadata().count(std::string(age::kTowerConfigKeyPrefix) + std::string(age::kDguPrefix)) > 0;
  return named ? age::load_dgu(path) : age::load_tower(path);
}

Loaded load_inputs(const Options& o) {
  Loaded l;
  if (!o.model.empty()) l.model = age::load_model(o.model);
  if (!o.dgu.empty()) l.dgu = load_dgu_file(o.dgu);
  if (!o.reward_model.empty() && o.reward_model != o.model) l.reward = age::load_model(o.reward_model);
  if (!o.marginal_log.empty()) {
    if (o.marginal_items.empty()) throw age::ConfigError("--marginal-log: expected --marginal-items FILE too, got none");
    l.marginal = age::sim::read_obd(o.marginal_log, o.marginal_items);
  }
  return l;
}

void require(const std::string& value, const char* flag, const std::string& command) {
  if (value.empty()) throw age::ConfigError(command + ": expected " + flag + ", got none");
}

int run_evaluate(const Options& o) {
  require(o.log, "--log FILE", "evaluate");
  Loaded l = load_inputs(o);
  const age::EmbeddingCtrModel* reward = l.reward ? &*l.reward : (l.model ? &*l.model : nullptr);
  std::unique_ptr<Target> target = make_target(o, l.inputs());
  Evaluation ev;
  if (!o.items.empty()) {
    const age::sim::ObdLog log = age::sim::read_obd(o.log, o.items, {.skip_bad_rows = o.skip_bad_rows});
    if (log.skipped) std::cout << "skipped " << log.skipped << " bad rows; the first: " << log.first_error << "\n";
    if (o.observe_given) {
      if (!l.model) throw age::ConfigError("--observe-rows: expected --model FILE, got none");
      observe(*target, [&](const DecisionFn& fn) { for_each_obd(log, o.observe, fn); }, *l.model);
    }
    ev = evaluate(*target, [&](const DecisionFn& fn) { for_each_obd(log, o.rows, fn); },
                  Models{l.model ? &*l.model : nullptr, reward}, o);
    ev.log = o.log;
  } else {
    if (o.observe_given) throw age::ConfigError("--observe-rows: expected an OBD log (--items), got a served log");
    const age::ServedLog log = age::read_served_log(o.log, {.skip_bad_rows = o.skip_bad_rows});
    if (log.skipped) std::cout << "skipped " << log.skipped << " bad rows; the first: " << log.first_error << "\n";
    std::size_t no_reward = 0;
    ev = evaluate(*target, [&](const DecisionFn& fn) { no_reward = for_each_served(log, fn); },
                  Models{l.model ? &*l.model : nullptr, reward}, o);
    if (no_reward) std::cout << "skipped " << no_reward << " shown items without a joined reward\n";
    ev.log = o.log;
  }
  print_evaluation(std::cout, ev);
  return 0;
}

int run_train(const Options& o) {
  require(o.log, "--log men.csv", "train");
  require(o.items, "--items item_context.csv", "train");
  require(o.out, "--out DIR", "train");
  const age::sim::ObdLog log = age::sim::read_obd(o.log, o.items, {.skip_bad_rows = o.skip_bad_rows});
  const TrainedModel t = train_obd(log, o.rows, o);
  std::filesystem::create_directories(o.out);
  const auto dir = std::filesystem::path(o.out);
  // The model with its DGU, and the DGU alone (either file serves --dgu).
  age::save_model_with_dgu(dir / "model.safetensors", t.model, t.dgu);
  age::save_dgu(dir / "dgu.safetensors", t.dgu);
  std::cout << "trained on " << t.samples << " rows (" << t.clicks << " clicks), last epoch's mean loss "
            << t.final_loss << "; AUC on the training rows " << obd_auc(t.model, log, o.rows);
  if (o.rows.end < log.records.size())
    std::cout << ", on the rows after them " << obd_auc(t.model, log, RowRange{o.rows.end, log.records.size()});
  std::cout << "\nwrote " << (dir / "model.safetensors").string() << " and " << (dir / "dgu.safetensors").string()
            << "\n";
  return 0;
}

// Deferred propensities computed offline: the policy rebuilt with each record's seed, the
// request rebuilt from its features and its logged id.
int run_fill(const Options& o) {
  require(o.log, "--log FILE", "fill");
  require(o.out, "--out FILE", "fill");
  Loaded l = load_inputs(o);
  if (!l.model) throw age::ConfigError("fill: expected --model FILE (the serving model), got none");
  age::ServedLog log = age::read_served_log(o.log, {.skip_bad_rows = o.skip_bad_rows});
  std::map<std::uint64_t, std::unique_ptr<Target>> by_seed;
  age::Vector user;
  age::Matrix items;
  age::Propensities props;
  std::size_t filled = 0;
  for (age::ServedRecord& r : log.records) {
    if (r.method != age::PropensityMethod::deferred) continue;
    if (!r.has_features())
      throw age::InputError("served record " + std::to_string(r.request_id) +
                            ": features: expected the request's features to re-score it, got none");
    auto& target = by_seed[r.seed];
    if (!target) {
      Options seeded = o;
      seeded.policy_seed = r.seed;
      target = make_target(seeded, l.inputs());
    }
    std::uint32_t positions = 0;
    for (const auto& s : r.shown) positions = std::max(positions, s.position);
    l.model->embed_request(r.user, r.candidate_features, user, items);
    if (!target->propensities(age::Request{user, items, r.request_id}, positions, props))
      throw age::ConfigError("fill: policy " + o.policy + ": expected a policy with a model, got a model-free one");
    age::fill_propensities(r, props);
    ++filled;
  }
  std::ofstream out(o.out, std::ios::binary);
  if (!out) throw age::IoError("cannot open '" + o.out + "' for writing");
  if (std::filesystem::path(o.out).extension() == ".csv") {
    age::ServedCsvWriter w(out);
    for (const auto& r : log.records) w.write(r);
  } else {
    age::ServedJsonWriter w(out);
    for (const auto& r : log.records) w.write(r);
  }
  std::cout << "filled " << filled << " of " << log.records.size() << " records; wrote " << o.out << "\n";
  return 0;
}

int run_convert(const Options& o) {
  require(o.log, "--log men.csv", "convert");
  require(o.items, "--items item_context.csv", "convert");
  require(o.out, "--out FILE", "convert");
  const age::sim::ObdLog log = age::sim::read_obd(o.log, o.items, {.skip_bad_rows = o.skip_bad_rows});
  std::ofstream out(o.out, std::ios::binary);
  if (!out) throw age::IoError("cannot open '" + o.out + "' for writing");
  const bool csv = std::filesystem::path(o.out).extension() == ".csv";
  std::optional<age::ServedCsvWriter> cw;
  std::optional<age::ServedJsonWriter> jw;
  if (csv)
    cw.emplace(out);
  else
    jw.emplace(out);
  std::size_t n = 0;
  for (std::size_t i = o.rows.begin; i < std::min(o.rows.end, log.records.size()); ++i, ++n) {
    const age::ServedRecord r = obd_served_record(log, log.records[i], "obd-logging-policy");
    if (csv)
      cw->write(r);
    else
      jw->write(r);
  }
  std::cout << "wrote " << n << " records to " << o.out << "\n";
  return 0;
}

}  // namespace
}  // namespace ope

int main(int argc, char** argv) {
  try {
    const ope::Options o = ope::parse_options(argc, argv);
    if (o.command == "evaluate") return ope::run_evaluate(o);
    if (o.command == "train") return ope::run_train(o);
    if (o.command == "fill") return ope::run_fill(o);
    if (o.command == "convert") return ope::run_convert(o);
    if (o.command == "obd-check") return ope::run_obd_check(o);
    throw age::ConfigError("command: expected evaluate, train, fill, convert or obd-check, got '" + o.command + "'");
  } catch (const age::ConfigError& e) {  // a bad command line: show what is accepted
    std::cerr << "age-ope: " << e.what() << "\n";
    ope::usage(std::cerr);
    return 2;
  } catch (const age::Error& e) {
    std::cerr << "age-ope: " << e.what() << "\n";
    return 2;
  }
}
