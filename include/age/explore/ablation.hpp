// The paper's ablations (Table 2) and its FGM/PGD comparison (Table 3) as ready-made
// configurations of AgeScorer, so that a replay study builds each arm in one line:
//
//   AgeSettings s{.lambda = 1e-3, .seed = 7};
//   auto full     = age_ts(model, dgu, s);                 // AGE-TS (PGD, DGU)
//   auto no_delta = age_ts_without_delta(model, dgu, s);   // noise instead of delta_y
//   auto no_dir   = age_ts_without_direction(model, dgu, s);
//   auto no_gate  = age_ts_without_gate(model, s);
//   auto fixed    = age_ts_fixed_threshold(model, 0.01, s);
//   auto fgm      = age_ts_fgm(model, dgu, s);
#pragma once

#include <cstddef>
#include <cstdint>

#include "age/explore/gate.hpp"
#include "age/explore/perturbation.hpp"
#include "age/explore/scorer.hpp"
#include "age/explore/uncertainty.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/tower.hpp"

namespace age {

// AGE without delta_y: Gaussian noise of the same scale (GaussianNoise).
template <class Model>
using AgeTsWithoutDelta = AgeScorer<Model, GaussianNoise, Pgd, DguGate>;
// AGE without g~: a random unit direction (RandomDirection).
template <class Model>
using AgeTsWithoutDirection = AgeScorer<Model, McDropoutTs, RandomDirection, DguGate>;
// AGE without the DGU: every candidate explored.
template <class Model>
using AgeTsWithoutGate = AgeScorer<Model, McDropoutTs, Pgd, AlwaysOpen>;
template <class Model>
using AgeUcbWithoutGate = AgeScorer<Model, McDropoutUcb, Pgd, AlwaysOpen>;
// AGE with a fixed threshold instead of the DGU (0.005 / 0.01 / 0.02 in the paper).
template <class Model>
using AgeTsFixedThreshold = AgeScorer<Model, McDropoutTs, Pgd, FixedThresholdGate>;
// The online setting: DGU and an impression cap (explore items with < 3000 impressions).
template <class Model>
using AgeTsImpressionCapped = AgeScorer<Model, McDropoutTs, Pgd, AllOf<DguGate, ImpressionCapGate>>;

// The settings the configurations share; defaults as in METHOD.md, "Open choices and the
// library's defaults".
struct AgeSettings {
  double lambda = 1e-3;          // lambda', in the model's embedding units (see perturbation.hpp)
  double dropout_rate = 0.01;    // MC-Dropout p
  std::size_t ucb_samples = 20;  // N mask samples of the UCB variant
  bool ucb_sqrt = false;
  bool per_candidate_masks = false;
  std::size_t pgd_steps = 3;
  double pgd_step_scale = 2.5;
  PerturbTarget target = PerturbTarget::items;
  std::uint64_t seed = 0;

  McDropoutTs ts() const { return {dropout_rate, per_candidate_masks}; }
  McDropoutUcb ucb() const { return {dropout_rate, ucb_samples, ucb_sqrt, per_candidate_masks}; }
  GaussianNoise noise() const { return {dropout_rate, per_candidate_masks, 0.0}; }
  Pgd pgd() const { return {lambda, target, pgd_steps, pgd_step_scale, 0.0}; }
  Fgm fgm() const { return {lambda, target}; }
  RandomDirection random_direction() const { return {lambda, target}; }
};

template <CtrModel Model>
AgeTs<Model> age_ts(const Model& model, const Tower& dgu, const AgeSettings& s = {}) {
  return AgeTs<Model>(model, DguGate(dgu), s.ts(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeUcb<Model> age_ucb(const Model& model, const Tower& dgu, const AgeSettings& s = {}) {
  return AgeUcb<Model>(model, DguGate(dgu), s.ucb(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeTsFgm<Model> age_ts_fgm(const Model& model, const Tower& dgu, const AgeSettings& s = {}) {
  return AgeTsFgm<Model>(model, DguGate(dgu), s.ts(), s.fgm(), s.seed);
}
template <CtrModel Model>
AgeUcbFgm<Model> age_ucb_fgm(const Model& model, const Tower& dgu, const AgeSettings& s = {}) {
  return AgeUcbFgm<Model>(model, DguGate(dgu), s.ucb(), s.fgm(), s.seed);
}
template <CtrModel Model>
AgeTsWithoutDelta<Model> age_ts_without_delta(const Model& model, const Tower& dgu, const AgeSettings& s = {}) {
  return AgeTsWithoutDelta<Model>(model, DguGate(dgu), s.noise(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeTsWithoutDirection<Model> age_ts_without_direction(const Model& model, const Tower& dgu,
                                                      const AgeSettings& s = {}) {
  return AgeTsWithoutDirection<Model>(model, DguGate(dgu), s.ts(), s.random_direction(), s.seed);
}
template <CtrModel Model>
AgeTsWithoutGate<Model> age_ts_without_gate(const Model& model, const AgeSettings& s = {}) {
  return AgeTsWithoutGate<Model>(model, AlwaysOpen{}, s.ts(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeUcbWithoutGate<Model> age_ucb_without_gate(const Model& model, const AgeSettings& s = {}) {
  return AgeUcbWithoutGate<Model>(model, AlwaysOpen{}, s.ucb(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeTsFixedThreshold<Model> age_ts_fixed_threshold(const Model& model, double threshold, const AgeSettings& s = {}) {
  return AgeTsFixedThreshold<Model>(model, FixedThresholdGate{threshold}, s.ts(), s.pgd(), s.seed);
}
template <CtrModel Model>
AgeTsImpressionCapped<Model> age_ts_impression_capped(const Model& model, const Tower& dgu,
                                                      std::uint64_t limit = 3000, const AgeSettings& s = {}) {
  return AgeTsImpressionCapped<Model>(model, AllOf<DguGate, ImpressionCapGate>(DguGate(dgu), ImpressionCapGate{limit}),
                                      s.ts(), s.pgd(), s.seed);
}

}  // namespace age
