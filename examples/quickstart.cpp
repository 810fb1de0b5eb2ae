// Quickstart: declare features, build a CTR model, train it online on synthetic clicks,
// then score one request and print its candidates ranked by predicted CTR.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <vector>

#include "age/model/embedding_model.hpp"
#include "age/train/trainer.hpp"

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

  // 4. Online training: 4,000 mini-batches of 64 impressions, Adam, dropout p = 0.01.
  OnlineTrainer<Adam> trainer(model, Adam{.lr = 0.01}, TrainerOptions{.dropout = 0.01, .seed = 1});
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

  // 5. Score one request: a user interested in topics 3 and 7, eight candidate ads.
  const SideInput user{FieldInput{{3, 7}, {}}, FieldInput{{}, {0.8f}}};
  const std::vector<std::uint64_t> ads{3, 11, 17, 20, 27, 32, 35, 38};
  std::vector<SideInput> candidates;
  for (std::uint64_t ad : ads) candidates.push_back(item_of(ad));
  ModelWorkspace ws;
  RowVector pctr(static_cast<Index>(ads.size()));
  model.predict(user, candidates, ws, pctr);

  std::vector<Index> order(ads.size());
  std::iota(order.begin(), order.end(), Index{0});
  std::sort(order.begin(), order.end(), [&](Index a, Index b) { return pctr[a] > pctr[b]; });
  std::printf("\nrequest: user topics {3, 7}, activity 0.8, %zu candidates\n", ads.size());
  std::printf("rank  ad  topic   pCTR  true CTR\n");
  for (std::size_t r = 0; r < order.size(); ++r) {
    const std::uint64_t ad = ads[static_cast<std::size_t>(order[r])];
    std::printf("%4zu  %2u  %5u  %.3f  %.3f\n", r + 1, static_cast<unsigned>(ad), static_cast<unsigned>(topic_of(ad)),
                pctr[order[r]], true_ctr(3, 7, 0.8f, ad));
  }
  return 0;
}
