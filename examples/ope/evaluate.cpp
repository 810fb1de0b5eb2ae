// Training on OBD rows, evaluating a target on logged decisions, and the report.
#include "evaluate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <ostream>
#include <span>

#include "age/core/rng.hpp"
#include "age/explore/gate.hpp"
#include "age/sim/ope_samples.hpp"
#include "age/train/loss.hpp"
#include "age/train/trainer.hpp"

namespace ope {

using age::EmbeddingCtrModel;
using age::Index;

TrainedModel train_obd(const age::sim::ObdLog& log, RowRange rows, const Options& o) {
  TrainedModel t{EmbeddingCtrModel(obd_layout(log), {32, 16}), age::Tower(), 0, 0, 0};
  age::Rng rng(o.seed, 1);
  t.model.initialize(rng);
  t.dgu = age::make_dgu_tower(t.model.item_dim(), rng, 16);
  age::OnlineTrainer<age::Adam> trainer(t.model, age::Adam{.lr = o.lr}, age::TrainerOptions{.seed = o.seed});
  trainer.attach_item_tower(t.dgu);
  const std::vector<age::Sample> samples = obd_samples(log, rows);
  if (samples.empty()) throw age::InputError("train: rows: expected at least 1 OBD row, got 0");
  t.samples = samples.size();
  for (const auto& s : samples) t.clicks += s.label > 0 ? 1 : 0;
  std::vector<std::size_t> order(samples.size());
  std::vector<age::Sample> batch;
  for (std::size_t epoch = 0; epoch < o.epochs; ++epoch) {
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    age::Rng shuffle(o.seed, 1000 + epoch);
    for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[shuffle.below(i)]);
    double loss = 0;
    std::size_t steps = 0;
    for (std::size_t start = 0; start < order.size(); start += o.batch) {
      batch.clear();
      for (std::size_t j = start; j < std::min(start + o.batch, order.size()); ++j) batch.push_back(samples[order[j]]);
      loss += trainer.step(batch);
      ++steps;
    }
    t.final_loss = steps ? loss / static_cast<double>(steps) : 0.0;
  }
  return t;
}

double obd_auc(const EmbeddingCtrModel& model, const age::sim::ObdLog& log, RowRange rows) {
  std::vector<double> scores, labels;
  age::ModelWorkspace ws;
  age::RowVector p(1);
  for (const age::Sample& s : obd_samples(log, rows)) {
    model.predict(s.user, std::span<const age::SideInput>(&s.item, 1), ws, p);
    scores.push_back(static_cast<double>(p[0]));
    labels.push_back(s.label);
  }
  const double positives = std::count(labels.begin(), labels.end(), 1.0);
  if (positives == 0 || positives == static_cast<double>(labels.size())) return std::nan("");
  return age::auc(scores, labels);
}

namespace {

// The decision embedded by one model (its own tables), into caller-owned storage.
struct Embedded {
  age::Vector user;
  age::Matrix items;
  age::Request request(std::uint64_t id) const { return age::Request{user, items, id}; }
};

void embed(const EmbeddingCtrModel& model, const Decision& d, Embedded& e) {
  if (!d.user || !d.candidates)
    throw age::InputError("decision " + std::to_string(d.id) +
                          ": features: expected the request's user and candidate features (a policy with a model "
                          "re-scores the request), got none in the log");
  model.embed_request(*d.user, *d.candidates, e.user, e.items);
}

}  // namespace

Evaluation evaluate(Target& target, const DecisionSource& source, const Models& models, const Options& o) {
  const auto start = std::chrono::steady_clock::now();
  Evaluation ev;
  ev.policy = o.policy;
  ev.propensity_method = target.propensity_method();
  std::vector<age::sim::OpeSample> samples;
  Embedded by_policy, by_reward;
  Eigen::VectorXd prob;
  age::RowVector q;
  age::ModelWorkspace reward_ws;
  source([&](const Decision& d) {
    std::optional<age::Request> request;
    if (target.needs_model()) {
      if (!models.policy) throw age::ConfigError("policy " + o.policy + ": expected --model FILE, got none");
      embed(*models.policy, d, by_policy);
      request.emplace(by_policy.request(d.id));
    }
    Index pick = -1;
    target.distribution(d, request ? &*request : nullptr, prob, pick);
    if (prob.size() != static_cast<Index>(d.item_ids.size()))
      age::detail::require_dim("target distribution (candidates)", d.item_ids.size(), static_cast<std::size_t>(prob.size()));
    std::span<const age::Scalar> q_span;
    if (models.reward) {
      if (models.reward == models.policy && target.needs_model()) {
        by_reward.user = by_policy.user;
        by_reward.items = by_policy.items;
      } else {
        embed(*models.reward, d, by_reward);
      }
      q.resize(by_reward.items.cols());
      age::predict_probabilities(*models.reward, by_reward.user, by_reward.items, nullptr, reward_ws.tower, q);
      q_span = std::span<const age::Scalar>(q.data(), static_cast<std::size_t>(q.size()));
    }
    samples.push_back(age::sim::make_ope_sample(std::span<const double>(prob.data(), static_cast<std::size_t>(prob.size())),
                                                pick, d.shown, d.logging_propensity, d.reward, q_span));
    ev.clicks += d.reward > 0 ? 1 : 0;
  });
  ev.decisions = samples.size();
  ev.report = age::sim::evaluate_off_policy(
      samples, {.bootstrap = o.bootstrap, .confidence = o.confidence, .seed = o.seed});
  ev.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return ev;
}

void observe(Target& target, const DecisionSource& source, const EmbeddingCtrModel& model) {
  if (!target.learns()) return;
  Embedded e;
  source([&](const Decision& d) {
    embed(model, d, e);
    target.observe(d, e.request(d.id));
  });
}

std::string percent(double v, int decimals) {
  if (std::isnan(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f%%", decimals, 100.0 * v);
  return buf;
}

void print_evaluation(std::ostream& out, const Evaluation& e) {
  const age::sim::OpeReport& r = e.report;
  char buf[256];
  out << "policy " << e.policy << " on " << e.log << ": " << e.decisions << " decisions, " << e.clicks
      << " clicks; logged click rate " << percent(r.logged_value) << " (s.e. " << percent(r.logged_std_error) << ")\n";
  std::snprintf(buf, sizeof buf, "propensities: %s; logging policy uniform: %s; largest weight %.3g; %.1f s\n",
                e.propensity_method.c_str(), r.uniform_logging ? "yes" : "no", r.max_weight, e.seconds);
  out << buf;
  std::snprintf(buf, sizeof buf, "| estimator | value | %.0f%% interval (bootstrap, %zu) | s.e. | ESS | note |\n",
                100 * r.confidence, r.bootstrap);
  out << "\n" << buf << "|---|---:|---|---:|---:|---|\n";
  for (const age::sim::OpeEstimate& x : r.estimates) {
    std::snprintf(buf, sizeof buf, "| %s | %s | [%s, %s] | %s | %.0f | %s |\n", std::string(to_string(x.estimator)).c_str(),
                  percent(x.value).c_str(), percent(x.lower).c_str(), percent(x.upper).c_str(),
                  percent(x.std_error).c_str(), x.ess, x.note.c_str());
    out << buf;
  }
  out << "\n";
}

}  // namespace ope
