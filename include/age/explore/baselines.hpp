// The paper's baseline exploration policies ((M19)-(M22), METHOD.md "Baselines"; Table 1),
// behind the same Explorer interface as the AGE scorer so that the replay study
// compares them like for like:
//   Greedy (DNN-vanilla), RandomPolicy, EpsilonGreedy        explore/baselines/simple.hpp
//   EnsembleTs, EnsembleUcb                                  explore/baselines/ensemble.hpp
//   GradientTs, GradientUcb (LearningExplorers)              explore/baselines/gradient.hpp
// UR-gradient (Underestimation Refinement) is not provided: its formula is not public.
#pragma once

#include "age/explore/baselines/ensemble.hpp"
#include "age/explore/baselines/gradient.hpp"
#include "age/explore/baselines/simple.hpp"
