// Save and load a whole EmbeddingCtrModel as ONE safetensors file, laid out so that a
// PyTorch module of the same architecture loads it directly (examples/pytorch/):
//
//   embedding.<field>   F32 [rows, dim]  = nn.Embedding.weight; byte-for-byte our dim x rows
//                                          column-major table (one id's row is contiguous)
//   tower.<l>.weight    F32 [out, in]    = nn.Linear.weight, row-major (our Matrix is
//                                          column-major, so it is transposed on the way)
//   tower.<l>.bias      F32 [out]
//   __metadata__["age.config"]  the model configuration as a JSON string:
//     {"format":"age.embedding_ctr","version":1,
//      "fields":[{"name":..,"side":"user"|"item","kind":"categorical"|"multi_hot"|"dense",
//                 "dim":..,"rows":.. (table fields only),"pooling":"sum"|"mean" (multi_hot only)},..],
//      "hidden":[..]}
//
// Extra towers (e.g. the DGU gate's) can share the file: add_tower() writes
// "<prefix>.<l>.weight/bias" plus "age.tower.<prefix>" = {"version":1,"user_dim":..,
// "item_dim":..,"hidden":[..]}, and read_tower() reads one back.
//
// Metadata keys starting with "age." are reserved; any other string -> string pairs are
// free-form and pass through save_model/load_model unchanged (e.g. training step, data
// date).
//
// Requires nlohmann_json (link the CMake target age::io); age/age.hpp does not include it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/features/layout.hpp"
#include "age/io/safetensors.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"

namespace age {

inline constexpr std::uint64_t kModelFormatVersion = 1;
inline constexpr std::string_view kModelConfigKey = "age.config";
inline constexpr std::string_view kTowerConfigKeyPrefix = "age.tower.";

namespace detail {

// Any dimension in a config above this is taken as corruption (and keeps sums of
// dimensions far from overflow).
inline constexpr std::uint64_t kMaxConfigDim = std::numeric_limits<std::int32_t>::max();

inline std::string tensor_name(std::string_view prefix, std::size_t layer, std::string_view what) {
  return std::string(prefix) + "." + std::to_string(layer) + "." + std::string(what);
}

inline bool starts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.substr(0, prefix.size()) == prefix;
}

inline void check_user_metadata(const Safetensors::Metadata& metadata) {
  for (const auto& [key, value] : metadata)
    if (starts_with(key, "age."))
      throw ConfigError("metadata key '" + key + "': keys starting with 'age.' are reserved for the model format");
}

// Refuses to write a file that load would reject.
inline void check_finite_for_save(const Scalar* data, Index size, const std::string& tensor) {
  for (Index i = 0; i < size; ++i)
    if (!std::isfinite(data[i]))
      throw InputError("cannot save tensor '" + tensor + "': element " + std::to_string(i) + " is not finite (" +
                       std::to_string(data[i]) + ")");
}

// [out, in] row-major, as nn.Linear stores it.
inline TensorData linear_weight_tensor(const Matrix& w) {
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = w;
  return TensorData::from_f32({static_cast<std::uint64_t>(w.rows()), static_cast<std::uint64_t>(w.cols())},
                              std::span<const float>(row_major.data(), static_cast<std::size_t>(row_major.size())));
}

inline std::vector<std::pair<std::string, TensorData>> tower_tensors(std::string_view prefix, const Tower& tower) {
  std::vector<std::pair<std::string, TensorData>> out;
  for (std::size_t l = 0; l < tower.num_layers(); ++l) {
    const Matrix& w = tower.weight(l);
    const Vector& b = tower.bias(l);
    const std::string wn = tensor_name(prefix, l, "weight"), bn = tensor_name(prefix, l, "bias");
    check_finite_for_save(w.data(), w.size(), wn);
    check_finite_for_save(b.data(), b.size(), bn);
    out.emplace_back(wn, linear_weight_tensor(w));
    out.emplace_back(bn, TensorData::from_f32({static_cast<std::uint64_t>(b.size())},
                                              std::span<const float>(b.data(), static_cast<std::size_t>(b.size()))));
  }
  return out;
}

inline std::vector<std::uint64_t> tower_weight_shape(const std::vector<std::size_t>& hidden, std::size_t input_dim,
                                                     std::size_t l) {
  const std::size_t in = l == 0 ? input_dim : hidden[l - 1];
  const std::size_t out = l < hidden.size() ? hidden[l] : 1;
  return {out, in};
}

// The tensor `name`, checked to be F32 of exactly `shape` with finite values.
inline const TensorData& expect_f32(const Safetensors& st, const std::string& name,
                                    const std::vector<std::uint64_t>& shape, const std::string& where,
                                    const std::string& role) {
  const TensorData* t = st.find(name);
  if (!t) throw FormatError(where + ": missing tensor '" + name + "' (" + role + ", shape " + shape_string(shape) + ")");
  if (t->dtype != TensorDtype::F32)
    throw FormatError(where + ": tensor '" + name + "': dtype " + std::string(to_string(t->dtype)) + ", expected F32");
  if (t->shape != shape)
    throw FormatError(where + ": tensor '" + name + "': shape " + shape_string(t->shape) + ", expected " +
                      shape_string(shape) + " (" + role + ")");
  const std::size_t bad = t->first_non_finite();
  if (bad != t->numel())
    throw FormatError(where + ": tensor '" + name + "': element " + std::to_string(bad) + " is not finite (" +
                      std::to_string(t->value(bad)) + ")");
  return *t;
}

inline std::uint64_t config_uint(const nlohmann::json& obj, const char* key, const std::string& what, bool positive) {
  if (!obj.contains(key)) throw FormatError(what + ": missing '" + key + "'");
  const auto& v = obj[key];
  if (!v.is_number_unsigned())
    throw FormatError(what + ": '" + key + "' must be a non-negative integer, got " + v.dump());
  const std::uint64_t x = v.get<std::uint64_t>();
  if (positive && x == 0) throw FormatError(what + ": '" + key + "' must be > 0, got 0");
  if (x > kMaxConfigDim)
    throw FormatError(what + ": '" + key + "' = " + std::to_string(x) + " exceeds the limit " + std::to_string(kMaxConfigDim));
  return x;
}

inline std::string config_string(const nlohmann::json& obj, const char* key, const std::string& what) {
  if (!obj.contains(key)) throw FormatError(what + ": missing '" + key + "'");
  const auto& v = obj[key];
  if (!v.is_string()) throw FormatError(what + ": '" + key + "' must be a string, got " + v.dump());
  return v.get<std::string>();
}

inline void config_only_keys(const nlohmann::json& obj, std::initializer_list<std::string_view> allowed,
                             const std::string& what) {
  for (const auto& [k, v] : obj.items()) {
    bool ok = false;
    for (std::string_view a : allowed) ok = ok || k == a;
    if (!ok) throw FormatError(what + ": unexpected key '" + k + "'");
  }
}

inline std::vector<std::size_t> config_hidden(const nlohmann::json& obj, const std::string& what) {
  if (!obj.contains("hidden")) throw FormatError(what + ": missing 'hidden'");
  const auto& h = obj["hidden"];
  if (!h.is_array()) throw FormatError(what + ": 'hidden' must be an array of layer sizes, got " + h.dump());
  std::vector<std::size_t> hidden;
  for (std::size_t l = 0; l < h.size(); ++l) {
    const nlohmann::json wrapper = {{"size", h[l]}};
    hidden.push_back(config_uint(wrapper, "size", what + ": hidden layer " + std::to_string(l), true));
  }
  return hidden;
}

inline void check_version(const nlohmann::json& obj, const std::string& what) {
  if (!obj.contains("version")) throw FormatError(what + ": missing 'version'");
  const auto& v = obj["version"];
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() != kModelFormatVersion)
    throw FormatError(what + ": format version " + v.dump() + " is not supported (this build reads version " +
                      std::to_string(kModelFormatVersion) + ")");
}

inline nlohmann::json parse_config(const Safetensors& st, std::string_view key, const std::string& where) {
  const auto it = st.metadata().find(std::string(key));
  if (it == st.metadata().end()) throw FormatError(where + ": missing metadata '" + std::string(key) + "'");
  // {config [fields {field}]} is as deep as the config goes.
  const nlohmann::json config = parse_json_strict(it->second, where, "metadata '" + std::string(key) + "'", 3);
  if (!config.is_object()) throw FormatError(where + ": metadata '" + std::string(key) + "' is not a JSON object");
  return config;
}

struct TowerConfig {
  std::size_t user_dim = 0, item_dim = 0;
  std::vector<std::size_t> hidden;
};

inline TowerConfig parse_tower_config(const Safetensors& st, std::string_view prefix, const std::string& where) {
  const std::string key = std::string(kTowerConfigKeyPrefix) + std::string(prefix);
  const nlohmann::json c = parse_config(st, key, where);
  const std::string what = where + ": metadata '" + key + "'";
  config_only_keys(c, {"version", "user_dim", "item_dim", "hidden"}, what);
  check_version(c, what);
  TowerConfig tc;
  tc.user_dim = config_uint(c, "user_dim", what, false);
  tc.item_dim = config_uint(c, "item_dim", what, true);
  tc.hidden = config_hidden(c, what);
  return tc;
}

// Checks every tensor of a tower against its shape and copies them into `tower` (already
// constructed with that shape), then rejects stray "<prefix>.*" tensors.
inline void read_tower_tensors(const Safetensors& st, std::string_view prefix, const std::vector<std::size_t>& hidden,
                               std::size_t input_dim, Tower* tower, const std::string& where) {
  std::set<std::string> expected;
  const std::string p(prefix);
  std::optional<Tower::Edit> edit;  // the tower's tables are rebuilt once, when it ends
  if (tower) edit.emplace(tower->edit());
  for (std::size_t l = 0; l <= hidden.size(); ++l) {
    const std::string wn = tensor_name(prefix, l, "weight"), bn = tensor_name(prefix, l, "bias");
    const auto wshape = tower_weight_shape(hidden, input_dim, l);
    const std::string role = "layer " + std::to_string(l) + " of tower '" + p + "'";
    const TensorData& w = expect_f32(st, wn, wshape, where, role + ", [out, in]");
    const TensorData& b = expect_f32(st, bn, {wshape[0]}, where, role + ", [out]");
    expected.insert(wn);
    expected.insert(bn);
    if (!tower) continue;
    // The file is row-major [out, in]: exactly an in x out column-major matrix.
    Matrix transposed(static_cast<Index>(wshape[1]), static_cast<Index>(wshape[0]));
    w.copy_f32(std::span<float>(transposed.data(), static_cast<std::size_t>(transposed.size())));
    edit->weight(l) = transposed.transpose();
    VectorRef bias = edit->bias(l);
    b.copy_f32(std::span<float>(bias.data(), static_cast<std::size_t>(bias.size())));
  }
  for (const std::string& name : st.names())
    if (starts_with(name, p + ".") && !expected.count(name))
      throw FormatError(where + ": unknown tensor '" + name + "' (tower '" + p + "' has " +
                        std::to_string(hidden.size() + 1) + " layers)");
}

inline void check_tower_prefix(std::string_view prefix) {
  if (prefix.empty()) throw ConfigError("tower prefix: must not be empty");
  if (prefix == "embedding")
    throw ConfigError("tower prefix 'embedding': reserved for the model's embedding tables");
}

inline Tower read_tower_checked(const Safetensors& st, std::string_view prefix, const std::string& where) {
  check_tower_prefix(prefix);
  const TowerConfig tc = parse_tower_config(st, prefix, where);
  // Shapes first: the file's size bounds them, so constructing cannot allocate absurdly.
  read_tower_tensors(st, prefix, tc.hidden, tc.user_dim + tc.item_dim, nullptr, where);
  Tower tower;
  try {
    tower = Tower(tc.user_dim, tc.item_dim, tc.hidden);
  } catch (const ConfigError& e) {
    throw FormatError(where + ": tower '" + std::string(prefix) + "': " + e.what());
  }
  read_tower_tensors(st, prefix, tc.hidden, tower.input_dim(), &tower, where);
  return tower;
}

inline std::string model_config_json(const EmbeddingCtrModel& model) {
  nlohmann::ordered_json c = nlohmann::ordered_json::object();
  c["format"] = "age.embedding_ctr";
  c["version"] = kModelFormatVersion;
  nlohmann::ordered_json fields = nlohmann::ordered_json::array();
  for (const FieldSpec& f : model.layout().fields()) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    j["name"] = f.name;
    j["side"] = std::string(to_string(f.side));
    j["kind"] = std::string(to_string(f.kind));
    j["dim"] = f.dim;
    if (f.has_table()) j["rows"] = f.rows;
    if (f.kind == FieldKind::MultiHot) j["pooling"] = std::string(to_string(f.pooling));
    fields.push_back(std::move(j));
  }
  c["fields"] = std::move(fields);
  c["hidden"] = model.tower().hidden();
  return c.dump();
}

struct ModelConfig {
  FeatureLayout layout;
  std::vector<std::size_t> hidden;
};

inline ModelConfig parse_model_config(const Safetensors& st, const std::string& where) {
  const nlohmann::json c = parse_config(st, kModelConfigKey, where);
  const std::string what = where + ": metadata '" + std::string(kModelConfigKey) + "'";
  config_only_keys(c, {"format", "version", "fields", "hidden"}, what);
  const std::string format = config_string(c, "format", what);
  if (format != "age.embedding_ctr")
    throw FormatError(what + ": format '" + format + "', expected 'age.embedding_ctr'");
  check_version(c, what);
  if (!c.contains("fields") || !c["fields"].is_array())
    throw FormatError(what + ": 'fields' must be an array of field objects");
  ModelConfig mc;
  const auto& fields = c["fields"];
  for (std::size_t i = 0; i < fields.size(); ++i) {
    const auto& f = fields[i];
    std::string fwhat = what + ": fields[" + std::to_string(i) + "]";
    if (!f.is_object()) throw FormatError(fwhat + ": not a JSON object");
    FieldSpec spec;
    spec.name = config_string(f, "name", fwhat);
    fwhat += " ('" + spec.name + "')";
    const std::string side = config_string(f, "side", fwhat);
    if (side == "user") spec.side = Side::User;
    else if (side == "item") spec.side = Side::Item;
    else throw FormatError(fwhat + ": side '" + side + "', expected 'user' or 'item'");
    const std::string kind = config_string(f, "kind", fwhat);
    if (kind == "categorical") spec.kind = FieldKind::Categorical;
    else if (kind == "multi_hot") spec.kind = FieldKind::MultiHot;
    else if (kind == "dense") spec.kind = FieldKind::Dense;
    else throw FormatError(fwhat + ": kind '" + kind + "', expected 'categorical', 'multi_hot' or 'dense'");
    spec.dim = config_uint(f, "dim", fwhat, true);
    if (spec.has_table()) {
      spec.rows = config_uint(f, "rows", fwhat, true);
    } else if (f.contains("rows")) {
      throw FormatError(fwhat + ": a dense field has no 'rows'");
    }
    if (spec.kind == FieldKind::MultiHot) {
      const std::string pooling = config_string(f, "pooling", fwhat);
      if (pooling == "sum") spec.pooling = Pooling::Sum;
      else if (pooling == "mean") spec.pooling = Pooling::Mean;
      else throw FormatError(fwhat + ": pooling '" + pooling + "', expected 'sum' or 'mean'");
    } else if (f.contains("pooling")) {
      throw FormatError(fwhat + ": only a multi_hot field has 'pooling'");
    }
    config_only_keys(f, {"name", "side", "kind", "dim", "rows", "pooling"}, fwhat);
    try {
      mc.layout.add(std::move(spec));
    } catch (const ConfigError& e) {
      throw FormatError(what + ": " + e.what());
    }
  }
  mc.hidden = config_hidden(c, what);
  if (mc.layout.item_dim() == 0)
    throw FormatError(what + ": no item fields (item_dim 0); the model needs an item part");
  return mc;
}

}  // namespace detail

// Appends a tower's tensors "<prefix>.<l>.weight" ([out, in]) and "<prefix>.<l>.bias", and
// its shape as metadata "age.tower.<prefix>". Throws ConfigError for an empty or reserved
// prefix, FormatError when a name is taken (nothing is added then), InputError for a
// non-finite parameter.
inline void add_tower(Safetensors& st, std::string_view prefix, const Tower& tower) {
  detail::check_tower_prefix(prefix);
  const std::string key = std::string(kTowerConfigKeyPrefix) + std::string(prefix);
  if (st.metadata().count(key)) throw FormatError("tower '" + std::string(prefix) + "': added twice");
  auto tensors = detail::tower_tensors(prefix, tower);
  for (const auto& [name, t] : tensors)
    if (st.contains(name)) throw FormatError("tower '" + std::string(prefix) + "': tensor '" + name + "' exists already");
  for (auto& [name, t] : tensors) st.add(name, std::move(t));
  nlohmann::ordered_json c = nlohmann::ordered_json::object();
  c["version"] = kModelFormatVersion;
  c["user_dim"] = tower.user_dim();
  c["item_dim"] = tower.item_dim();
  c["hidden"] = tower.hidden();
  st.metadata()[key] = c.dump();
}

// The tower stored under `prefix` by add_tower(), with every tensor validated (present,
// F32, shape, finite, no stray "<prefix>.*" tensor). `source` names the file in errors.
inline Tower read_tower(const Safetensors& st, std::string_view prefix, std::string_view source = "safetensors buffer") {
  return detail::read_tower_checked(st, prefix, std::string(source));
}

// The file form of a model (see the top of this header). `metadata`: free-form pairs
// stored alongside; ConfigError for a key starting with "age.". InputError for a
// non-finite parameter (load would reject the file).
inline Safetensors model_to_safetensors(const EmbeddingCtrModel& model, const Safetensors::Metadata& metadata = {}) {
  detail::check_user_metadata(metadata);
  Safetensors st;
  st.metadata() = metadata;
  st.metadata()[std::string(kModelConfigKey)] = detail::model_config_json(model);
  const FeatureLayout& layout = model.layout();
  for (std::size_t f = 0; f < layout.size(); ++f) {
    const FieldSpec& spec = layout.field(f);
    if (!spec.has_table()) continue;
    const Matrix& table = model.tables().table(f);
    const std::string name = "embedding." + spec.name;
    detail::check_finite_for_save(table.data(), table.size(), name);
    // dim x rows column-major is [rows, dim] row-major: the bytes are already in place.
    st.add_f32(name, {spec.rows, spec.dim},
               std::span<const float>(table.data(), static_cast<std::size_t>(table.size())));
  }
  for (auto& [name, t] : detail::tower_tensors("tower", model.tower())) st.add(name, std::move(t));
  return st;
}

// Rebuilds a model from its file form. Everything is validated: the config, every
// expected tensor (present, F32, shape, finite), no tensor that is neither the model's nor
// a declared tower's ("age.tower.<prefix>", each validated too), no unknown "age.*"
// metadata. `metadata`, when given, receives the free-form (non-"age.") pairs.
inline EmbeddingCtrModel model_from_safetensors(const Safetensors& st, std::string_view source = "safetensors buffer",
                                                Safetensors::Metadata* metadata = nullptr) {
  const std::string where(source);
  detail::ModelConfig mc = detail::parse_model_config(st, where);

  std::set<std::string> known;
  for (const auto& [key, value] : st.metadata()) {
    if (!detail::starts_with(key, "age.") || key == kModelConfigKey) continue;
    if (!detail::starts_with(key, kTowerConfigKeyPrefix))
      throw FormatError(where + ": unknown reserved metadata key '" + key + "'");
    const std::string prefix = key.substr(kTowerConfigKeyPrefix.size());
    if (prefix == "tower") throw FormatError(where + ": metadata '" + key + "' clashes with the model's own tower");
    const Tower extra = detail::read_tower_checked(st, prefix, where);
    for (std::size_t l = 0; l < extra.num_layers(); ++l) {
      known.insert(detail::tensor_name(prefix, l, "weight"));
      known.insert(detail::tensor_name(prefix, l, "bias"));
    }
  }

  // Shapes first (bounded by the file's size), then allocate the model and copy.
  const FeatureLayout& layout = mc.layout;
  for (std::size_t f = 0; f < layout.size(); ++f) {
    const FieldSpec& spec = layout.field(f);
    if (!spec.has_table()) continue;
    const std::string name = "embedding." + spec.name;
    detail::expect_f32(st, name, {spec.rows, spec.dim}, where, "table of field '" + spec.name + "', [rows, dim]");
    known.insert(name);
  }
  detail::read_tower_tensors(st, "tower", mc.hidden, layout.input_dim(), nullptr, where);
  for (std::size_t l = 0; l <= mc.hidden.size(); ++l) {
    known.insert(detail::tensor_name("tower", l, "weight"));
    known.insert(detail::tensor_name("tower", l, "bias"));
  }
  for (const std::string& name : st.names())
    if (!known.count(name)) throw FormatError(where + ": unknown tensor '" + name + "' (not part of the model's config)");

  EmbeddingCtrModel model;
  try {
    model = EmbeddingCtrModel(layout, mc.hidden);
  } catch (const ConfigError& e) {
    throw FormatError(where + ": metadata '" + std::string(kModelConfigKey) + "': " + e.what());
  }
  for (std::size_t f = 0; f < layout.size(); ++f) {
    if (!layout.field(f).has_table()) continue;
    Matrix& table = model.tables().table(f);
    st.at("embedding." + layout.field(f).name)
        .copy_f32(std::span<float>(table.data(), static_cast<std::size_t>(table.size())));
  }
  detail::read_tower_tensors(st, "tower", mc.hidden, layout.input_dim(), &model.tower(), where);

  if (metadata) {
    metadata->clear();
    for (const auto& [key, value] : st.metadata())
      if (!detail::starts_with(key, "age.")) metadata->emplace(key, value);
  }
  return model;
}

// Writes the model atomically (a failed save leaves the previous file untouched).
inline void save_model(const std::filesystem::path& path, const EmbeddingCtrModel& model,
                       const Safetensors::Metadata& metadata = {}) {
  write_safetensors(path, model_to_safetensors(model, metadata));
}

// `options` bound the file (max_file_bytes, default 4 GiB, checked before reading; the
// header length) and may require finite values in every tensor.
inline EmbeddingCtrModel load_model(const std::filesystem::path& path, Safetensors::Metadata* metadata = nullptr,
                                    const SafetensorsReadOptions& options = {}) {
  return model_from_safetensors(read_safetensors(path, options), "safetensors file '" + path.string() + "'",
                                metadata);
}

// A file holding one tower (e.g. the DGU gate's, user_dim 0) under `prefix`.
inline void save_tower(const std::filesystem::path& path, const Tower& tower, std::string_view prefix = "tower",
                       const Safetensors::Metadata& metadata = {}) {
  detail::check_user_metadata(metadata);
  Safetensors st;
  st.metadata() = metadata;
  add_tower(st, prefix, tower);
  write_safetensors(path, st);
}

inline Tower load_tower(const std::filesystem::path& path, std::string_view prefix = "tower",
                        const SafetensorsReadOptions& options = {}) {
  return read_tower(read_safetensors(path, options), prefix, "safetensors file '" + path.string() + "'");
}

}  // namespace age
