// The policies of the offline study, by name: every baseline and AGE variant of the
// exploration headers plus the paper's ablations (METHOD.md, "Baselines" and "The paper's
// results", Tables 1-3), with their tunable knobs, default values and tuning grids.
//
// Knobs (each policy's own; chosen by --tune on validation seeds, see examples/replay/tuning.cpp):
//   egreedy          epsilon     probability that a visit explores
//   ensemble-ucb     scale       c in mu + c * var of the M = 5 members
//   gradient-ts/ucb  nu          scale of the gradient-norm uncertainty (NeuralTS nu)
//   age-*            lambda      lambda', the L2 radius of the move per unit of delta_y, in
//                                the units of the model's embeddings
//                    pgd_steps   PGD iterations T (PGD variants)
// The ablations reuse the knobs of the variant they ablate (AGE-TS, or AGE-UCB for
// age-ucb-nogate), so that each row changes one component only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/explore/ablation.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/scorer.hpp"
#include "model_agent.hpp"

namespace study {

struct PolicySpec {
  std::string name;      // command-line name
  std::string label;     // name in the paper's tables
  std::size_t models = 1;  // LearningSettings::ensemble_size for ensembles (set by the registry user)
  bool ensemble = false;
  bool dgu = false;      // trains and reads the DGU tower
  std::string tuned_as;  // whose tuned knobs it uses (itself when empty)
  Knobs defaults;        // knob values before tuning
  std::vector<Knobs> grid;  // tuning grid (empty: nothing to tune)
  PolicyFactory make;
};

namespace detail {

inline AgeSettings age_settings(const PolicyInputs& in) {
  AgeSettings s;
  s.lambda = knob(in.knobs, "lambda", s.lambda);
  s.pgd_steps = static_cast<std::size_t>(std::lround(knob(in.knobs, "pgd_steps", 3)));
  s.seed = in.seed;
  return s;
}

inline std::vector<const StackedMember<EmbeddingCtrModel>*> member_pointers(const PolicyInputs& in) {
  std::vector<const StackedMember<EmbeddingCtrModel>*> p;
  for (const StackedMember<EmbeddingCtrModel>& m : in.members) p.push_back(&m);
  return p;
}

// The same grid budget for every tuned policy: kGridSize configurations.
inline constexpr std::size_t kGridSize = 6;

inline std::vector<Knobs> one_knob_grid(const std::string& name, std::vector<double> values) {
  std::vector<Knobs> g;
  for (double v : values) g.push_back(Knobs{{name, v}});
  return g;
}

// lambda' values, PGD at T = 3 steps (the library's default, METHOD.md "FGM and PGD").
inline std::vector<Knobs> age_grid(const std::vector<double>& lambdas, bool pgd) {
  std::vector<Knobs> g;
  for (double l : lambdas) {
    if (pgd)
      g.push_back(Knobs{{"lambda", l}, {"pgd_steps", 3}});
    else
      g.push_back(Knobs{{"lambda", l}});
  }
  return g;
}

}  // namespace detail

// Tuning grids of lambda'. The paper's 1e-3 is in its model's units; here (measured with
// `age-replay --diagnose` after the warm start: median |delta_y| 6e-4 for TS, 3e-6 for
// UCB, median ||d f / d h_item|| 0.075, median gap between the two best candidates 0.03)
// it moves f by ~1e-8 and changes no pick. The grids span the range where the move starts
// to change picks (measured share of visits whose pick differs from greedy: TS lambda' 10
// -> 0.9%, 30 -> 5.6%, 100 -> 51%; UCB 3e3 -> 1.1%, 3e4 -> 30%, 1e5 -> 75%), plus the
// paper's value.
inline const std::vector<double>& ts_lambda_grid() {
  static const std::vector<double> g{1e-3, 10, 20, 40, 70, 150};
  return g;
}
inline const std::vector<double>& ucb_lambda_grid() {
  static const std::vector<double> g{1e-3, 3e3, 1e4, 2e4, 4e4, 1e5};
  return g;
}

inline std::vector<PolicySpec> study_policies() {
  using detail::age_grid;
  using detail::age_settings;
  using detail::one_knob_grid;
  std::vector<PolicySpec> p;
  p.push_back({"vanilla", "DNN-vanilla", 1, false, false, "", {}, {},
               [](const PolicyInputs& in) { return box(Greedy<EmbeddingCtrModel>(in.model)); }});
  p.push_back({"random", "random", 1, false, false, "", {}, {},
               [](const PolicyInputs& in) { return box(RandomPolicy<EmbeddingCtrModel>(in.model, in.seed)); }});
  p.push_back({"egreedy", "epsilon-greedy", 1, false, false, "", {{"epsilon", 0.05}},
               one_knob_grid("epsilon", {0.005, 0.01, 0.02, 0.05, 0.1, 0.2}), [](const PolicyInputs& in) {
                 return box(EpsilonGreedy<EmbeddingCtrModel>(in.model, {knob(in.knobs, "epsilon", 0.05), in.seed}));
               }});
  p.push_back({"ensemble-ts", "Ensemble-TS", 0, true, false, "", {}, {}, [](const PolicyInputs& in) {
                 return box(EnsembleTs<StackedMember<EmbeddingCtrModel>>(detail::member_pointers(in), in.seed));
               }});
  p.push_back({"ensemble-ucb", "Ensemble-UCB", 0, true, false, "", {{"scale", 100}},
               one_knob_grid("scale", {1, 10, 100, 1e3, 1e4, 1e5}), [](const PolicyInputs& in) {
                 return box(EnsembleUcb<StackedMember<EmbeddingCtrModel>>(detail::member_pointers(in),
                                                    EnsembleUcbConfig{knob(in.knobs, "scale", 100)}));
               }});
  p.push_back({"gradient-ts", "Gradient-TS", 1, false, false, "", {{"nu", 0.01}},
               one_knob_grid("nu", {0.001, 0.003, 0.01, 0.03, 0.1, 0.3}), [](const PolicyInputs& in) {
                 GradientConfig c;
                 c.nu = knob(in.knobs, "nu", 0.01);
                 c.seed = in.seed;
                 return box(GradientTs<EmbeddingCtrModel>(in.model, c));
               }});
  p.push_back({"gradient-ucb", "Gradient-UCB", 1, false, false, "", {{"nu", 0.03}},
               one_knob_grid("nu", {0.003, 0.01, 0.03, 0.1, 0.3, 1}), [](const PolicyInputs& in) {
                 GradientConfig c;
                 c.nu = knob(in.knobs, "nu", 0.03);
                 c.seed = in.seed;
                 return box(GradientUcb<EmbeddingCtrModel>(in.model, c));
               }});
  p.push_back({"age-ts", "AGE-TS", 1, false, true, "", {{"lambda", 30}, {"pgd_steps", 3}},
               age_grid(ts_lambda_grid(), true),
               [](const PolicyInputs& in) { return box(age_ts(in.model, in.dgu, age_settings(in))); }});
  p.push_back({"age-ucb", "AGE-UCB", 1, false, true, "", {{"lambda", 2e4}, {"pgd_steps", 3}},
               age_grid(ucb_lambda_grid(), true),
               [](const PolicyInputs& in) { return box(age_ucb(in.model, in.dgu, age_settings(in))); }});
  p.push_back({"age-ts-fgm", "AGE-TS (FGM)", 1, false, true, "", {{"lambda", 30}}, age_grid(ts_lambda_grid(), false),
               [](const PolicyInputs& in) { return box(age_ts_fgm(in.model, in.dgu, age_settings(in))); }});
  // Ablations (Table 2): the knobs of the variant they ablate.
  p.push_back({"age-ts-nodelta", "AGE-TS w/o delta_y", 1, false, true, "age-ts", {}, {},
               [](const PolicyInputs& in) { return box(age_ts_without_delta(in.model, in.dgu, age_settings(in))); }});
  p.push_back({"age-ts-nodir", "AGE-TS w/o g~", 1, false, true, "age-ts", {}, {}, [](const PolicyInputs& in) {
                 return box(age_ts_without_direction(in.model, in.dgu, age_settings(in)));
               }});
  p.push_back({"age-ts-nogate", "AGE-TS w/o DGU", 1, false, false, "age-ts", {}, {},
               [](const PolicyInputs& in) { return box(age_ts_without_gate(in.model, age_settings(in))); }});
  for (const char* t : {"0.005", "0.01", "0.02"}) {
    const double threshold = std::stod(t);
    p.push_back({std::string("age-ts-fixed") + t, std::string("AGE-TS fixed threshold ") + t, 1, false, false,
                 "age-ts", {}, {}, [threshold](const PolicyInputs& in) {
                   return box(age_ts_fixed_threshold(in.model, threshold, age_settings(in)));
                 }});
  }
  p.push_back({"age-ucb-nogate", "AGE-UCB w/o DGU", 1, false, false, "age-ucb", {}, {},
               [](const PolicyInputs& in) { return box(age_ucb_without_gate(in.model, age_settings(in))); }});
  return p;
}

inline std::string policy_names() {
  std::string s;
  for (const PolicySpec& p : study_policies()) {
    if (!s.empty()) s += ", ";
    s += p.name;
  }
  return s;
}

// The spec of `name`; ConfigError listing the valid names otherwise.
inline PolicySpec find_policy(const std::string& name) {
  for (PolicySpec& p : study_policies())
    if (p.name == name) return p;
  throw ConfigError("policy: expected one of " + policy_names() + ", got '" + name + "'");
}

}  // namespace study
