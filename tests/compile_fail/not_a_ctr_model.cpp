// Must NOT compile: the type below scores candidates but is not a CtrModel (no Workspace,
// no Mask, no embedding-level logits or gradient), so AgeScorer rejects it and the
// compiler names the concept. Built only by the compile_fail.not_a_ctr_model test.
#include "age/explore/scorer.hpp"

struct PlainScorer {
  float score(const age::Matrix& features) const { return features.sum(); }
};

int main() {
  const PlainScorer model;
  const age::AgeScorer<PlainScorer, age::McDropoutTs, age::Pgd, age::AlwaysOpen> scorer(model);
  (void)scorer;
  return 0;
}
