// Quickstart: declare features, build a CTR model and its Dynamic Gating Unit, train both
// online on synthetic clicks, then score one request with AGE-TS and print, per candidate,
// the base pCTR, the MC-Dropout uncertainty, the gate and the explored score it is ranked by.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "age/age.hpp"

int main() {
  using namespace age;
  // 1. Features. User: interest topics (multi-hot, mean-pooled) and activity (dense).
  //    Item: the ad's id and its topic (categorical; ids are hashed into the given rows).
  FeatureLayout layout;
  layout.add_multi_hot("user_topics", Side::User, 1000, 8, Pooling::Mean)
      .add_dense("user_activity", Side::User, 1)
      .add_categorical("ad_id", Side::Item, 10000, 8)
      .add_categorical("ad_topic", Side::Item, 1000, 8);

  // 2. Model: embeddings -> MLP 64-32 -> pCTR. Embeddings start at N(0, 0.3^2), wide
  //    enough for the tower to tell ids apart from the first step.
  EmbeddingCtrModel model(layout, {64, 32});
  Rng init(42);
  model.initialize(init, 0.3);

  // 3. A synthetic world: ad a has topic a % 10; users click ads of their own two topics
  //    far more often, and active users click more.
  auto topic_of = [](std::uint64_t ad) { return ad % 10; };
  auto true_ctr = [&](std::uint64_t t1, std::uint64_t t2, float activity, std::uint64_t ad) {
    const bool match = topic_of(ad) == t1 || topic_of(ad) == t2;
    return (match ? 0.25 : 0.03) * (0.5 + activity);
  };
  auto item_of = [&](std::uint64_t ad) { return SideInput{FieldInput{{ad}, {}}, FieldInput{{topic_of(ad)}, {}}}; };
  auto impression = [&](Rng& rng) {
    const std::uint64_t t1 = rng.below(10), t2 = rng.below(10), ad = rng.below(40);
    const float activity = static_cast<float>(rng.uniform());
    const bool click = rng.bernoulli(true_ctr(t1, t2, activity, ad));
    return Sample{{FieldInput{{t1, t2}, {}}, FieldInput{{}, {activity}}}, item_of(ad), click ? 1.0f : 0.0f};
  };

  // 4. Online training: 4,000 mini-batches of 64 impressions, Adam, dropout p = 0.01. The
  //    DGU (a 2-layer MLP on the item embedding, estimating the item's average CTR) is
  //    trained alongside with a stop-gradient into the shared item embeddings.
  Tower dgu = make_dgu_tower(model.item_dim(), init);
  OnlineTrainer<Adam> trainer(model, Adam{.lr = 0.01}, TrainerOptions{.dropout = 0.01, .seed = 1});
  trainer.attach_item_tower(dgu);
  Rng world(7);
  std::vector<Sample> batch(64);
  double loss = 0.0;
  for (int step = 1; step <= 4000; ++step) {
    for (Sample& s : batch) s = impression(world);
    loss += trainer.step(batch);
    if (step % 1000 == 0) {
      std::printf("step %4d  mean training loss of the last 1000 batches %.4f\n", step, loss / 1000);
      loss = 0.0;
    }
  }

  // 5. Score one request with AGE-TS: a user interested in topics 3 and 7, eight candidate
  //    ads, one of them (ad 5003) never seen in training. lambda' is in the units of this
  //    model's embeddings (std 0.3 here), not the paper's 1e-3.
  const SideInput user{FieldInput{{3, 7}, {}}, FieldInput{{}, {0.8f}}};
  const std::vector<std::uint64_t> ads{3, 11, 17, 20, 27, 32, 38, 5003};
  std::vector<SideInput> candidates;
  for (std::uint64_t ad : ads) candidates.push_back(item_of(ad));
  Vector user_embedding;
  Matrix item_embeddings;  // item_dim x N, one column per candidate
  model.embed_request(user, candidates, user_embedding, item_embeddings);

  const AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu), McDropoutTs{.rate = 0.01}, Pgd{.lambda = 10.0},
                                        /*seed=*/2026);
  const ScoredRequest out = scorer.score(Request{user_embedding, item_embeddings, /*id=*/17});

  std::printf("\nrequest 17: user topics {3, 7}, activity 0.8, %zu candidates (AGE-TS, PGD, DGU)\n", ads.size());
  std::printf("rank    ad  topic  true CTR   base    delta    DGU  gate  explored\n");
  RowVector dgu_ctr(out.size());
  DguGate::Workspace gate_ws;
  DguGate(dgu).average_ctr(item_embeddings, gate_ws, dgu_ctr);
  for (std::size_t r = 0; r < out.ranking.size(); ++r) {
    const Index i = out.ranking[r];
    const std::uint64_t ad = ads[static_cast<std::size_t>(i)];
    std::printf("%4zu  %4u  %5u     %.3f  %.3f  %+.4f  %.3f  %4s     %.3f\n", r + 1, static_cast<unsigned>(ad),
                static_cast<unsigned>(topic_of(ad)), true_ctr(3, 7, 0.8f, ad), out.base[i], out.delta[i], dgu_ctr[i],
                out.gate[static_cast<std::size_t>(i)] ? "open" : "shut", out.explored[i]);
  }
  return 0;
}
