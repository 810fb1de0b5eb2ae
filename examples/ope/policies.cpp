// The target policies of age-ope.
#include "policies.hpp"

#include <map>
#include <utility>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/explore/ablation.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/propensity.hpp"

namespace ope {

using age::ConfigError;
using age::EmbeddingCtrModel;
using age::Index;

namespace {

// A library Explorer: its own pick is its ranking at the position for the logged id; its
// probabilities are the closed form or the Monte-Carlo estimate (age/explore/propensity.hpp).
template <age::Explorer P>
class ExplorerTarget final : public Target {
 public:
  ExplorerTarget(P policy, age::PropensityOptions options) : policy_(std::move(policy)), options_(options) {
    options_.validate();
  }

  void distribution(const Decision& d, const age::Request* request, Eigen::VectorXd& prob, Index& pick) override {
    policy_.score(*request, served_, ws_);
    age::PropensityOptions opts = options_;
    opts.positions = static_cast<std::size_t>(d.position) + 1;
    age::compute_propensities(policy_, *request, served_, opts, ws_, pws_, props_);
    if (d.position >= props_.positions())
      throw age::InputError("decision " + std::to_string(d.id) + ": position " + std::to_string(d.position + 1) +
                            " of a request of " + std::to_string(request->size()) + " candidates");
    prob = props_.prob.col(d.position);
    pick = served_.ranking[static_cast<std::size_t>(d.position)];
  }

  Index own_pick(const age::Request& request, Index position) override {
    policy_.score(request, served_, ws_);
    return served_.ranking.at(static_cast<std::size_t>(position));
  }

  bool propensities(const age::Request& request, std::size_t positions, age::Propensities& out) override {
    policy_.score(request, served_, ws_);
    age::PropensityOptions opts = options_;
    opts.positions = positions;
    age::compute_propensities(policy_, request, served_, opts, ws_, pws_, out);
    return true;
  }

  void observe(const Decision& d, const age::Request& request) override {
    if constexpr (age::LearningExplorer<P>) policy_.observe(request, d.shown, d.reward > 0);
  }
  bool learns() const override { return age::LearningExplorer<P>; }

  std::string propensity_method() const override {
    if constexpr (age::HasClosedFormPropensity<P>) return "exact (closed form)";
    return "Monte-Carlo, " + std::to_string(options_.draws) + " draws";
  }

 private:
  P policy_;
  age::PropensityOptions options_;
  typename P::Workspace ws_;
  age::PropensityWorkspace pws_;
  age::ScoredRequest served_;
  age::Propensities props_;
};

// Every candidate with 1/N at every position; its own pick uniform from Rng(seed, id).
class UniformTarget final : public Target {
 public:
  explicit UniformTarget(std::uint64_t seed) : seed_(seed) {}
  void distribution(const Decision& d, const age::Request*, Eigen::VectorXd& prob, Index& pick) override {
    const auto n = static_cast<Index>(d.item_ids.size());
    prob.setConstant(n, 1.0 / static_cast<double>(n));
    age::Rng rng(seed_, d.id);
    pick = static_cast<Index>(rng.below(static_cast<std::uint64_t>(n)));
  }
  bool needs_model() const override { return false; }
  std::string propensity_method() const override { return "exact (1/N)"; }

 private:
  std::uint64_t seed_;
};

// A context-free policy that shows item a at position k with the share of the log's rows at
// position k that show a: for the Bernoulli Thompson sampling log, an unbiased estimate of
// its time-averaged action distribution, hence of a policy whose value is the log's own
// click rate when the click rates do not drift.
class MarginalTarget final : public Target {
 public:
  MarginalTarget(const age::sim::ObdLog& log, std::uint64_t seed) : seed_(seed) {
    std::map<std::uint32_t, double> rows;
    for (const auto& r : log.records) {
      share_[{r.position, r.item}] += 1;
      rows[r.position] += 1;
    }
    for (auto& [key, v] : share_) v /= rows[key.first];
  }
  void distribution(const Decision& d, const age::Request*, Eigen::VectorXd& prob, Index& pick) override {
    const auto n = static_cast<Index>(d.item_ids.size());
    prob.setZero(n);
    const auto position = static_cast<std::uint32_t>(d.position + 1);
    for (Index i = 0; i < n; ++i) {
      const auto it = share_.find({position, d.item_ids[static_cast<std::size_t>(i)]});
      if (it != share_.end()) prob[i] = it->second;
    }
    const double total = prob.sum();
    if (!(total > 0))
      throw age::InputError("bts-marginal: decision " + std::to_string(d.id) + ": expected candidates the log showed at position " +
                            std::to_string(position) + ", got none");
    prob /= total;  // candidates the log never showed there have no mass to redistribute
    age::Rng rng(seed_, d.id);
    double u = rng.uniform();
    pick = n - 1;
    for (Index i = 0; i < n; ++i) {
      if (u < prob[i]) {
        pick = i;
        break;
      }
      u -= prob[i];
    }
  }
  bool needs_model() const override { return false; }
  std::string propensity_method() const override { return "exact (the log's shares)"; }

 private:
  std::map<std::pair<std::uint32_t, std::uint64_t>, double> share_;
  std::uint64_t seed_;
};

template <class P>
std::unique_ptr<Target> wrap(P policy, const Options& o) {
  return std::make_unique<ExplorerTarget<P>>(std::move(policy),
                                             age::PropensityOptions{.draws = o.draws, .floor = o.floor, .seed = o.seed});
}

}  // namespace

std::unique_ptr<Target> make_target(const Options& o, const PolicyInputs& in) {
  const std::string& name = o.policy;
  if (name == "uniform") return std::make_unique<UniformTarget>(o.policy_seed);
  if (name == "bts-marginal") {
    if (!in.marginal) throw ConfigError("policy bts-marginal: expected --marginal-log and --marginal-items, got none");
    return std::make_unique<MarginalTarget>(*in.marginal, o.policy_seed);
  }
  if (!in.model) throw ConfigError("policy " + name + ": expected --model FILE, got none");
  const EmbeddingCtrModel& m = *in.model;
  if (name == "greedy") return wrap(age::Greedy<EmbeddingCtrModel>(m), o);
  if (name == "epsilon-greedy")
    return wrap(age::EpsilonGreedy<EmbeddingCtrModel>(m, {.epsilon = o.epsilon, .seed = o.policy_seed}), o);
  if (name == "gradient-ts")
    return wrap(age::GradientTs<EmbeddingCtrModel>(m, {.nu = o.nu, .seed = o.policy_seed}), o);
  if (name == "gradient-ucb") return wrap(age::GradientUcb<EmbeddingCtrModel>(m, {.nu = o.nu}), o);
  if (name == "age-ts" || name == "age-ts-fgm" || name == "age-ucb") {
    if (!in.dgu) throw ConfigError("policy " + name + ": expected --dgu FILE (the Dynamic Gating Unit), got none");
    age::AgeSettings s;
    s.lambda = o.lambda;
    s.seed = o.policy_seed;
    if (name == "age-ts") return wrap(age::age_ts(m, *in.dgu, s), o);
    if (name == "age-ts-fgm") return wrap(age::age_ts_fgm(m, *in.dgu, s), o);
    return wrap(age::age_ucb(m, *in.dgu, s), o);
  }
  throw ConfigError("--policy: expected uniform, bts-marginal, greedy, epsilon-greedy, gradient-ts, gradient-ucb, "
                    "age-ts, age-ts-fgm or age-ucb, got '" +
                    name + "'");
}

}  // namespace ope
