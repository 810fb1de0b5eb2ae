// Scores one request with an EmbeddingCtrModel from the installed headers and checks the
// result: probabilities in (0, 1), equal to sigmoid of the embedding-level logits, not all
// equal, and an empty request rejected with an age::Error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <age/core/error.hpp>
#include <age/model/embedding_model.hpp>
#ifdef CONSUMER_HAVE_IO
#include <nlohmann/json.hpp>  // age::io must bring its JSON dependency along
#endif

namespace {
int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("consumer: FAILED: %s\n", what);
    ++failures;
  }
}
}  // namespace

int main() {
  age::FeatureLayout layout;
  layout.add_categorical("user_id", age::Side::User, 1000, 8)
      .add_multi_hot("user_tags", age::Side::User, 64, 4, age::Pooling::Mean)
      .add_categorical("item_id", age::Side::Item, 1000, 8)
      .add_dense("item_price", age::Side::Item, 1);
  age::EmbeddingCtrModel model(layout, {16, 8});
  age::Rng rng(2022);
  model.initialize(rng, 0.5);

  const age::SideInput user = {age::FieldInput{{42}, {}}, age::FieldInput{{3, 7, 11}, {}}};
  constexpr int n = 5;
  std::vector<age::SideInput> items;
  for (int i = 0; i < n; ++i)
    items.push_back({age::FieldInput{{static_cast<std::uint64_t>(977 * i + 1)}, {}},
                     age::FieldInput{{}, {0.25f * static_cast<float>(i)}}});

  age::ModelWorkspace ws;
  age::RowVector prob(n);
  model.predict(user, items, ws, prob);

  age::RowVector logits(n);
  model.logits(ws.user, ws.items, nullptr, ws.tower, logits);
  for (int i = 0; i < n; ++i) {
    check(std::isfinite(prob[i]) && prob[i] > 0.0f && prob[i] < 1.0f, "probability in (0, 1)");
    check(std::fabs(prob[i] - age::sigmoid(logits[i])) <= 1e-6f, "predict() == sigmoid(logits())");
  }
  check(prob.maxCoeff() - prob.minCoeff() > 1e-6f, "candidates get different scores");

  bool rejected = false;
  try {
    model.predict(user, std::vector<age::SideInput>{}, ws, prob);
  } catch (const age::Error&) {
    rejected = true;
  }
  check(rejected, "an empty request throws age::Error");

#ifdef CONSUMER_HAVE_IO
  check(nlohmann::json::parse(R"({"dtype": "F32"})").at("dtype") == "F32", "nlohmann_json usable through age::io");
#endif

  std::printf("consumer: age %s via find_package: p =", CONSUMER_AGE_VERSION);
  for (int i = 0; i < n; ++i) std::printf(" %.4f", static_cast<double>(prob[i]));
  std::printf("\n");
  if (failures != 0) return 1;
  std::printf("consumer: age consumer OK\n");
  return 0;
}
