// Explore your own CTR model with AGE. Two models written outside the library
// (examples/custom_model.hpp): a factorization machine with its own gradient, used
// directly, and a black-box engine that only has logits, through the finite-difference
// adapter. Each is explored with AgeScorer in a few lines, and one request's breakdown is
// printed: base pCTR, delta_y, gate, explored score and rank.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "age/explore/scorer.hpp"
#include "age/model/finite_difference.hpp"
#include "custom_model.hpp"

namespace {
void print_breakdown(const char* title, const age::ScoredRequest& out) {
  std::vector<std::size_t> rank(static_cast<std::size_t>(out.size()));
  for (std::size_t r = 0; r < out.ranking.size(); ++r) rank[static_cast<std::size_t>(out.ranking[r])] = r + 1;
  std::printf("%s\n  cand   base     delta      gate  explored  rank\n", title);
  for (age::Index i = 0; i < out.size(); ++i)
    std::printf("  %4ld  %.5f  %+.6f  %4d  %.5f  %4zu\n", static_cast<long>(i), out.base[i], out.delta[i],
                out.gate[static_cast<std::size_t>(i)], out.explored[i], rank[static_cast<std::size_t>(i)]);
  std::printf("  top-3:");
  for (const age::Index c : out.top_k(3)) std::printf(" %ld", static_cast<long>(c));
  std::printf("\n\n");
}
}  // namespace

int main() {
  // One request at the embedding level: a user vector and 6 candidate item vectors (one
  // column each), as your feature pipeline would produce them.
  const std::size_t user_dim = 6, item_dim = 8;
  const age::Index candidates = 6;
  age::Rng rng(2024);
  age::Matrix user(user_dim, 1), items(item_dim, candidates);
  for (age::Index i = 0; i < user.size(); ++i) user.data()[i] = static_cast<age::Scalar>(rng.normal());
  for (age::Index i = 0; i < items.size(); ++i) items.data()[i] = static_cast<age::Scalar>(rng.normal());
  const std::uint64_t request_id = 1004;

  // lambda' is in embedding units: these embeddings have norm ~3, the paper's had another
  // scale, so it is set here for this model (and likewise the dropout rate for a model
  // with only 4 factors or 16 hidden units).

  // 1. A model with its own gradient: AGE-TS with PGD, exploring only items shown fewer
  //    than 3000 times (counts supplied with the request).
  const example::FactorizationMachine fm(user_dim, item_dim, /*factors=*/4, /*seed=*/1);
  const age::AgeScorer<example::FactorizationMachine, age::McDropoutTs, age::Pgd, age::ImpressionCapGate> fm_scorer(
      fm, age::ImpressionCapGate{3000}, age::McDropoutTs{.rate = 0.1}, age::Pgd{.lambda = 5.0}, /*seed=*/42);
  const std::vector<std::uint64_t> shown{12, 40000, 150, 2999, 7, 3000};
  print_breakdown("FactorizationMachine (analytic gradient), AGE-TS + PGD, impression cap 3000:",
                  fm_scorer.score(age::Request{user, items, request_id, shown}));

  // 2. A black box with logits only: central finite differences supply the gradient;
  //    AGE-UCB (square root of the MC-Dropout spread) with FGM, every candidate open.
  const example::LegacyEngine engine(user_dim, item_dim, /*hidden=*/16, /*seed=*/2);
  const age::FiniteDifferenceModel<example::LegacyEngine> adapted(engine, /*step=*/1e-3);
  const age::AgeScorer<age::FiniteDifferenceModel<example::LegacyEngine>, age::McDropoutUcb, age::Fgm,
                       age::AlwaysOpen>
      engine_scorer(adapted, {}, age::McDropoutUcb{.rate = 0.1, .sqrt = true}, age::Fgm{.lambda = 1.0}, 42);
  print_breakdown("LegacyEngine (logits only, finite differences), AGE-UCB + FGM, no gate:",
                  engine_scorer.score(age::Request{user, items, request_id}));
  return 0;
}
