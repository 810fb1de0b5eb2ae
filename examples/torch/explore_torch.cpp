// A CTR model trained in PyTorch, explored in C++ without porting it: the DCN-v2 tower that
// examples/torch/train_dcn.py scripted (model.pt) runs through age's TorchScript adapter,
// and one request is ranked with AGE-TS (MC-Dropout Thompson sampling, PGD, the Dynamic
// Gating Unit trained beside the model).
//
//   python3 examples/torch/train_dcn.py --out /tmp/dcn
//   ./build/examples/explore_torch /tmp/dcn/model.pt /tmp/dcn/explore.safetensors
#include <cstdio>
#include <exception>
#include <vector>

#include <ATen/Parallel.h>

#include <age/age.hpp>
#include <age/io/model_io.hpp>
#include <age/torch/torch_model.hpp>

int main(int argc, char** argv) try {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s model.pt explore.safetensors\n", argv[0]);
    return 2;
  }
  // One request on one thread: torch's own thread pool would only add hand-offs here.
  at::set_num_threads(1);

  const age::TorchCtrModel model(argv[1]);   // forward(user, items) -> logits
  const age::Tower dgu = age::load_dgu(argv[2]);  // item_dim -> 32 -> 1
  const age::Safetensors tables = age::read_safetensors(argv[2]);
  const age::TensorData& users = tables.at("embedding.user");
  const age::TensorData& items = tables.at("embedding.item");
  std::printf("model %s: user_dim %zu, item_dim %zu, dropout %.2f (seeded mode)\n", argv[1], model.user_dim(),
              model.item_dim(), model.dropout_rate());

  // One user and 12 candidates: the first items are the popular head, the last ones the
  // tail that the logged impressions rarely showed. [rows, dim] row-major tables are
  // dim x rows column-major: one embedding per column, as age wants them.
  const age::Index du = static_cast<age::Index>(model.user_dim()), di = static_cast<age::Index>(model.item_dim());
  age::detail::require_dim("embedding.user columns (user_dim)", model.user_dim(), users.shape.at(1));
  age::detail::require_dim("embedding.item columns (item_dim)", model.item_dim(), items.shape.at(1));
  std::vector<float> user_table(users.numel()), item_table(items.numel());
  users.copy_f32(user_table);
  items.copy_f32(item_table);
  const age::Index user_id = 7;
  const age::Matrix user = Eigen::Map<const age::Matrix>(user_table.data() + user_id * du, du, 1);
  const std::vector<age::Index> candidates{0, 1, 2, 3, 5, 8, 13, 150, 220, 300, 350, 399};
  age::Matrix item_embeddings(di, static_cast<age::Index>(candidates.size()));
  for (std::size_t c = 0; c < candidates.size(); ++c)
    item_embeddings.col(static_cast<age::Index>(c)) = Eigen::Map<const age::Vector>(item_table.data() + candidates[c] * di, di);

  // AGE-TS over the adapter: the explorer's dropout rate is the module's (scripted
  // nn.Dropout has it built in); lambda' is a length in this model's embedding units.
  const age::AgeTs<age::TorchCtrModel> scorer(model, age::DguGate(dgu), age::McDropoutTs{.rate = model.dropout_rate()},
                                              age::Pgd{.lambda = 0.5}, /*seed=*/2022);
  const age::ScoredRequest out = scorer.score(age::Request{user, item_embeddings, /*id=*/1});

  std::printf("user %ld, %zu candidates\n%6s %6s %8s %9s %5s %9s %5s\n", static_cast<long>(user_id), candidates.size(),
              "item", "cand", "base", "delta", "gate", "explored", "rank");
  std::vector<std::size_t> rank(candidates.size());
  for (std::size_t r = 0; r < out.ranking.size(); ++r) rank[static_cast<std::size_t>(out.ranking[r])] = r + 1;
  for (std::size_t c = 0; c < candidates.size(); ++c) {
    const auto i = static_cast<age::Index>(c);
    std::printf("%6ld %6zu %8.4f %+9.5f %5d %9.4f %5zu\n", static_cast<long>(candidates[c]), c, out.base[i],
                out.delta[i], out.gate[c], out.explored[i], rank[c]);
  }
  std::printf("top-3 by explored score:");
  for (const age::Index i : out.top_k(3)) std::printf(" item %ld", static_cast<long>(candidates[static_cast<std::size_t>(i)]));
  std::printf("\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "explore_torch: %s\n", e.what());
  return 1;
}
