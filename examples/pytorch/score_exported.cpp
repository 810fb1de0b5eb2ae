// Loads a model and its DGU exported from PyTorch (examples/pytorch/train_obd.py, or
// export_safetensors.py) and ranks one request with AGE-TS: what a C++ service does with a
// model trained elsewhere.
//
//   score_exported MODEL.safetensors [--candidates N] [--lambda L] [--seed S]
//
// load_model recomputes the file's load-time probes with this build's passes and refuses
// the file if they disagree (edited weights, a network the tower does not evaluate);
// load_dgu reads the DGU stored with the model. The request's candidates get random raw
// features (ids for table fields, N(0, 1) values for dense ones) in the model's layout.
#include <cstdio>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include <age/age.hpp>
#include <age/io/model_io.hpp>

#include "../common/command_line.hpp"

namespace {

// Random raw features of one entity: an id per table field, values for dense fields.
age::SideInput random_side(const age::FeatureLayout& layout, age::Side side, age::Rng& rng) {
  age::SideInput out;
  for (const age::FieldSpec& f : layout.fields()) {
    if (f.side != side) continue;
    age::FieldInput in;
    if (f.has_table()) {
      in.ids.push_back(rng());
    } else {
      for (std::size_t d = 0; d < f.dim; ++d) in.values.push_back(static_cast<float>(rng.normal()));
    }
    out.push_back(std::move(in));
  }
  return out;
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors [--candidates N] [--lambda L] [--seed S]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  std::size_t candidates = 8;
  double lambda = 10.0;
  std::uint64_t seed = 1;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw age::ConfigError(flag + ": expected a value");
    const std::string value = argv[++i];
    if (flag == "--candidates") candidates = age_examples::parse_count(flag, value);
    else if (flag == "--lambda") lambda = age_examples::parse_real(flag, value);
    else if (flag == "--seed") seed = age_examples::parse_count(flag, value);
    else throw age::ConfigError("unknown option '" + flag + "'");
  }

  if (candidates == 0 || candidates > 100000)
    throw age::ConfigError("--candidates: expected 1 to 100000, got " + std::to_string(candidates));

  age::Safetensors::Metadata metadata;
  const age::EmbeddingCtrModel model = age::load_model(path, &metadata);  // probes verified
  const age::Tower dgu = age::load_dgu(path);
  std::printf("loaded %s: %zu fields, user_dim %zu, item_dim %zu, tower", path.c_str(), model.layout().size(),
              static_cast<std::size_t>(model.user_dim()), static_cast<std::size_t>(model.item_dim()));
  for (std::size_t h : model.tower().hidden()) std::printf(" %zu", h);
  std::printf(", DGU");
  for (std::size_t h : dgu.hidden()) std::printf(" %zu", h);
  std::printf("; probes verified\n");
  for (const auto& [key, value] : metadata) std::printf("  %s = %s\n", key.c_str(), value.c_str());

  age::Rng rng(seed);
  const age::SideInput user = random_side(model.layout(), age::Side::User, rng);
  std::vector<age::SideInput> items;
  for (std::size_t n = 0; n < candidates; ++n) items.push_back(random_side(model.layout(), age::Side::Item, rng));
  age::Vector user_embedding;
  age::Matrix item_embeddings;
  model.embed_request(user, items, user_embedding, item_embeddings);

  const age::AgeTs<age::EmbeddingCtrModel> scorer(model, age::DguGate(dgu), age::McDropoutTs{},
                                                  age::Pgd{.lambda = lambda});
  const age::ScoredRequest out = scorer.score(age::Request{user_embedding, item_embeddings, /*id=*/seed});
  // delta: the Thompson sample's change (one dropout mask shared by the request, so every
  // candidate moves the same way); gate: the DGU; explored: what the ranking uses.
  std::printf("cand      base     delta  gate  explored  rank\n");
  const std::span<const age::Index> order = out.top_k(static_cast<age::Index>(candidates));
  std::vector<std::size_t> rank(candidates);
  for (std::size_t r = 0; r < order.size(); ++r) rank[static_cast<std::size_t>(order[r])] = r + 1;
  for (std::size_t n = 0; n < candidates; ++n) {
    const auto i = static_cast<age::Index>(n);
    std::printf("%4zu  %8.5f  %+8.5f  %4s  %8.5f  %4zu\n", n, out.base[i], out.delta[i], out.gate[n] ? "open" : "shut",
                out.explored[i], rank[n]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
