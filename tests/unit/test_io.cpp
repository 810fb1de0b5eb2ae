// Weight files: safetensors reader/writer and whole-model save/load.
#include <catch2/catch.hpp>

#ifdef AGE_HAVE_IO

#include <algorithm>
#include <bit>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "scratch_files.hpp"

using namespace age;
namespace fs = std::filesystem;
using age_test::Bytes;

namespace {

fs::path fresh_dir(const std::string& name) { return age_test::fresh_dir("io_test_tmp", name); }

using age_test::write_bytes;

// A model with every kind of field on both sides and two hidden layers.
EmbeddingCtrModel mixed_model(std::uint64_t seed) {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 50, 4)
      .add_multi_hot("user_tags", Side::User, 20, 3, Pooling::Mean)
      .add_dense("user_age", Side::User, 2)
      .add_categorical("item_id", Side::Item, 40, 5)
      .add_multi_hot("item_cats", Side::Item, 10, 3, Pooling::Sum)
      .add_dense("item_price", Side::Item, 1);
  EmbeddingCtrModel model(layout, {8, 4});
  Rng rng(seed);
  model.initialize(rng, 0.5);
  return model;
}

bool same_bits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<std::size_t>(a.size())) == 0);
}

void require_bit_exact(const EmbeddingCtrModel& a, const EmbeddingCtrModel& b) {
  REQUIRE(a.layout() == b.layout());
  REQUIRE(a.tower().hidden() == b.tower().hidden());
  for (std::size_t f = 0; f < a.layout().size(); ++f) CHECK(same_bits(a.tables().table(f), b.tables().table(f)));
  REQUIRE(a.tower().num_layers() == b.tower().num_layers());
  for (std::size_t l = 0; l < a.tower().num_layers(); ++l) {
    CHECK(same_bits(a.tower().weight(l), b.tower().weight(l)));
    CHECK(same_bits(a.tower().bias(l), b.tower().bias(l)));
  }
}

// The golden model: every parameter a short binary fraction, so its values are exact.
EmbeddingCtrModel golden_model() {
  FeatureLayout layout;
  layout.add_categorical("u_id", Side::User, 3, 2)
      .add_dense("u_age", Side::User, 1)
      .add_multi_hot("i_tags", Side::Item, 4, 2, Pooling::Mean)
      .add_categorical("i_id", Side::Item, 2, 1);
  EmbeddingCtrModel model(layout, {3});
  for (std::size_t f = 0; f < layout.size(); ++f) {
    Matrix& t = model.tables().table(f);
    for (Index k = 0; k < t.size(); ++k) t.data()[k] = static_cast<Scalar>(f + 1) + 0.125f * static_cast<Scalar>(k);
  }
  {
    Tower::Edit edit = model.tower().edit();
    for (std::size_t l = 0; l < model.tower().num_layers(); ++l) {
      MatrixRef w = edit.weight(l);
      for (Index i = 0; i < w.rows(); ++i)
        for (Index j = 0; j < w.cols(); ++j)
          w(i, j) = 0.25f * static_cast<Scalar>(i + 1) - 0.125f * static_cast<Scalar>(j) + static_cast<Scalar>(l);
      VectorRef b = edit.bias(l);
      for (Index i = 0; i < b.size(); ++i) b[i] = -0.5f * static_cast<Scalar>(i) + 0.0625f * static_cast<Scalar>(l);
    }
  }
  return model;
}

// A file assembled from an explicit header, to build corrupt files the writer never makes.
Bytes assemble(const std::string& header, const Bytes& buffer, std::uint64_t length_field) {
  Bytes out(8 + header.size() + buffer.size());
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length_field >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(buffer.begin(), buffer.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}
Bytes assemble(const std::string& header, const Bytes& buffer) { return assemble(header, buffer, header.size()); }

struct Split {
  nlohmann::ordered_json header;
  Bytes buffer;
};
Split split(const Bytes& file) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]) << (8 * i);
  Split s;
  s.header = nlohmann::ordered_json::parse(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  s.buffer.assign(file.begin() + 8 + static_cast<std::ptrdiff_t>(n), file.end());
  return s;
}
Bytes join(const Split& s) { return assemble(s.header.dump(), s.buffer); }

// A copy of `st` with tensor `name` replaced (or dropped when `replacement` is null).
Safetensors with_tensor(const Safetensors& st, const std::string& name, const TensorData* replacement) {
  Safetensors out;
  out.metadata() = st.metadata();
  for (const std::string& n : st.names()) {
    if (n != name) out.add(n, st.at(n));
    else if (replacement) out.add(n, *replacement);
  }
  return out;
}

// Writes `bytes` to a file and expects load_model to reject it with `message`.
void expect_rejected(const Bytes& bytes, const std::string& message) {
  const fs::path path = fs::path(AGE_TEST_BINARY_DIR) / "io_test_tmp" / "rejected.safetensors";
  fs::create_directories(path.parent_path());
  write_bytes(path, bytes);
  INFO("expected message: " << message);
  REQUIRE_THROWS_AS(load_model(path), FormatError);
  CHECK_THROWS_WITH(load_model(path), Catch::Contains(message) && Catch::Contains(path.string()));
}

}  // namespace

TEST_CASE("model save/load round trip is bit-exact, metadata passes through", "[io]") {
  const fs::path dir = fresh_dir("round_trip");
  const EmbeddingCtrModel model = mixed_model(11);
  const Safetensors::Metadata meta{{"trained_on", "2024-05-01"}, {"step", "1234"}};
  save_model(dir / "m.safetensors", model, meta);

  Safetensors::Metadata meta_back;
  const EmbeddingCtrModel back = load_model(dir / "m.safetensors", &meta_back);
  require_bit_exact(model, back);
  CHECK(meta_back == meta);

  // Same scores on a request through the raw-feature path.
  const SideInput user{{{7}, {}}, {{1, 2, 3}, {}}, {{}, {0.5f, -1.0f}}};
  const std::vector<SideInput> items{{{{3}, {}}, {{4, 5}, {}}, {{}, {2.0f}}}, {{{9}, {}}, {{}, {}}, {{}, {0.0f}}}};
  ModelWorkspace ws1, ws2;
  RowVector p1(2), p2(2);
  model.predict(user, items, ws1, p1);
  back.predict(user, items, ws2, p2);
  CHECK(p1 == p2);

  // Saving what was loaded reproduces the file byte for byte; so does the in-memory path.
  save_model(dir / "again.safetensors", back, meta_back);
  CHECK(read_file_bytes(dir / "m.safetensors") == read_file_bytes(dir / "again.safetensors"));
  const Bytes mem = serialize_safetensors(model_to_safetensors(model, meta));
  CHECK(mem == read_file_bytes(dir / "m.safetensors"));
  require_bit_exact(model, model_from_safetensors(parse_safetensors(mem)));
  // The data buffer starts 8-byte aligned, as the reference writer pads it.
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(mem[static_cast<std::size_t>(i)]) << (8 * i);
  CHECK(n % 8 == 0);
}

TEST_CASE("file layout follows PyTorch: tables [rows, dim], Linear weights [out, in] row-major", "[io]") {
  const EmbeddingCtrModel model = mixed_model(3);
  const Safetensors st = model_to_safetensors(model);
  const std::vector<std::string> expected{"embedding.user_id",  "embedding.user_tags", "embedding.item_id",
                                          "embedding.item_cats", "tower.0.weight",     "tower.0.bias",
                                          "tower.1.weight",     "tower.1.bias",        "tower.2.weight",
                                          "tower.2.bias"};
  CHECK(st.names() == expected);
  const TensorData& w0 = st.at("tower.0.weight");
  CHECK(w0.shape == std::vector<std::uint64_t>{8, 18});  // input = 4+3+2 | 5+3+1
  const Matrix& w = model.tower().weight(0);
  for (Index i = 0; i < w.rows(); ++i)
    for (Index j = 0; j < w.cols(); ++j) REQUIRE(w0.value(static_cast<std::size_t>(i * w.cols() + j)) == w(i, j));
  const TensorData& e = st.at("embedding.item_id");
  CHECK(e.shape == std::vector<std::uint64_t>{40, 5});
  const Matrix& t = model.tables().table(3);
  CHECK(e.value(17 * 5 + 2) == t(2, 17));  // row 17 (id bucket), component 2
  const nlohmann::json config = nlohmann::json::parse(st.metadata().at("age.config"));
  CHECK(config["version"] == 1);
  CHECK(config["hidden"] == nlohmann::json::array({8, 4}));
  CHECK(config["fields"][1]["pooling"] == "mean");
  CHECK(config["fields"][2].contains("rows") == false);  // dense
}

TEST_CASE("golden file: the bytes written today and the values read back are fixed", "[io]") {
  const fs::path golden = fs::path(AGE_TEST_DATA_DIR) / "io" / "tiny_model.safetensors";
  const Bytes bytes = serialize_safetensors(model_to_safetensors(golden_model(), {{"note", "golden"}}));
  if (std::getenv("AGE_UPDATE_GOLDEN")) {
    fs::create_directories(golden.parent_path());
    write_file_atomic(golden, bytes);
    WARN("rewrote " << golden.string());
  }
  REQUIRE(fs::exists(golden));
  CHECK(read_file_bytes(golden) == bytes);

  Safetensors::Metadata meta;
  const EmbeddingCtrModel m = load_model(golden, &meta);
  CHECK(meta == Safetensors::Metadata{{"note", "golden"}});
  CHECK(m.layout().size() == 4);
  CHECK(m.layout().field(2).name == "i_tags");
  CHECK(m.layout().field(2).pooling == Pooling::Mean);
  CHECK(m.user_dim() == 3);
  CHECK(m.item_dim() == 3);
  CHECK(m.tower().hidden() == std::vector<std::size_t>{3});
  // Known numbers: table(f) column-major element k = (f + 1) + k/8.
  CHECK(m.tables().table(0)(1, 2) == 1.625f);  // u_id: row 2, component 1 -> k = 5
  CHECK(m.tables().table(2)(1, 3) == 3.875f);  // i_tags: row 3, component 1 -> k = 7
  CHECK(m.tables().table(3)(0, 1) == 4.125f);  // i_id: row 1 -> k = 1
  CHECK(m.tables().table(1).size() == 0);      // dense u_age has no table
  // W_l(i, j) = (i+1)/4 - j/8 + l,  b_l(i) = -i/2 + l/16
  CHECK(m.tower().weight(0)(2, 1) == 0.625f);
  CHECK(m.tower().weight(0)(0, 5) == -0.375f);
  CHECK(m.tower().weight(1)(0, 2) == 1.0f);
  CHECK(m.tower().bias(0)(2) == -1.0f);
  CHECK(m.tower().bias(1)(0) == 0.0625f);
  // In the file itself: tower.0.weight is [3, 6] row-major, so [2][1] is flat element 13.
  const Safetensors st = read_safetensors(golden);
  CHECK(st.at("tower.0.weight").value(13) == 0.625);
  CHECK(st.at("embedding.i_tags").value(7) == 3.875);
  CHECK(st.at("embedding.i_tags").shape == std::vector<std::uint64_t>{4, 2});
}

TEST_CASE("a file written before the activation and the probes were recorded still loads", "[io]") {
  // The same golden model, written by the previous writer: no "activation" in its config
  // (ReLU, the only one there is) and no "age.probes.*" metadata.
  const fs::path old = fs::path(AGE_TEST_DATA_DIR) / "io" / "tiny_model_without_probes.safetensors";
  const Safetensors st = read_safetensors(old);
  REQUIRE(st.metadata().count("age.probes.tower") == 0);
  REQUIRE(st.metadata().at("age.config").find("activation") == std::string::npos);
  Safetensors::Metadata meta;
  const EmbeddingCtrModel m = load_model(old, &meta);
  CHECK(meta == Safetensors::Metadata{{"note", "golden"}});
  require_bit_exact(m, golden_model());
}

TEST_CASE("corrupt model files are rejected with a message naming the problem", "[io]") {
  const EmbeddingCtrModel model = mixed_model(5);
  const Safetensors good = model_to_safetensors(model);
  const Bytes bytes = serialize_safetensors(good);

  SECTION("truncated") {
    expect_rejected(Bytes(bytes.begin(), bytes.begin() + 5), "truncated: 5 bytes, shorter than the 8-byte header");
    expect_rejected(Bytes(bytes.begin(), bytes.begin() + 40), "truncated: header length");
    expect_rejected(Bytes(bytes.begin(), bytes.end() - 4), "points past the end of the");
    expect_rejected(Bytes{}, "truncated: 0 bytes");
  }
  SECTION("absurd header length") {
    Bytes b = bytes;
    b[5] = 0x01;  // 2^40 + ...
    expect_rejected(b, "exceeds the limit of 100000000 bytes");
  }
  SECTION("oversized data offset") {
    Split s = split(bytes);
    s.header["tower.2.bias"]["data_offsets"][1] = s.buffer.size() + 100;
    expect_rejected(join(s), "tensor 'tower.2.bias': data_offsets [");
    expect_rejected(join(s), "points past the end of the " + std::to_string(s.buffer.size()) + "-byte data buffer");
  }
  SECTION("offsets that disagree with the shape") {
    Split s = split(bytes);
    s.header["tower.0.weight"]["shape"] = {8, 17};
    expect_rejected(join(s), "tensor 'tower.0.weight': data_offsets [");
    expect_rejected(join(s), "but shape [8, 17] of F32 needs 544 bytes");
  }
  SECTION("gap, overlap and trailing bytes") {
    Split s = split(bytes);
    Split gap = s;
    auto& o = gap.header["tower.2.bias"]["data_offsets"];
    o = {o[0].get<std::uint64_t>() + 4, o[1].get<std::uint64_t>() + 4};
    gap.buffer.resize(gap.buffer.size() + 4);
    expect_rejected(join(gap), "tensor 'tower.2.bias' starts at byte");
    expect_rejected(join(gap), "(gap)");

    Split overlap = s;
    auto& o2 = overlap.header["tower.2.bias"]["data_offsets"];
    o2 = {o2[0].get<std::uint64_t>() - 4, o2[1].get<std::uint64_t>() - 4};
    expect_rejected(join(overlap), "(overlap)");

    Split trailing = s;
    trailing.buffer.resize(trailing.buffer.size() + 3);
    expect_rejected(join(trailing), "3 trailing bytes belong to no tensor");
  }
  SECTION("wrong dtype") {
    Split s = split(bytes);
    s.header["tower.0.bias"]["dtype"] = "I32";
    expect_rejected(join(s), "tensor 'tower.0.bias': dtype I32 is not supported");
    s.header["tower.0.bias"]["dtype"] = "Q7";
    expect_rejected(join(s), "tensor 'tower.0.bias': unknown dtype 'Q7'");

    // A well-formed F64 tensor: readable safetensors, but the model is float32.
    const TensorData& b = good.at("tower.1.bias");
    TensorData f64;
    f64.dtype = TensorDtype::F64;
    f64.shape = b.shape;
    for (std::size_t i = 0; i < b.numel(); ++i) {
      const auto bits = std::bit_cast<std::uint64_t>(b.value(i));
      for (int k = 0; k < 8; ++k) f64.bytes.push_back(static_cast<std::uint8_t>(bits >> (8 * k)));
    }
    expect_rejected(serialize_safetensors(with_tensor(good, "tower.1.bias", &f64)),
                    "tensor 'tower.1.bias': dtype F64, expected F32");
  }
  SECTION("wrong shape") {
    // Same byte count, transposed: a PyTorch weight exported as W^T.
    TensorData t = good.at("tower.0.weight");
    t.shape = {18, 8};
    expect_rejected(serialize_safetensors(with_tensor(good, "tower.0.weight", &t)),
                    "tensor 'tower.0.weight': shape [18, 8], expected [8, 18]");
    TensorData e = good.at("embedding.user_id");
    e.shape = {25, 8};
    expect_rejected(serialize_safetensors(with_tensor(good, "embedding.user_id", &e)),
                    "tensor 'embedding.user_id': shape [25, 8], expected [50, 4]");
  }
  SECTION("NaN and infinite values") {
    TensorData t = good.at("embedding.item_cats");
    const auto nan = std::bit_cast<std::uint32_t>(std::numeric_limits<float>::quiet_NaN());
    for (int k = 0; k < 4; ++k) t.bytes[12 + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(nan >> (8 * k));
    expect_rejected(serialize_safetensors(with_tensor(good, "embedding.item_cats", &t)),
                    "tensor 'embedding.item_cats': element 3 is not finite (nan)");
    TensorData b = good.at("tower.2.bias");
    const auto inf = std::bit_cast<std::uint32_t>(-std::numeric_limits<float>::infinity());
    for (int k = 0; k < 4; ++k) b.bytes[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(inf >> (8 * k));
    expect_rejected(serialize_safetensors(with_tensor(good, "tower.2.bias", &b)), "element 0 is not finite (-inf)");
  }
  SECTION("bad JSON") {
    const Split s = split(bytes);
    std::string text = s.header.dump();
    text[text.find("\"tower.2.bias\"") - 1] = '}';  // the comma before a tensor entry
    expect_rejected(assemble(text, s.buffer), "header is not valid JSON");
    expect_rejected(assemble("[1, 2]", {}), "header does not start with '{'");
    expect_rejected(assemble("{\"a\": [[[1]]]}", {}), "header is nested deeper than 3 levels");
    expect_rejected(assemble("{\"a\": 1}", {}), "tensor 'a': entry is not a JSON object");
    // Duplicate names would be silently merged by a lenient parser.
    std::string dup = s.header.dump();
    const std::string first = "\"tower.2.bias\":" + s.header["tower.2.bias"].dump();
    dup.insert(dup.size() - 1, "," + first);
    expect_rejected(assemble(dup, s.buffer), "header names 'tower.2.bias' twice");
  }
  SECTION("bad config") {
    auto with_config = [&](const std::string& config) {
      Safetensors st = good;
      st.metadata()["age.config"] = config;
      return serialize_safetensors(st);
    };
    expect_rejected(with_config("{\"format\": "), "metadata 'age.config' is not valid JSON");
    nlohmann::json c = nlohmann::json::parse(good.metadata().at("age.config"));
    nlohmann::json bad = c;
    bad["fields"][0]["side"] = "middle";
    expect_rejected(with_config(bad.dump()), "fields[0] ('user_id'): side 'middle', expected 'user' or 'item'");
    bad = c;
    bad["fields"][3]["dim"] = 0;
    expect_rejected(with_config(bad.dump()), "fields[3] ('item_id'): 'dim' must be > 0, got 0");
    bad = c;
    bad["fields"][1]["kind"] = "bag";
    expect_rejected(with_config(bad.dump()), "kind 'bag', expected 'categorical', 'multi_hot' or 'dense'");
    bad = c;
    bad["version"] = 2;
    expect_rejected(with_config(bad.dump()), "format version 2 is not supported");
    bad = c;
    bad["hidden"] = {8, 0};
    expect_rejected(with_config(bad.dump()), "hidden layer 1: 'size' must be > 0");
    bad = c;
    bad["fields"][4]["name"] = "item_id";
    expect_rejected(with_config(bad.dump()), "'item_id': declared twice");
    Safetensors st = good;
    st.metadata().erase("age.config");
    expect_rejected(serialize_safetensors(st), "missing metadata 'age.config'");
    st = good;
    st.metadata()["age.colour"] = "blue";
    expect_rejected(serialize_safetensors(st), "unknown reserved metadata key 'age.colour'");
  }
  SECTION("missing tensor") {
    expect_rejected(serialize_safetensors(with_tensor(good, "embedding.item_id", nullptr)),
                    "missing tensor 'embedding.item_id' (table of field 'item_id', [rows, dim], shape [40, 5])");
    expect_rejected(serialize_safetensors(with_tensor(good, "tower.2.weight", nullptr)),
                    "missing tensor 'tower.2.weight'");
  }
  SECTION("unknown tensor") {
    Safetensors st = good;
    const std::vector<float> v{1.0f, 2.0f};
    st.add_f32("extra.weight", {2}, v);
    expect_rejected(serialize_safetensors(st), "unknown tensor 'extra.weight' (not part of the model's config)");
    Safetensors st2 = good;
    st2.add_f32("tower.3.weight", {2}, v);
    expect_rejected(serialize_safetensors(st2), "unknown tensor 'tower.3.weight' (tower 'tower' has 3 layers)");
  }
}

TEST_CASE("every truncation and random byte corruption is a FormatError, never a crash", "[io]") {
  const Bytes bytes = serialize_safetensors(model_to_safetensors(golden_model()));
  for (std::size_t n = 0; n < bytes.size(); ++n)
    REQUIRE_THROWS_AS(model_from_safetensors(parse_safetensors(std::span(bytes.data(), n))), FormatError);

  // Flip bytes at random; the file may still be valid (a flipped weight), otherwise the
  // error must be a FormatError. Seeded, so a failure reproduces.
  Rng rng(2024);
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    Bytes b = bytes;
    const int flips = 1 + static_cast<int>(rng.below(3));
    for (int k = 0; k < flips; ++k) b[rng.below(b.size())] ^= static_cast<std::uint8_t>(1 + rng.below(255));
    try {
      (void)model_from_safetensors(parse_safetensors(b));
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  CHECK(rejected > 100);  // most flips land in the header or produce a broken value
}

TEST_CASE("generic safetensors: dtypes, metadata, finite check, in-memory round trip", "[io]") {
  Safetensors st;
  st.metadata()["who"] = "test";
  // F16: 1.0, -2.0, smallest subnormal 2^-24, +inf; BF16: 1.0, -0.5
  TensorData h;
  h.dtype = TensorDtype::F16;
  h.shape = {2, 2};
  h.bytes = {0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0x00, 0x7C};
  st.add("half", h);
  TensorData bf;
  bf.dtype = TensorDtype::BF16;
  bf.shape = {2};
  bf.bytes = {0x80, 0x3F, 0x00, 0xBF};
  st.add("bf", bf);
  const std::vector<float> v{0.1f, -3.5f, 7.0f};
  st.add_f32("f", {3}, v);
  TensorData scalar = TensorData::from_f32({}, std::vector<float>{42.0f});
  st.add("scalar", scalar);
  st.add("empty", TensorData::from_f32({0, 4}, std::vector<float>{}));

  const Bytes bytes = serialize_safetensors(st);
  const Safetensors back = parse_safetensors(bytes);
  CHECK(back.names() == st.names());
  CHECK(back.metadata() == st.metadata());
  CHECK(back.at("half").value(0) == 1.0);
  CHECK(back.at("half").value(1) == -2.0);
  CHECK(back.at("half").value(2) == std::ldexp(1.0, -24));
  CHECK(std::isinf(back.at("half").value(3)));
  CHECK(back.at("bf").value(0) == 1.0);
  CHECK(back.at("bf").value(1) == -0.5);
  CHECK(back.at("f").value(1) == -3.5);
  CHECK(back.at("scalar").numel() == 1);
  CHECK(back.at("scalar").value(0) == 42.0);
  CHECK(back.at("empty").numel() == 0);
  CHECK(serialize_safetensors(back) == bytes);

  SafetensorsReadOptions strict;
  strict.require_finite = true;
  CHECK_THROWS_WITH(parse_safetensors(bytes, "x", strict), Catch::Contains("x: tensor 'half': element 3 is not finite (inf)"));

  CHECK_THROWS_WITH(st.add("f", TensorData{}), Catch::Contains("tensor 'f': added twice"));
  CHECK_THROWS_WITH(st.add("__metadata__", TensorData{}), Catch::Contains("reserved"));
  TensorData wrong = TensorData::from_f32({3}, v);
  wrong.shape = {4};
  CHECK_THROWS_WITH(st.add("g", wrong), Catch::Contains("tensor 'g': 12 bytes but shape [4] of F32 needs 16 bytes"));
  CHECK_THROWS_AS(TensorData::from_f32({2, 2}, v), DimensionError);
  CHECK_THROWS_WITH(st.at("nope"), Catch::Contains("no tensor named 'nope'"));

  // Metadata values must be strings; a missing key in an entry is named.
  CHECK_THROWS_WITH(parse_safetensors(assemble("{\"__metadata__\":{\"a\":1}}", {})),
                    Catch::Contains("__metadata__ 'a' must be a string"));
  CHECK_THROWS_WITH(parse_safetensors(assemble("{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", {})),
                    Catch::Contains("tensor 't': missing 'data_offsets'"));
  CHECK_THROWS_WITH(parse_safetensors(assemble("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", {})),
                    Catch::Contains("tensor 't': shape entry must be a non-negative integer, got -1"));
  CHECK_THROWS_WITH(
      parse_safetensors(assemble("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0],\"x\":1}}", {})),
      Catch::Contains("tensor 't': unexpected key 'x'"));
  CHECK_THROWS_WITH(parse_safetensors(assemble("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", {})),
                    Catch::Contains("data_offsets [4, 0] has begin > end"));
  CHECK_THROWS_WITH(parse_safetensors(assemble("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,"
                                               "4294967296],\"data_offsets\":[0,0]}}",
                                               {})),
                    Catch::Contains("is too large"));
  CHECK_THROWS_AS(read_safetensors(fs::path(AGE_TEST_BINARY_DIR) / "io_test_tmp" / "does-not-exist"), IoError);
}

TEST_CASE("a failing save leaves the previous file intact and no temporary behind", "[io]") {
  const fs::path dir = fresh_dir("failing_save");
  const fs::path target = dir / "model.safetensors";
  const EmbeddingCtrModel old_model = golden_model();
  save_model(target, old_model);
  const Bytes old_bytes = read_file_bytes(target);
  auto only_target_left = [&] {
    std::vector<fs::path> entries;
    for (const auto& e : fs::directory_iterator(dir)) entries.push_back(e.path().filename());
    return entries == std::vector<fs::path>{"model.safetensors"};
  };

  SECTION("the write itself fails half way (file size limit)") {
    // Root ignores permissions, but not RLIMIT_FSIZE: writes past the limit fail with EFBIG.
    const EmbeddingCtrModel big = mixed_model(1);
    const std::size_t big_size = serialize_safetensors(model_to_safetensors(big)).size();
    REQUIRE(big_size > old_bytes.size() + 1024);
    rlimit saved{};
    REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
    auto* previous_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit small = saved;
    small.rlim_cur = static_cast<rlim_t>(old_bytes.size() + 512);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
    bool threw_io = false;
    std::string message;
    try {
      save_model(target, big);
    } catch (const IoError& e) {
      threw_io = true;
      message = e.what();
    }
    setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, previous_handler);
    CHECK(threw_io);
    CHECK_THAT(message, Catch::Contains("cannot save '" + target.string() + "': writing"));
    CHECK(read_file_bytes(target) == old_bytes);
    CHECK(only_target_left());
    require_bit_exact(load_model(target), old_model);
  }
  SECTION("the target is a directory") {
    fs::create_directory(dir / "sub");
    CHECK_THROWS_WITH(save_model(dir / "sub", old_model), Catch::Contains("it is a directory"));
    CHECK(fs::is_directory(dir / "sub"));
    CHECK(fs::is_empty(dir / "sub"));
    fs::remove(dir / "sub");
    CHECK(only_target_left());
  }
  SECTION("the temporary file cannot be created (parent is a file)") {
    CHECK_THROWS_AS(save_model(target / "inner.safetensors", old_model), IoError);
    CHECK_THROWS_WITH(save_model(target / "inner.safetensors", old_model),
                      Catch::Contains("cannot create temporary file"));
    CHECK(read_file_bytes(target) == old_bytes);
    CHECK(only_target_left());
  }
  SECTION("the model cannot be saved (non-finite weight, reserved metadata key)") {
    EmbeddingCtrModel bad = mixed_model(2);
    bad.tower().edit().weight(1)(2, 3) = std::numeric_limits<Scalar>::quiet_NaN();
    CHECK_THROWS_WITH(save_model(target, bad), Catch::Contains("cannot save tensor 'tower.1.weight': element"));
    CHECK_THROWS_AS(save_model(target, bad), InputError);
    // A reserved key is a FormatError (the file format cannot hold it), naming the file.
    CHECK_THROWS_AS(save_model(target, old_model, {{"age.config", "x"}}), FormatError);
    CHECK_THROWS_WITH(save_model(target, old_model, {{"age.config", "x"}}),
                      Catch::Contains("cannot save '" + target.string() + "'") && Catch::Contains("'age.config'"));
    CHECK(read_file_bytes(target) == old_bytes);
    CHECK(only_target_left());
  }
  SECTION("a successful save replaces the file") {
    const EmbeddingCtrModel other = mixed_model(9);
    save_model(target, other);
    require_bit_exact(load_model(target), other);
    CHECK(only_target_left());
  }
}

TEST_CASE("extra towers (a DGU gate) share the model file or live in their own", "[io]") {
  const fs::path dir = fresh_dir("towers");
  const EmbeddingCtrModel model = mixed_model(21);
  Tower dgu(0, model.item_dim(), {6});
  Rng rng(4);
  dgu.initialize(rng);

  Safetensors st = model_to_safetensors(model, {{"k", "v"}});
  add_tower(st, "dgu", dgu);
  write_safetensors(dir / "both.safetensors", st);
  const Safetensors file = read_safetensors(dir / "both.safetensors");
  require_bit_exact(model_from_safetensors(file), model);
  require_bit_exact(load_model(dir / "both.safetensors"), model);
  const Tower back = read_tower(file, "dgu");
  CHECK(back.user_dim() == 0);
  CHECK(back.item_dim() == model.item_dim());
  CHECK(back.hidden() == dgu.hidden());
  for (std::size_t l = 0; l < dgu.num_layers(); ++l) {
    CHECK(same_bits(back.weight(l), dgu.weight(l)));
    CHECK(same_bits(back.bias(l), dgu.bias(l)));
  }
  CHECK_THROWS_WITH(add_tower(st, "dgu", dgu), Catch::Contains("tower 'dgu': added twice"));
  CHECK_THROWS_WITH(add_tower(st, "tower", dgu), Catch::Contains("tensor 'tower.0.weight' exists already"));
  CHECK_THROWS_AS(add_tower(st, "embedding", dgu), ConfigError);
  CHECK_THROWS_WITH(read_tower(file, "gate"), Catch::Contains("missing metadata 'age.tower.gate'"));

  // A stray layer under the tower's prefix, and a tower whose config disagrees with its tensors.
  Safetensors stray = file;
  stray.add_f32("dgu.1.extra", {1}, std::vector<float>{0.0f});
  CHECK_THROWS_WITH(read_tower(stray, "dgu"), Catch::Contains("unknown tensor 'dgu.1.extra' (tower 'dgu' has 2 layers)"));
  Safetensors lying = file;
  lying.metadata()["age.tower.dgu"] = R"({"version":1,"user_dim":0,"item_dim":7,"hidden":[6]})";
  CHECK_THROWS_WITH(model_from_safetensors(lying, "f"),
                    Catch::Contains("f: tensor 'dgu.0.weight': shape [6, 9], expected [6, 7]"));

  save_tower(dir / "dgu.safetensors", dgu, "dgu");
  const Tower alone = load_tower(dir / "dgu.safetensors", "dgu");
  CHECK(same_bits(alone.weight(0), dgu.weight(0)));
  CHECK_THROWS_WITH(load_model(dir / "dgu.safetensors"), Catch::Contains("missing metadata 'age.config'"));
}

#else

TEST_CASE("io headers need nlohmann_json", "[io]") { WARN("skipped: nlohmann_json not found, age/io not tested"); }

#endif
