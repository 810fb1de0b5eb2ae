// Target policies of age-ope by name: the library's Explorers over an EmbeddingCtrModel
// (greedy, epsilon-greedy, gradient-ts, gradient-ucb, age-ts, age-ts-fgm, age-ucb), whose
// probabilities come from age/explore/propensity.hpp, and two model-free ones: uniform and
// bts-marginal (the per-position item shares of an OBD log, e.g. the Thompson-sampling log's
// time-averaged policy).
#pragma once

#include <memory>
#include <string>
#include <Eigen/Core>

#include "age/explore/propensity.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/sim/obd.hpp"
#include "data.hpp"
#include "options.hpp"

namespace ope {

class Target {
 public:
  virtual ~Target() = default;
  // pi(. | x, position) over the decision's candidates into `prob`, and the target's own
  // pick at the position for the decision's request id into `pick` (-1: unknown).
  // `request` is the decision embedded by the policy's model (null for model-free targets).
  virtual void distribution(const Decision& d, const age::Request* request, Eigen::VectorXd& prob,
                            age::Index& pick) = 0;
  // The target's own pick at `position` for `request` (its id the logged one), without
  // propensities; -1 for a model-free target.
  virtual age::Index own_pick(const age::Request&, age::Index) { return -1; }
  // Every position's propensities (up to `positions`) of a model-based target for
  // `request` (its id the logged one); false for a model-free target.
  virtual bool propensities(const age::Request&, std::size_t, age::Propensities&) { return false; }
  // Feedback of a logged decision, for a policy that learns (Gradient-TS's U).
  virtual void observe(const Decision&, const age::Request&) {}
  virtual bool learns() const { return false; }
  virtual bool needs_model() const { return true; }
  // "exact" or "monte_carlo, K draws", for the report.
  virtual std::string propensity_method() const = 0;
};

struct PolicyInputs {
  const age::EmbeddingCtrModel* model = nullptr;
  const age::Tower* dgu = nullptr;
  const age::sim::ObdLog* marginal = nullptr;  // bts-marginal
};

// ConfigError naming the policy when it is unknown or lacks an input (model, DGU, log).
std::unique_ptr<Target> make_target(const Options& o, const PolicyInputs& in);

}  // namespace ope
