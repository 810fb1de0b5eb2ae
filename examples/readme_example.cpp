// README.md's first example, whole (tests/readme_example.cmake checks that they are identical).
#include <cstdint>
#include <cstdio>
#include <vector>

#include <age/age.hpp>

int main() {
  using namespace age;
  FeatureLayout layout;  // user fields and item fields; ids are hashed into the given rows
  layout.add_multi_hot("user_topics", Side::User, 1000, 16, Pooling::Mean)
      .add_categorical("ad_id", Side::Item, 100000, 16);
  EmbeddingCtrModel model(layout, {256, 64});  // embeddings -> MLP 256-64 -> pCTR
  Rng rng(42);
  model.initialize(rng);
  Tower dgu = make_dgu_tower(model.item_dim(), rng);  // the Dynamic Gating Unit

  OnlineTrainer<Adam> trainer(model, Adam{.lr = 1e-3});
  trainer.attach_item_tower(dgu);  // trained with the model, stop-gradient into its embeddings
  auto one_id = [](std::uint64_t id) { return SideInput{FieldInput{{id}, {}}}; };
  std::vector<Sample> batch;  // the impressions your service logged: user, item, click
  for (std::uint64_t ad = 0; ad < 64; ++ad)
    batch.push_back(Sample{one_id(ad % 10), one_id(ad), ad % 4 == 0 ? 1.0f : 0.0f});
  trainer.step(batch);

  const SideInput user{FieldInput{{3, 7}, {}}};  // a user interested in topics 3 and 7
  const std::vector<SideInput> candidates{one_id(10), one_id(11), one_id(12), one_id(5003)};
  Vector user_embedding;
  Matrix item_embeddings;  // item_dim x N, one column per candidate
  model.embed_request(user, candidates, user_embedding, item_embeddings);

  // AGE-TS: PGD, DGU gate; lambda' is a length in this model's embedding units.
  const AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu), McDropoutTs{}, Pgd{.lambda = 10.0});
  const ScoredRequest out = scorer.score(Request{user_embedding, item_embeddings, /*id=*/17});
  for (const Index i : out.top_k(3))
    std::printf("candidate %ld: base %.4f delta %+.6f gate %d explored %.4f\n", static_cast<long>(i),
                out.base[i], out.delta[i], out.gate[static_cast<std::size_t>(i)], out.explored[i]);
  return 0;
}
