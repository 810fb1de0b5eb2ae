// Load-time probes (age/io/probes.hpp) and the activation a model file records: a file is
// loaded only if this build's passes give the (input, logit, input gradient) triples its
// writer stored, and only if its network is one the tower evaluates.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/io/model_io.hpp"
#include "age/io/probes.hpp"
#include "age/io/safetensors.hpp"
#include "scratch_files.hpp"

using namespace age;
namespace fs = std::filesystem;

namespace {

EmbeddingCtrModel small_model(std::uint64_t seed, std::vector<std::size_t> hidden = {8, 4}) {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 30, 4)
      .add_dense("user_age", Side::User, 1)
      .add_categorical("item_id", Side::Item, 40, 5)
      .add_dense("item_price", Side::Item, 1);
  EmbeddingCtrModel model(layout, std::move(hidden));
  Rng rng(seed);
  model.initialize(rng, 0.5);
  return model;
}

Tower random_tower(std::size_t user_dim, std::size_t item_dim, std::vector<std::size_t> hidden, std::uint64_t seed) {
  Tower tower(user_dim, item_dim, std::move(hidden));
  Rng rng(seed);
  tower.initialize(rng);
  return tower;
}

bool same_bits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<std::size_t>(a.size())) == 0;
}

bool same_tower(const Tower& a, const Tower& b) {
  if (a.user_dim() != b.user_dim() || a.item_dim() != b.item_dim() || a.hidden() != b.hidden()) return false;
  for (std::size_t l = 0; l < a.num_layers(); ++l)
    if (!same_bits(a.weight(l), b.weight(l)) || !same_bits(a.bias(l), b.bias(l))) return false;
  return true;
}

// `st` with `delta` added to element `k` of its F32 tensor `name`, as an edit of the file
// after it was written would leave it.
void edit_f32(Safetensors& st, const std::string& name, std::size_t k, float delta) {
  Safetensors edited;
  edited.metadata() = st.metadata();
  for (const std::string& n : st.names()) {
    TensorData t = st.at(n);
    if (n == name) {
      float v;
      std::memcpy(&v, t.bytes.data() + 4 * k, 4);
      v += delta;
      std::memcpy(t.bytes.data() + 4 * k, &v, 4);
    }
    edited.add(n, std::move(t));
  }
  st = std::move(edited);
}

template <class Error, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("no error thrown");
  return {};
}

}  // namespace

TEST_CASE("a model saved with its DGU loads back bit-exact, with both towers' probes verified", "[io][probes]") {
  const fs::path dir = age_test::fresh_dir("probes_test_tmp", "dgu");
  const EmbeddingCtrModel model = small_model(1);
  const Tower dgu = random_tower(0, model.item_dim(), {6}, 2);
  save_model_with_dgu(dir / "m.safetensors", model, dgu, {{"step", "7"}});

  const Safetensors file = read_safetensors(dir / "m.safetensors");
  REQUIRE(file.metadata().count("age.probes.tower"));
  REQUIRE(file.metadata().count("age.probes.dgu"));
  CHECK(nlohmann::json::parse(file.metadata().at("age.config"))["activation"] == "relu");
  CHECK(nlohmann::json::parse(file.metadata().at("age.tower.dgu"))["activation"] == "relu");

  Safetensors::Metadata meta;
  const EmbeddingCtrModel back = load_model(dir / "m.safetensors", &meta);
  CHECK(meta == Safetensors::Metadata{{"step", "7"}});  // the probes are not user metadata
  CHECK(same_tower(back.tower(), model.tower()));
  CHECK(same_tower(load_dgu(dir / "m.safetensors"), dgu));

  // Saving again writes the same bytes: the probes are a function of the weights.
  save_model_with_dgu(dir / "again.safetensors", back, load_dgu(dir / "m.safetensors"), meta);
  CHECK(read_file_bytes(dir / "again.safetensors") == read_file_bytes(dir / "m.safetensors"));

  // The DGU alone, and a DGU that does not read this model's items.
  save_dgu(dir / "dgu.safetensors", dgu);
  CHECK(same_tower(load_dgu(dir / "dgu.safetensors"), dgu));
  const Tower other = random_tower(0, model.item_dim() + 1, {6}, 3);
  CHECK_THROWS_WITH(save_model_with_dgu(dir / "bad.safetensors", model, other),
                    Catch::Contains("bad.safetensors") && Catch::Contains("dgu: item_dim 7, expected the model's item_dim 6"));
  CHECK_FALSE(fs::exists(dir / "bad.safetensors"));
}

TEST_CASE("a file whose weights were edited after it was written fails verification, naming the probe",
          "[io][probes]") {
  const fs::path dir = age_test::fresh_dir("probes_test_tmp", "edited");
  const EmbeddingCtrModel model = small_model(4);
  const Tower dgu = random_tower(0, model.item_dim(), {6}, 5);
  Safetensors st = model_with_dgu_to_safetensors(model, dgu);

  SECTION("the output bias of the model's tower") {
    edit_f32(st, "tower.2.bias", 0, 0.25f);
    write_safetensors(dir / "m.safetensors", st);
    const std::string message = error_of<FormatError>([&] { (void)load_model(dir / "m.safetensors"); });
    CHECK_THAT(message, Catch::Contains("m.safetensors") && Catch::Contains("metadata 'age.probes.tower': probe 0") &&
                            Catch::Contains("logit computed") && Catch::Contains("stored") &&
                            Catch::Contains("difference 0.25") && Catch::Contains("> allowed"));
    // Verification can be turned off; the file then loads with the edited weights.
    SafetensorsReadOptions off;
    off.verify_probes = false;
    const EmbeddingCtrModel loaded = load_model(dir / "m.safetensors", nullptr, off);
    CHECK(loaded.tower().bias(2)[0] == model.tower().bias(2)[0] + 0.25f);
  }
  SECTION("one first-layer weight, by 1%") {
    // The largest weight of the first layer, so that the change is above the tolerance.
    const Matrix& w = model.tower().weight(0);
    Index row = 0, col = 0;
    w.cwiseAbs().maxCoeff(&row, &col);
    // [out, in] row-major: element (row, col) is at row * in + col.
    edit_f32(st, "tower.0.weight", static_cast<std::size_t>(row * w.cols() + col), 0.01f * w(row, col));
    write_safetensors(dir / "m.safetensors", st);
    CHECK_THROWS_WITH(load_model(dir / "m.safetensors"), Catch::Contains("metadata 'age.probes.tower': probe"));
  }
  SECTION("the DGU's tower") {
    edit_f32(st, "dgu.0.weight", 3, 0.5f);
    write_safetensors(dir / "m.safetensors", st);
    CHECK_THROWS_WITH(load_dgu(dir / "m.safetensors"), Catch::Contains("metadata 'age.probes.dgu': probe"));
    // load_model validates every tower in the file, the DGU included.
    CHECK_THROWS_WITH(load_model(dir / "m.safetensors"), Catch::Contains("metadata 'age.probes.dgu': probe"));
  }
  SECTION("an embedding table is not probed: the probes cover the towers") {
    edit_f32(st, "embedding.item_id", 0, 0.5f);
    CHECK_NOTHROW(model_from_safetensors(st));
  }
}

TEST_CASE("the stored probes are what float32 passes give, far inside the default tolerance", "[io][probes]") {
  struct Shape {
    std::size_t user_dim, item_dim;
    std::vector<std::size_t> hidden;
  };
  const std::vector<Shape> shapes = {{3, 3, {3}}, {16, 16, {64, 32}}, {64, 64, {256, 128}}, {0, 200, {512, 256, 64}},
                                     {5, 7, {}}};
  for (std::size_t s = 0; s < shapes.size(); ++s) {
    const Tower tower = random_tower(shapes[s].user_dim, shapes[s].item_dim, shapes[s].hidden, 10 + s);
    const std::string probes = make_probes_json(tower);
    CAPTURE(s);
    REQUIRE_FALSE(probes.empty());
    // Deterministic: the same weights give the same text.
    CHECK(make_probes_json(tower) == probes);
    // The float32 passes agree with the double-precision values within a twentieth of the
    // default tolerance (1e-5 of the terms' scale): the default leaves room for other
    // compilers and instruction sets, not for other weights.
    CHECK_NOTHROW(verify_probes(tower, probes, "tower", "t", kDefaultProbeTolerance / 20));
    // And the check is real: nothing passes at a tolerance below float32 rounding.
    if (!shapes[s].hidden.empty() && shapes[s].hidden[0] >= 64)
      CHECK_THROWS_AS(verify_probes(tower, probes, "tower", "t", 1e-12), FormatError);

    const nlohmann::json j = nlohmann::json::parse(probes);
    REQUIRE(j["probes"].size() == probe_count(tower.input_dim()));
    for (const auto& p : j["probes"]) {
      REQUIRE(p["input"].size() == tower.input_dim());
      for (const auto& v : p["input"]) {
        const double x = v.get<double>();
        CHECK(x >= -1.0);
        CHECK(x < 1.0);
      }
    }
  }
  // A wide input gets fewer probes: 2 * input_dim numbers each, about 65536 in all.
  CHECK(probe_count(200) == kProbeCount);
  CHECK(probe_count(8192) == 8);
  CHECK(probe_count(10000) == 6);
  CHECK(probe_count(66661) == 1);
  const Tower wide = random_tower(0, 20000, {2}, 9);
  const std::string wide_probes = make_probes_json(wide);
  CHECK(nlohmann::json::parse(wide_probes)["probes"].size() == 3);
  CHECK(wide_probes.size() < 1'700'000);  // the bound probes.hpp states (about 1.6 MB)
  CHECK_NOTHROW(verify_probes(wide, wide_probes, "tower", "t"));
  // Another tower of the same shape has other probe values.
  const Tower a = random_tower(4, 4, {8}, 1), b = random_tower(4, 4, {8}, 2);
  CHECK(make_probes_json(a) != make_probes_json(b));
}

TEST_CASE("a file recording an activation the tower does not have is refused", "[io][probes]") {
  const EmbeddingCtrModel model = small_model(6);
  const Tower dgu = random_tower(0, model.item_dim(), {6}, 7);
  Safetensors st = model_with_dgu_to_safetensors(model, dgu);

  SECTION("the model's config") {
    nlohmann::ordered_json c = nlohmann::ordered_json::parse(st.metadata().at("age.config"));
    c["activation"] = "gelu";
    st.metadata()["age.config"] = c.dump();
    CHECK_THROWS_WITH(model_from_safetensors(st, "f.safetensors"),
                      Catch::Contains("f.safetensors: metadata 'age.config': activation 'gelu' is not one this build's "
                                      "tower evaluates (it has 'relu' only)"));
    c["activation"] = 1;
    st.metadata()["age.config"] = c.dump();
    CHECK_THROWS_WITH(model_from_safetensors(st), Catch::Contains("'activation' must be a string"));
    // A config without the key was written before it existed: ReLU.
    c.erase("activation");
    st.metadata()["age.config"] = c.dump();
    CHECK_NOTHROW(model_from_safetensors(st));
  }
  SECTION("an extra tower's config") {
    nlohmann::ordered_json c = nlohmann::ordered_json::parse(st.metadata().at("age.tower.dgu"));
    c["activation"] = "tanh";
    st.metadata()["age.tower.dgu"] = c.dump();
    CHECK_THROWS_WITH(read_tower(st, "dgu", "f"), Catch::Contains("metadata 'age.tower.dgu': activation 'tanh'"));
    CHECK_THROWS_WITH(model_from_safetensors(st), Catch::Contains("activation 'tanh'"));
  }
}

TEST_CASE("malformed probes are refused with the key and the problem named", "[io][probes]") {
  const EmbeddingCtrModel model = small_model(8);
  const Safetensors good = model_to_safetensors(model);
  const std::string probes = good.metadata().at("age.probes.tower");
  const auto refused = [&](const std::string& value, const std::string& expected) {
    Safetensors st = good;
    st.metadata()["age.probes.tower"] = value;
    CAPTURE(value);
    CHECK_THROWS_WITH(model_from_safetensors(st, "f"), Catch::Contains("f: metadata 'age.probes.tower'") &&
                                                           Catch::Contains(expected));
  };
  refused("not json", "metadata 'age.probes.tower'");
  refused(probes + " x", "metadata 'age.probes.tower'");
  refused(R"({"version":2,"probes":[]})", "'version' must be 1");
  refused(R"({"version":1,"probes":{}})", "'probes' must be an array");
  refused(R"({"version":1,"probes":[],"extra":0})", "unknown key 'extra'");
  refused(R"({"version":1,"probes":[{"input":[1],"logit":0,"logit_scale":0,"gradient":[1],"gradient_scale":0}]})",
          "probe 0: 'input' has 1 values, expected 11");
  nlohmann::json j = nlohmann::json::parse(probes);
  j["probes"][0]["logit_scale"] = -1;
  refused(j.dump(), "probe 0: scales must be >= 0");
  j = nlohmann::json::parse(probes);
  j["probes"][1]["gradient"][2] = "x";
  refused(j.dump(), "probe 1: 'gradient'[2] is not a number");
  j = nlohmann::json::parse(probes);
  for (int k = 0; k < 70; ++k) j["probes"].push_back(j["probes"][0]);
  refused(j.dump(), std::to_string(kProbeCount + 70) + " probes, at most 64");

  Safetensors stray = good;
  stray.metadata()["age.probes.gate"] = probes;
  CHECK_THROWS_WITH(model_from_safetensors(stray, "f"),
                    Catch::Contains("metadata 'age.probes.gate' probes a tower the file does not have"));
  // A file without probes loads (files written before they existed).
  Safetensors none = good;
  none.metadata().erase("age.probes.tower");
  CHECK_NOTHROW(model_from_safetensors(none));
  CHECK_THROWS_AS(verify_probes(model.tower(), probes, "tower", "t", -1.0), ConfigError);
}

TEST_CASE("a tower whose passes leave float range is saved without probes", "[io][probes]") {
  // Hidden layers of 1e6 weights: the terms grow by 2e6 per layer.
  const auto tower_of = [](std::size_t layers, float last_weight) {
    Tower tower(0, 2, std::vector<std::size_t>(layers, 2));
    Tower::Edit edit = tower.edit();
    for (std::size_t l = 0; l < tower.num_layers(); ++l) {
      edit.weight(l).setConstant(l + 1 == tower.num_layers() ? last_weight : 1e6f);
      edit.bias(l).setConstant(0.5f);
    }
    return tower;
  };
  SECTION("the output itself: about 1e252 after 40 layers") {
    const Tower tower = tower_of(40, 1e6f);
    CHECK(make_probes_json(tower).empty());
    Safetensors st;
    add_tower(st, "dgu", tower);
    CHECK_FALSE(st.metadata().count("age.probes.dgu"));
    CHECK_NOTHROW(read_tower(st, "dgu"));
  }
  SECTION("a hidden layer only: about 1e38 inside, a zero output weight, logit 0.5") {
    // In float32 the hidden units overflow to inf and inf * 0 is NaN; in double the logit
    // is 0.5. Probes would refuse the file its own writer wrote.
    const Tower tower = tower_of(6, 0.0f);
    CHECK(make_probes_json(tower).empty());
    Safetensors st;
    add_tower(st, "t", tower);
    CHECK_NOTHROW(read_tower(st, "t"));
  }
  SECTION("below the bound the probes are written and verified") {
    const Tower tower = tower_of(3, 1e6f);  // terms about 1e19
    REQUIRE_FALSE(make_probes_json(tower).empty());
    Safetensors st;
    add_tower(st, "t", tower);
    CHECK_NOTHROW(read_tower(st, "t"));
  }
}
