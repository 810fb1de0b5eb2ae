// Must compile: the control for not_a_ctr_model.cpp, built the same way with a type that
// does satisfy CtrModel, so that a failure there is the concept's and not the harness's.
#include "age/explore/scorer.hpp"
#include "age/model/tower.hpp"

int main() {
  const age::Tower model(2, 3, {4});
  const age::AgeScorer<age::Tower, age::McDropoutTs, age::Pgd, age::AlwaysOpen> scorer(model);
  (void)scorer;
  return 0;
}
