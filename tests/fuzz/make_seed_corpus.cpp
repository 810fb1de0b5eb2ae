// Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/): small valid
// inputs that reach deep into each parser, and invalid ones that stop at each check.
// The corpus is committed; rerun after a format change:
//
//   age_fuzz_seed_corpus tests/fuzz/corpus
//
// (tiny_model.safetensors is the io golden file, copied in by hand; the obd_csv seeds
// real_*.csv are a few rows of the Open Bandit Dataset sample in examples/data/obd/,
// Apache-2.0, see its README and LICENSE.)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "age/core/rng.hpp"
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "age/io/served_log.hpp"
#include "fuzz_targets.hpp"

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

namespace {

void write(const fs::path& path, const Bytes& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}
void write(const fs::path& path, const std::string& text) { write(path, Bytes(text.begin(), text.end())); }

// A file with a hand-written header, for the invalid seeds.
Bytes assemble(const std::string& header, const Bytes& buffer) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(header.size() >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), buffer.begin(), buffer.end());
  return out;
}

age::EmbeddingCtrModel small_model() {
  age::FeatureLayout layout;
  layout.add_categorical("u", age::Side::User, 3, 2)
      .add_multi_hot("t", age::Side::User, 2, 1, age::Pooling::Mean)
      .add_dense("d", age::Side::User, 1)
      .add_categorical("i", age::Side::Item, 3, 2)
      .add_multi_hot("c", age::Side::Item, 2, 1, age::Pooling::Sum)
      .add_dense("p", age::Side::Item, 1);
  age::EmbeddingCtrModel model(layout, {3, 2});
  age::Rng rng(5);
  model.initialize(rng, 0.5);
  return model;
}

// The safetensors_parts form of a file: header, NUL, data buffer (no length field).
Bytes parts(const Bytes& file) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]) << (8 * i);
  Bytes out(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  out.push_back(0);
  out.insert(out.end(), file.begin() + 8 + static_cast<std::ptrdiff_t>(n), file.end());
  return out;
}

void safetensors_seeds(const fs::path& dir, const fs::path& parts_dir) {
  const age::EmbeddingCtrModel model = small_model();
  age::Safetensors st = model_to_safetensors(model, {{"step", "42"}});
  age::Tower dgu(0, model.item_dim(), {2});
  age::Rng rng(6);
  dgu.initialize(rng);
  add_tower(st, "dgu", dgu);
  const Bytes full = serialize_safetensors(st);
  write(dir / "model_with_dgu.safetensors", full);
  write(dir / "model_plain.safetensors", serialize_safetensors(model_to_safetensors(model)));

  age::Safetensors generic;
  generic.metadata()["who"] = "seed";
  age::TensorData half;
  half.dtype = age::TensorDtype::F16;
  half.shape = {2, 2};
  half.bytes = {0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0xFF, 0x7B};
  generic.add("half", half);
  age::TensorData bf;
  bf.dtype = age::TensorDtype::BF16;
  bf.shape = {2};
  bf.bytes = {0x80, 0x3F, 0x00, 0xBF};
  generic.add("bf", bf);
  age::TensorData dbl;
  dbl.dtype = age::TensorDtype::F64;
  dbl.shape = {1};
  dbl.bytes = {0, 0, 0, 0, 0, 0, 0xF0, 0x3F};
  generic.add("dbl", dbl);
  generic.add_f32("scalar", {}, std::vector<float>{1.5f});
  generic.add_f32("empty", {0, 3}, std::vector<float>{});
  write(dir / "dtypes.safetensors", serialize_safetensors(generic));

  age::Safetensors nonfinite;
  nonfinite.add_f32("x", {3}, std::vector<float>{1.0f, std::numeric_limits<float>::infinity(),
                                                 std::numeric_limits<float>::quiet_NaN()});
  write(dir / "nonfinite.safetensors", serialize_safetensors(nonfinite));
  write(dir / "empty_header.safetensors", assemble("{}", {}));
  write(parts_dir / "model_with_dgu.parts", parts(full));
  write(parts_dir / "model_plain.parts", parts(serialize_safetensors(model_to_safetensors(model))));
  write(parts_dir / "dtypes.parts", parts(serialize_safetensors(generic)));
  write(parts_dir / "header_only.parts", std::string(R"({"__metadata__":{"k":"v"}})"));

  // Invalid: each stops at a different check.
  write(dir / "truncated.safetensors", Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(full.size() / 2)));
  Bytes huge_length = full;
  huge_length[7] = 0x7F;
  write(dir / "huge_length.safetensors", huge_length);
  const Bytes four{0, 0, 128, 63};
  write(dir / "duplicate_key.safetensors",
        assemble(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 four));
  write(dir / "gap.safetensors", assemble(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", Bytes(8, 0)));
  write(dir / "overlap.safetensors",
        assemble(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 four));
  write(dir / "int_dtype.safetensors", assemble(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", four));
  write(dir / "not_object.safetensors", assemble("[1,2]", {}));
  write(dir / "deep.safetensors", assemble(R"({"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}})", four));
  write(dir / "metadata_number.safetensors", assemble(R"({"__metadata__":{"k":1}})", {}));
  write(dir / "shape_overflow.safetensors",
        assemble(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", {}));

  // Valid JSON, then a NUL byte and more JSON inside the declared header length.
  const Bytes plain = serialize_safetensors(model_to_safetensors(model));
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(plain[static_cast<std::size_t>(i)]) << (8 * i);
  std::string header(plain.begin() + 8, plain.begin() + 8 + static_cast<std::ptrdiff_t>(header_len));
  while (!header.empty() && header.back() == ' ') header.pop_back();
  header += '\0';
  header += R"({"x":1})";
  write(dir / "nul_after_header.safetensors",
        assemble(header, Bytes(plain.begin() + 8 + static_cast<std::ptrdiff_t>(header_len), plain.end())));
  // A finite but huge weight (1e30): parses, refused as a model.
  age::Safetensors huge;
  const age::Safetensors plain_st = model_to_safetensors(model);
  huge.metadata() = plain_st.metadata();
  for (const std::string& name : plain_st.names()) {
    age::TensorData t = plain_st.at(name);
    if (name == "tower.0.weight") {
      const float big = 1e30f;
      std::memcpy(t.bytes.data(), &big, sizeof big);
    }
    huge.add(name, std::move(t));
  }
  write(dir / "huge_weight.safetensors", serialize_safetensors(huge));
}

void config_seeds(const fs::path& dir) {
  const age::Safetensors st = model_to_safetensors(small_model());
  write(dir / "mixed.json", st.metadata().at(std::string(age::kModelConfigKey)));
  write(dir / "minimal.json",
        std::string(R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"i","side":"item","kind":"dense","dim":1}],"hidden":[]})"));
  write(dir / "wrong_version.json",
        std::string(R"({"format":"age.embedding_ctr","version":2,"fields":[],"hidden":[]})"));
  write(dir / "dense_with_rows.json",
        std::string(R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"i","side":"item","kind":"dense","dim":1,"rows":3}],"hidden":[]})"));
  write(dir / "duplicate_field.json",
        std::string(R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"i","side":"item","kind":"categorical","dim":1,"rows":2},{"name":"i","side":"item","kind":"dense","dim":1}],"hidden":[4]})"));
  write(dir / "no_item.json",
        std::string(R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"u","side":"user","kind":"dense","dim":1}],"hidden":[1]})"));
  std::string nul = R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"i","side":"item","kind":"dense","dim":1}],"hidden":[]})";
  nul += '\0';
  nul += R"({"hidden":[1]})";
  write(dir / "nul_then_garbage.json", nul);
  write(dir / "huge_dim.json",
        std::string(R"({"format":"age.embedding_ctr","version":1,"fields":[{"name":"i","side":"item","kind":"multi_hot","dim":2147483647,"rows":2147483647,"pooling":"sum"}],"hidden":[0]})"));
}

#ifdef AGE_FUZZ_WITH_ZLIB
// `text` as one gzip member (no file name, time 0).
std::string gzip_member(const std::string& text) {
  z_stream zs{};
  if (deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  std::string out(deflateBound(&zs, static_cast<uLong>(text.size())), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  zs.avail_in = static_cast<uInt>(text.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate failed");
  return out;
}
#endif

void r6b_seeds(const fs::path& line_dir, const fs::path& file_dir) {
  const std::string valid = "1317513292 id-552077 0 |user 1 7 11 37 13 |id-552077 |id-555224 |id-555528";
  write(line_dir / "valid.txt", valid);
  write(line_dir / "click_no_features.txt", std::string("1317513300 id-1 1 |user |id-1"));
  write(line_dir / "tabs_crlf.txt", std::string("5\tid-7\t0\t|user\t136\t|id-7\t|id-8\r"));
  write(line_dir / "bad_click.txt", std::string("1317513292 id-552077 2 |user 1 |id-552077"));
  write(line_dir / "feature_range.txt", std::string("1 id-2 0 |user 0 137 |id-2"));
  write(line_dir / "not_displayed.txt", std::string("1 id-2 0 |user 1 |id-3 |id-4"));
  write(line_dir / "feature_after_candidate.txt", std::string("1 id-2 0 |user |id-2 5"));
  write(line_dir / "big_numbers.txt", std::string("-9223372036854775808 id-18446744073709551615 1 |user 4294967295 |id-18446744073709551615"));
  write(line_dir / "empty.txt", std::string());

  std::string file = valid + "\n" + "1317513293 id-555224 1 |user 2 3 |id-555224 |id-552077\n" + "garbage line\n" +
                     "\n" + "1317513294 id-1 0 |user |id-1";
  write(file_dir / "plain.txt", file);
  std::string nul_line = "1 id-1 0 |user |id-1";
  nul_line += '\0';
  nul_line += " trailing\n2 id-2 0 |user |id-2\n";
  write(file_dir / "nul_byte.txt", nul_line);
  write(file_dir / "long_line.txt", "1 id-1 0 |user " + std::string(9000, '1') + " |id-1\n" + valid + "\n");
#ifdef AGE_FUZZ_WITH_ZLIB
  {
    age::sim::R6bWriter writer((file_dir / "gzip.txt.gz").string(), 9);
    age::sim::R6bEvent e;
    age::sim::parse_r6b_line(valid, e);
    writer.write(e);
    e.click = true;
    writer.write(e);
    writer.close();
  }
  Bytes gz;
  {
    std::ifstream in(file_dir / "gzip.txt.gz", std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  write(file_dir / "gzip_truncated.gz", Bytes(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(gz.size() / 2)));
  // Lines after the end of the gzip stream (an error, not silently dropped); two members.
  const std::string first = gzip_member("1 id-1 0 |user 1 |id-1\n2 id-2 1 |user 2 |id-1 |id-2\n");
  write(file_dir / "gzip_trailing_text.gz", first + "3 id-3 0 |user 3 |id-3\n");
  write(file_dir / "gzip_two_members.gz", first + gzip_member("5 id-5 1 |user 5 |id-5\n"));
#endif
}

// The lines of a text file up to line `n` (1-based, inclusive), each with its '\n'.
std::string first_lines(const fs::path& path, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::string out, line;
  for (std::size_t k = 0; k < n && std::getline(in, line); ++k) out += line + '\n';
  return out;
}

// obd_csv inputs: "<item file>\0<log>", or a log alone (read with kFuzzObdItems).
void obd_seeds(const fs::path& dir) {
  const std::string nul(1, '\0');
  const std::string head3 =
      ",timestamp,item_id,position,click,propensity_score,user_feature_0,user-item_affinity_0,"
      "user-item_affinity_1,user-item_affinity_2\n";
  write(dir / "log_only.csv", head3 + "0,2019-11-24 00:00:00,1,1,0,0.5,u1,0.0,1.0,2\n1,t,2,3,1,0.25,u2,1,0,-0.5\n");
  write(dir / "log_no_affinity.csv",
        std::string(",timestamp,item_id,position,click,propensity_score\n0,t,0,1,1,1\n\n7,t,2,2,0,0.125\n"));
  write(dir / "crlf_blank.csv", ",timestamp,item_id,position,click,propensity_score,user_feature_0\r\n\r\n"
                                "0,t,0,1,0,0.5,x\r\n\r\n1,t,1,2,0,0.5,y\r\n");
  write(dir / "skip_mixed.csv", head3 + "0,t,1,1,0,0.5,u1,0,1,2\n1,t,1,1,0,0,u1,0,1,2\n2,t,7,1,0,0.5,u1,0,1,2\n"
                                        "3,t,1,0,0,0.5,u1,0,1,2\n4,t,1,1,2,0.5,u1,0,1,2\n5,t,1,1,0,0.5,,0,1,2\n"
                                        "6,t,1,1,0,0.5,u1,x,1,2\n7,t,1,1,0,0.5,u1,0,1\n8,t,1,1,0,\"0.5\",u1,0,1,2\n");
  write(dir / "columns_reordered.csv",
        std::string(",propensity_score,click,user_feature_1,position,item_id,user_feature_0,timestamp\n"
                    "0,0.5,1,b,2,1,a,t\n"));
  write(dir / "feature_gap.csv", std::string(",timestamp,item_id,position,click,propensity_score,user_feature_0,"
                                             "user_feature_2\n0,t,0,1,0,0.5,a,b\n"));
  write(dir / "affinity_count.csv", std::string(",timestamp,item_id,position,click,propensity_score,"
                                                "user-item_affinity_0\n0,t,0,1,0,0.5,1\n"));
  write(dir / "missing_column.csv", std::string(",timestamp,item_id,position,click\n0,t,0,1,0\n"));
  write(dir / "items_and_log.csv", ",item_id,item_feature_0,item_feature_1\n1,1,2.5,x\n0,0,-3,7\n" + nul +
                                       ",timestamp,item_id,position,click,propensity_score,user-item_affinity_0,"
                                       "user-item_affinity_1\n0,t,1,1,1,0.5,0.25,4\n");
  write(dir / "items_duplicate_id.csv",
        ",item_id,item_feature_0\n0,0,1\n0,0,2\n" + nul + ",timestamp,item_id,position,click,propensity_score\n");
  write(dir / "items_id_range.csv",
        ",item_id\n0,0\n1,5\n" + nul + ",timestamp,item_id,position,click,propensity_score\n0,t,0,1,0,1\n");
  write(dir / "items_empty.csv", nul + ",timestamp,item_id,position,click,propensity_score\n");

  // The shipped sample: all 34 items and the first rows of each behaviour policy's log.
  const fs::path obd = AGE_FUZZ_OBD_DIR;
  for (const char* policy : {"random", "bts"}) {
    if (!fs::exists(obd / policy / "men.csv")) continue;
    write(dir / (std::string("real_") + policy + ".csv"),
          first_lines(obd / policy / "item_context.csv", 100) + nul + first_lines(obd / policy / "men.csv", 4));
  }
}

// served_log inputs: JSON lines and CSV (every input is read both ways).
age::ServedRecord served_record() {
  age::ServedRecord r;
  r.request_id = 17;
  r.seed = 5;
  r.policy = "epsilon-greedy";
  r.method = age::PropensityMethod::exact;
  r.candidates = {10, 11, 12};
  r.shown = {age::ShownItem{.position = 1, .candidate = 2, .item = 12, .propensity = 0.75, .reward = 1},
             age::ShownItem{.position = 2, .candidate = 0, .item = 10, .propensity = 0.125, .reward = 0}};
  r.base = {0.25f, 0.5f, 0.125f};
  r.delta = {0, 0, 2};
  r.gate = {0, 0, 1};
  r.explored = {0.25f, 0.5f, 2.125f};
  r.user = {age::FieldInput{{3, 7}, {}}, age::FieldInput{{}, {0.5f, -1.0f}}};
  r.candidate_features = {{age::FieldInput{{10}, {}}}, {age::FieldInput{{11}, {0.25f}}}, {age::FieldInput{}}};
  return r;
}

void served_seeds(const fs::path& dir) {
  const age::ServedRecord full = served_record();
  age::ServedRecord deferred;
  deferred.request_id = 18446744073709551615ULL;
  deferred.seed = 3;
  deferred.policy = "age-ts";
  deferred.candidates = {4, 5};
  deferred.shown = {age::ShownItem{.position = 1, .candidate = 1, .item = 5}};
  age::ServedRecord mc = deferred;
  mc.request_id = 9;
  mc.method = age::PropensityMethod::monte_carlo;
  mc.draws = 256;
  mc.shown[0].propensity = 0.001953125;
  mc.shown[0].propensity_se = 0.0123;

  std::ostringstream jsonl, csv;
  age::ServedJsonWriter json_writer(jsonl);
  age::ServedCsvWriter csv_writer(csv);
  for (const age::ServedRecord& r : {full, deferred, mc}) {
    json_writer.write(r);
    csv_writer.write(r);
  }
  write(dir / "records.jsonl", jsonl.str());
  write(dir / "records.csv", csv.str());
  write(dir / "one_line.jsonl", age::served_record_json(full));

  const std::string good = age::served_record_json(deferred);
  write(dir / "mixed.jsonl", good + "\n\n  \t\nnot json\r\n[1,2]\n{\"request_id\":1}\n" + good + "\r\n");
  write(dir / "unknown_key.jsonl",
        std::string(R"({"request_id":1,"seed":0,"policy":"p","propensity_method":"exact","candidates":[7],)"
                    R"("shown":[{"position":1,"candidate":0,"item":7,"propensity":1,"reward":null}],"new":{"a":[1]}})"));
  write(dir / "bad_values.jsonl",
        std::string(R"({"request_id":-1,"seed":0,"policy":"p","propensity_method":"exact","candidates":[7],"shown":[]})"
                    "\n"
                    R"({"request_id":1,"seed":0,"policy":"p","propensity_method":"often","candidates":[7],"shown":[]})"
                    "\n"
                    R"({"request_id":1,"seed":0,"policy":"p","propensity_method":"exact","candidates":[7],)"
                    R"("shown":[{"position":4294967296,"candidate":0,"item":7,"propensity":1}]})"
                    "\n"
                    R"({"request_id":1,"seed":0,"policy":"p","propensity_method":"exact","candidates":[7],)"
                    R"("shown":[{"position":1,"candidate":0,"item":7,"propensity":1}],"breakdown":{"base":[1],)"
                    R"("delta":[0],"gate":[2],"explored":[1]},"user":[{"ids":[1],"values":[0.5]}]})"
                    "\n"));
  const std::string header = std::string(age::kServedCsvHeader) + "\n";
  write(dir / "csv_features.csv", header + "1,0,p,deferred,0,1,0,7,,0,,7 8,,,,,;=0.5;,1 2=3;;|=1;|\n"
                                           "1,0,p,deferred,0,2,1,8,,0,1,7 8,,,,,;=0.5;,1 2=3;;|=1;|\n");
  write(dir / "csv_bad_rows.csv",
        header + "1,0,p,exact,0,1,0,7,0,0,,7,,,,,,\n1,0,p,exact,0,1,0,7,0.5,0,,7,,,,,,\n"
                 "1,0,p,exact,0,1,0,7,0.5,0,,7,,,,,,\n2,0,p,exact,0,1,0,7,0.5,0,,7,1,0,2,1,,\n"
                 "3,0,p,exact,0,1,0,7,0.5,0,,7,,,,,1;,2\n4,0,p,exact,0,1\n\n5,0,p,exact,0,1,0,7,0.5,-1,x,7,,,,,,\r\n");
  write(dir / "csv_header_only.csv", header);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  const fs::path root = argv[1];
  safetensors_seeds(root / "safetensors", root / "safetensors_parts");
  config_seeds(root / "model_config");
  obd_seeds(root / "obd_csv");
  served_seeds(root / "served_log");
#ifdef AGE_FUZZ_HAVE_R6B
  r6b_seeds(root / "r6b_line", root / "r6b_file");
#endif
  std::printf("seed corpus written to %s\n", root.string().c_str());
  return 0;
}
