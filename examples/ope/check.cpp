// obd-check: on the Open Bandit Dataset sample (men campaign, 34 items, 3 positions; a
// uniformly random log and a Bernoulli Thompson sampling log of 10,000 impressions each):
//
// 1. The uniform policy's value estimated from the TS log (IPS, SNIPS, DR) must hold, in its
//    interval, the random log's own click rate.
// 2. The other way round: the TS log's time-averaged policy (bts-marginal: per position, the
//    share of the TS rows showing each item; context-free like Bernoulli TS) estimated from
//    the random log must hold the TS log's own click rate.
// 3. The library's model and DGU trained on the random log's first half; uniform, greedy,
//    epsilon-greedy, Gradient-TS and AGE-TS evaluated on its second half.
//
// DR's reward model is the model of step 3 (trained on random rows 0..4999): it has seen
// none of the TS log and half of the random log that check 2 reads.
#include "check.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/sim/obd.hpp"
#include "evaluate.hpp"
#include "policies.hpp"

#ifndef AGE_EXAMPLES_DIR
#define AGE_EXAMPLES_DIR "examples"
#endif

namespace ope {

namespace {

using age::sim::Estimator;

std::string interval(const age::sim::OpeEstimate& x) {
  if (!x.available) return "n/a";
  return percent(x.value) + " [" + percent(x.lower) + ", " + percent(x.upper) + "]";
}

// Whether the interval of each of IPS, SNIPS and DR holds `value` (a log's click rate, of
// standard error `value_se`); prints one line each, with the difference's z-score, which
// also counts the other log's own sampling error.
bool holds(const Evaluation& ev, double value, double value_se, const std::string& what) {
  bool ok = true;
  for (Estimator e : {Estimator::ips, Estimator::snips, Estimator::dr}) {
    const age::sim::OpeEstimate& x = ev.report[e];
    if (!x.available) continue;
    const bool in = x.lower <= value && value <= x.upper;
    ok = ok && in;
    char z[96];
    std::snprintf(z, sizeof z, " (difference %s, z = %.2f)", percent(x.value - value).c_str(),
                  (x.value - value) / std::sqrt(x.std_error * x.std_error + value_se * value_se));
    std::cout << "check: " << to_string(e) << " " << interval(x) << " holds " << what << " " << percent(value) << ": "
              << (in ? "yes" : "NO") << z << "\n";
  }
  return ok;
}

// The share of the OBD rows in `rows` whose top pick by `target` (its draw for the row's
// id) differs from `greedy`'s.
double top_pick_change(Target& target, Target& greedy, const age::sim::ObdLog& log, RowRange rows,
                       const age::EmbeddingCtrModel& model) {
  std::size_t changed = 0, total = 0;
  age::Vector user;
  age::Matrix items;
  for_each_obd(log, rows, [&](const Decision& d) {
    model.embed_request(*d.user, *d.candidates, user, items);
    const age::Request request{user, items, d.id};
    changed += target.own_pick(request, 0) != greedy.own_pick(request, 0) ? 1 : 0;
    ++total;
  });
  return total ? static_cast<double>(changed) / static_cast<double>(total) : 0.0;
}

// The knob of `policy` on `grid` whose top-pick change on the training rows is closest to
// `goal` (the first such value); prints the share of every grid value.
double calibrate(Options o, const std::string& policy, double Options::*knob, const std::vector<double>& grid,
                 double goal, const PolicyInputs& inputs, const age::sim::ObdLog& log, RowRange rows,
                 const age::EmbeddingCtrModel& model) {
  Options g = o;
  g.policy = "greedy";
  auto greedy = make_target(g, inputs);
  o.policy = policy;
  double best = grid.front(), best_gap = 2.0;
  std::cout << policy << ": top pick differs from greedy's on the training rows:";
  for (double v : grid) {
    o.*knob = v;
    auto target = make_target(o, inputs);
    observe(*target, [&](const DecisionFn& fn) { for_each_obd(log, rows, fn); }, model);
    const double share = top_pick_change(*target, *greedy, log, rows, model);
    std::cout << " " << v << ": " << percent(share, 1) << ";";
    if (std::abs(share - goal) < best_gap) {
      best_gap = std::abs(share - goal);
      best = v;
    }
  }
  std::cout << " chosen " << best << "\n";
  return best;
}

}  // namespace

int run_obd_check(const Options& options) {
  Options o = options;
  const std::filesystem::path dir = o.data.empty() ? std::filesystem::path(AGE_EXAMPLES_DIR) / "data" / "obd" / "men"
                                                   : std::filesystem::path(o.data);
  const age::sim::ObdLog random = age::sim::read_obd(dir / "random" / "men.csv", dir / "random" / "item_context.csv");
  const age::sim::ObdLog bts = age::sim::read_obd(dir / "bts" / "men.csv", dir / "bts" / "item_context.csv");
  const std::size_t n = random.records.size();
  const RowRange train{0, n / 2}, test{n / 2, n}, all{0, std::numeric_limits<std::size_t>::max()};
  std::cout << "# age-ope obd-check: Open Bandit Dataset, men campaign (" << dir.string() << ")\n\n"
            << "random log: " << random.records.size() << " impressions, " << random.clicks() << " clicks, "
            << percent(random.click_rate()) << "; Thompson sampling log: " << bts.records.size() << " impressions, "
            << bts.clicks() << " clicks, " << percent(bts.click_rate()) << "\n";

  const TrainedModel t = train_obd(random, train, o);
  std::cout << "model (reward model of DM/DR; the learned policies' model): trained on random rows 0-"
            << train.end - 1 << " (" << t.clicks << " clicks), " << o.epochs << " epochs; AUC of the shown item's "
            << "pCTR on random rows " << test.begin << "-" << test.end - 1 << ": " << obd_auc(t.model, random, test)
            << ", on the TS log: " << obd_auc(t.model, bts, all) << "\n\n";
  const PolicyInputs inputs{&t.model, &t.dgu, &bts};
  const Models models{&t.model, &t.model};

  // 1. The uniform policy on the TS log.
  Options u = o;
  u.policy = "uniform";
  auto uniform = make_target(u, inputs);
  Evaluation ev1 = evaluate(*uniform, [&](const DecisionFn& fn) { for_each_obd(bts, all, fn); }, models, u);
  ev1.log = "the Thompson sampling log";
  std::cout << "## Check 1: the uniform policy's value from the Thompson sampling log\n\n";
  print_evaluation(std::cout, ev1);
  auto rate_se = [](const age::sim::ObdLog& log) {
    const double p = log.click_rate();
    return std::sqrt(p * (1 - p) / static_cast<double>(log.records.size()));
  };
  bool ok = holds(ev1, random.click_rate(), rate_se(random), "the random log's click rate");

  // 2. The TS log's policy on the random log.
  Options m = o;
  m.policy = "bts-marginal";
  auto marginal = make_target(m, inputs);
  Evaluation ev2 = evaluate(*marginal, [&](const DecisionFn& fn) { for_each_obd(random, all, fn); }, models, m);
  ev2.log = "the random log";
  std::cout << "\n## Check 2: the Thompson sampling policy's value from the random log\n\n";
  print_evaluation(std::cout, ev2);
  ok = holds(ev2, bts.click_rate(), rate_se(bts), "the Thompson sampling log's click rate") && ok;

  if (!o.checks_only) {
    // The exploring policies' knobs, unless given: each explores as often as epsilon-greedy
    // with epsilon 0.1, measured as the share of training rows whose top pick differs from
    // greedy's (the test half is never looked at).
    std::cout << "\n## Exploration knobs, calibrated on the training half\n\n";
    Options e = o, g = o;
    e.policy = "epsilon-greedy";
    g.policy = "greedy";
    auto eps_target = make_target(e, inputs);
    auto greedy_target = make_target(g, inputs);
    const double goal = top_pick_change(*eps_target, *greedy_target, random, train, t.model);
    std::cout << "epsilon-greedy (epsilon " << o.epsilon << "): top pick differs from greedy's on " << percent(goal, 1)
              << " of the training rows\n";
    if (!o.nu_given)
      o.nu = calibrate(o, "gradient-ts", &Options::nu, {1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10}, goal,
                       inputs, random, train, t.model);
    if (!o.lambda_given)
      o.lambda = calibrate(o, "age-ts", &Options::lambda,
                           {0.1, 0.3, 1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5}, goal, inputs, random, train,
                           t.model);
    std::cout << "\n## The library's policies on the random log's second half (rows " << test.begin << "-"
              << test.end - 1 << "), model trained on the first half\n\n";
    std::vector<std::pair<std::string, Evaluation>> rows;
    for (const std::string name : {"uniform", "greedy", "epsilon-greedy", "gradient-ts", "age-ts"}) {
      Options p = o;
      p.policy = name;
      auto target = make_target(p, inputs);
      observe(*target, [&](const DecisionFn& fn) { for_each_obd(random, train, fn); }, t.model);
      Evaluation ev = evaluate(*target, [&](const DecisionFn& fn) { for_each_obd(random, test, fn); }, models, p);
      ev.log = "random rows " + std::to_string(test.begin) + "-" + std::to_string(test.end - 1);
      print_evaluation(std::cout, ev);
      rows.emplace_back(name, std::move(ev));
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.0f%%", 100 * o.confidence);
    std::cout << "| policy | propensities | replay | IPS | SNIPS | DM | DR | ESS (IPS) |\n"
              << "|---|---|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& [name, ev] : rows) {
      const auto& r = ev.report;
      std::snprintf(buf, sizeof buf, "%.0f", r[Estimator::ips].ess);
      std::cout << "| " << name << " | " << ev.propensity_method << " | " << interval(r[Estimator::replay]) << " | "
                << interval(r[Estimator::ips]) << " | " << interval(r[Estimator::snips]) << " | "
                << interval(r[Estimator::dm]) << " | " << interval(r[Estimator::dr]) << " | " << buf << " |\n";
    }
    std::snprintf(buf, sizeof buf, "%.0f", 100 * o.confidence);
    std::cout << "\nvalues: click rate per impression, [" << buf << "% bootstrap interval, " << o.bootstrap
              << " resamples]; epsilon " << o.epsilon << ", Gradient-TS nu " << o.nu << ", AGE-TS lambda' " << o.lambda
              << ", policy seed " << o.policy_seed << "\n";
  }
  std::cout << "\nreal-data checks: " << (ok ? "all intervals hold the value" : "SOME INTERVAL MISSES ITS VALUE") << "\n";
  return ok ? 0 : 1;
}

}  // namespace ope
