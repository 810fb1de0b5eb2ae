// A user translation unit for benchmarks/compile_time/measure.sh: include the umbrella
// header and score one request with AgeTs.
#include <cstdio>
#include <age/age.hpp>

int main() {
  using namespace age;
  FeatureLayout layout;
  layout.add_multi_hot("user_topics", Side::User, 1000, 16, Pooling::Mean)
      .add_categorical("ad_id", Side::Item, 100000, 16);
  EmbeddingCtrModel model(layout, {256, 64});
  Rng rng(42);
  model.initialize(rng);
  Tower dgu = make_dgu_tower(model.item_dim(), rng);
  Vector user = Vector::Random(static_cast<Index>(model.user_dim()));
  Matrix items = Matrix::Random(static_cast<Index>(model.item_dim()), 8);
  const AgeTs<EmbeddingCtrModel> scorer(model, DguGate(dgu));
  const ScoredRequest out = scorer.score(Request{user, items, 17});
  std::printf("%f\n", static_cast<double>(out.explored[0]));
  return 0;
}
