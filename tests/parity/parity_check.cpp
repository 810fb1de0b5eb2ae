// PyTorch parity: loads a model exported by examples/pytorch/export_safetensors.py and the
// reference results PyTorch computed for random requests (run_parity.py), recomputes them
// with age, and compares.
//
//   age_parity_check MODEL.safetensors REFERENCE.json RESAVE.safetensors
//
// Compared per request: the embeddings (raw-id requests), the logits, the probabilities,
// the gradient of the probability w.r.t. the item part and w.r.t. the whole input
// [user | item] (grad_h f of (M5), METHOD.md "Pseudo-exploration"). The references are
// float64 (see run_parity.py); age computes in float32.
//
// Error measure, per element: |age - ref| / max(|ref|, 0.1 * scale), where `scale` (from
// the reference file) is the magnitude of the terms the element is summed from -- the same
// pass run on |W|, |b|, |h|. That is the plain relative error, except for an element that
// cancellation made smaller than a tenth of its terms: float32 carries such an element only
// to a few ulps of its terms, so it is measured against that tenth instead (an absolute
// floor of 1e-6 x its terms' magnitude at the 1e-5 tolerance). Pass: every error <= 1e-5.
// The model is re-saved to RESAVE so the driver can compare its bytes with PyTorch's export.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/io/model_io.hpp"

using namespace age;
using nlohmann::json;

namespace {

constexpr double kTolerance = 1e-5;
constexpr double kFloor = 0.1;  // fraction of the terms' magnitude below which the error is absolute

struct Comparison {
  double worst = 0.0;
  std::string where;
  int failures = 0;

  // Compares age's values with the reference, all flattened candidate by candidate.
  void compare(const std::string& request, const std::string& quantity, const std::vector<double>& got,
               const std::vector<double>& ref, const std::vector<double>& scale) {
    if (got.size() != ref.size() || scale.size() != ref.size()) {
      std::printf("  %-26s %-16s SIZE MISMATCH: age %zu, reference %zu, scale %zu\n", request.c_str(),
                  quantity.c_str(), got.size(), ref.size(), scale.size());
      ++failures;
      return;
    }
    double max_rel = 0.0, max_abs = 0.0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const double err = std::isfinite(got[i]) ? std::abs(got[i] - ref[i]) : INFINITY;
      const double rel = err / std::max({std::abs(ref[i]), kFloor * scale[i], 1e-300});
      max_abs = std::max(max_abs, err);
      if (rel > max_rel || !std::isfinite(rel)) {
        max_rel = rel;
        at = i;
      }
    }
    const bool ok = max_rel <= kTolerance;
    if (!ok) ++failures;
    std::printf("  %-26s %-16s n=%-4zu max rel %.2e  max abs %.2e  %s\n", request.c_str(), quantity.c_str(),
                ref.size(), max_rel, max_abs, ok ? "ok" : "FAIL");
    if (max_rel > worst || !std::isfinite(max_rel)) {
      worst = max_rel;
      std::ostringstream w;
      w << request << " / " << quantity << " element " << at << " (age " << got[at] << ", reference " << ref[at]
        << ", terms " << scale[at] << ")";
      where = w.str();
    }
  }
};

std::vector<double> flat(const json& j) {
  std::vector<double> out;
  if (j.is_array() && !j.empty() && j[0].is_array()) {
    for (const auto& row : j)
      for (const auto& v : row) out.push_back(v.get<double>());
  } else {
    for (const auto& v : j) out.push_back(v.get<double>());
  }
  return out;
}

// Column n of `m` is candidate n; the reference lists candidates one after another.
std::vector<double> by_candidate(const Matrix& m) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(m.size()));
  for (Index n = 0; n < m.cols(); ++n)
    for (Index i = 0; i < m.rows(); ++i) out.push_back(m(i, n));
  return out;
}

// rows x N matrix from a list of N columns.
Matrix columns(const json& j, Index rows) {
  Matrix m(rows, static_cast<Index>(j.size()));
  for (Index n = 0; n < m.cols(); ++n) {
    const json& col = j[static_cast<std::size_t>(n)];
    if (static_cast<Index>(col.size()) != rows)
      throw DimensionError(detail::mismatch("reference column length", static_cast<std::size_t>(rows), col.size()));
    for (Index i = 0; i < rows; ++i) m(i, n) = col[static_cast<std::size_t>(i)].get<float>();
  }
  return m;
}

SideInput side_input(const json& j) {
  SideInput in;
  for (const auto& f : j) {
    FieldInput fi;
    if (f.contains("ids"))
      for (const auto& id : f["ids"]) fi.ids.push_back(id.get<std::uint64_t>());
    if (f.contains("values"))
      for (const auto& v : f["values"]) fi.values.push_back(v.get<float>());
    in.push_back(std::move(fi));
  }
  return in;
}

int run(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors REFERENCE.json RESAVE.safetensors\n", argv[0]);
    return 2;
  }
  Safetensors::Metadata metadata;
  const EmbeddingCtrModel model = load_model(argv[1], &metadata);
  const Index du = static_cast<Index>(model.user_dim()), di = static_cast<Index>(model.item_dim());
  std::printf("loaded %s: user_dim %ld, item_dim %ld, %zu fields, %zu tower layers\n", argv[1],
              static_cast<long>(du), static_cast<long>(di), model.layout().size(), model.tower().num_layers());

  std::ifstream in(argv[2]);
  if (!in) throw IoError(std::string("cannot open reference file '") + argv[2] + "'");
  const json reference = json::parse(in);

  Comparison cmp;
  TowerWorkspace ws;
  for (const json& r : reference.at("requests")) {
    const std::string name = r.at("name").get<std::string>();
    Matrix user, items;
    if (r.at("kind") == "raw") {
      const SideInput u = side_input(r.at("user_features"));
      std::vector<SideInput> cands;
      for (const auto& c : r.at("item_features")) cands.push_back(side_input(c));
      Vector uv;
      model.embed_request(u, cands, uv, items);
      user = uv;
      cmp.compare(name, "user embedding", by_candidate(user), flat(r.at("user_embedding")), flat(r.at("scale_user_embedding")));
      cmp.compare(name, "item embeddings", by_candidate(items), flat(r.at("item_embeddings")), flat(r.at("scale_item_embeddings")));
    } else if (r.contains("users")) {
      user = columns(r.at("users"), du);
      items = columns(r.at("items"), di);
    } else {
      user = columns(json::array({r.at("user")}), du);
      items = columns(r.at("items"), di);
    }
    const Index n = items.cols();

    DropoutMask mask;
    if (r.contains("masks"))
      for (std::size_t l = 0; l < r["masks"].size(); ++l)
        mask.layers.push_back(columns(r["masks"][l], static_cast<Index>(model.tower().hidden()[l])));
    const DropoutMask* m = mask.empty() ? nullptr : &mask;

    RowVector logits(n), prob(n);
    model.logits(user, items, m, ws, logits);
    Matrix d_items, d_user;
    model.probability_gradient(user, items, m, ws, prob, &d_items, &d_user);
    Matrix d_input(du + di, n);
    d_input.topRows(du) = d_user;
    d_input.bottomRows(di) = d_items;

    cmp.compare(name, "logits", by_candidate(logits), flat(r.at("logits")), flat(r.at("scale_logits")));
    cmp.compare(name, "probability", by_candidate(prob), flat(r.at("prob")), flat(r.at("scale_prob")));
    cmp.compare(name, "dy/d(item)", by_candidate(d_items), flat(r.at("d_items")), flat(r.at("scale_d_items")));
    cmp.compare(name, "dy/d(input)", by_candidate(d_input), flat(r.at("d_input")), flat(r.at("scale_d_input")));
  }

  save_model(argv[3], model, metadata);

  std::printf("largest relative error: %.3e at %s (tolerance %.0e; floor %.1f x terms' magnitude)\n", cmp.worst,
              cmp.where.c_str(), kTolerance, kFloor);
  if (cmp.failures) {
    std::printf("FAILED: %d comparisons above tolerance\n", cmp.failures);
    return 1;
  }
  std::printf("parity ok\n");
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
