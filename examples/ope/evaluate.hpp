// The jobs of age-ope: training the library's model on OBD rows, evaluating a target on a
// stream of logged decisions, and printing the tables.
#pragma once

#include <cstddef>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/sim/obd.hpp"
#include "age/sim/ope.hpp"
#include "data.hpp"
#include "options.hpp"
#include "policies.hpp"

namespace ope {

// A source of decisions: calls its argument once per decision.
using DecisionSource = std::function<void(const DecisionFn&)>;

struct TrainedModel {
  age::EmbeddingCtrModel model;
  age::Tower dgu;
  std::size_t samples = 0, clicks = 0;
  double final_loss = 0;
};

// The library's CTR model (obd_layout(), tower 32-16) and its DGU trained together
// (OnlineTrainer<Adam>, (M18)) on the OBD rows in `rows`: --epochs passes in a shuffled
// order (Rng(--seed, epoch)), mini-batches of --batch, learning rate --lr.
TrainedModel train_obd(const age::sim::ObdLog& log, RowRange rows, const Options& o);

// The AUC of the model's pCTR of the shown item on the OBD rows in `rows` (NaN with one class).
double obd_auc(const age::EmbeddingCtrModel& model, const age::sim::ObdLog& log, RowRange rows);

struct Models {
  const age::EmbeddingCtrModel* policy = nullptr;  // embeds the decisions for the target
  const age::EmbeddingCtrModel* reward = nullptr;  // DM/DR's q; null: no DM, DR
};

struct Evaluation {
  std::string policy, log, propensity_method;
  std::size_t decisions = 0, clicks = 0;
  double seconds = 0;
  age::sim::OpeReport report;
};

// The target's OpeSamples on every decision of `source`, then the estimators.
Evaluation evaluate(Target& target, const DecisionSource& source, const Models& models, const Options& o);

// A learning target observes every decision of `source` (e.g. Gradient-TS's U on the
// training rows), embedded by `model`.
void observe(Target& target, const DecisionSource& source, const age::EmbeddingCtrModel& model);

// "0.460%" and friends.
std::string percent(double v, int decimals = 3);

// The full table of one evaluation (markdown), with a header of what was evaluated.
void print_evaluation(std::ostream& out, const Evaluation& e);

}  // namespace ope
