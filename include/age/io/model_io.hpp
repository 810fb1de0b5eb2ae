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
//      "hidden":[..],"activation":"relu"}
//   (a config without "activation" is ReLU, the only activation the tower has; any other
//   value is refused: the file's network is not one this build can evaluate)
//   __metadata__["age.probes.tower"]  load-time probes of the tower (age/io/probes.hpp):
//     a few (input, logit, input gradient) triples that load_model recomputes with this
//     build's passes (SafetensorsReadOptions::verify_probes, on by default).
//
// Extra towers (e.g. the DGU gate's) can share the file: add_tower() writes
// "<prefix>.<l>.weight/bias" plus "age.tower.<prefix>" = {"version":1,"user_dim":..,
// "item_dim":..,"hidden":[..],"activation":"relu"} and "age.probes.<prefix>", and
// read_tower() reads one back. The DGU's prefix is "dgu": save_model_with_dgu(path, model, dgu)
// writes both, load_dgu(path) reads the DGU.
//
// Metadata keys starting with "age." are reserved; any other string -> string pairs are
// free-form and pass through save_model/load_model unchanged (e.g. training step, data
// date). Names and metadata are UTF-8 (the header is JSON).
//
// Every parameter in a file is finite and of magnitude at most
// SafetensorsReadOptions::max_abs_parameter (default kDefaultMaxAbsParameter = 1e6): load
// refuses other files (FormatError), save refuses to write them (InputError). load_model
// reads the header first and then each tensor straight into the model's memory, so its
// peak memory is the model's own size and the header.
//
// Requires nlohmann_json (link the CMake target age::io); age/age.hpp does not include it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
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
#include "age/io/probes.hpp"
#include "age/io/safetensors.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"

namespace age {

inline constexpr std::uint64_t kModelFormatVersion = 1;
inline constexpr std::string_view kModelConfigKey = "age.config";
inline constexpr std::string_view kTowerConfigKeyPrefix = "age.tower.";
// The prefix of the DGU's tower in a model file (save_model with a DGU, load_dgu).
inline constexpr std::string_view kDguPrefix = "dgu";
// The one activation of the tower's hidden layers (M1), recorded in every config so that a
// file written for another network is refused rather than evaluated wrongly. A config
// without the key was written before it existed, when ReLU was the only choice.
inline constexpr std::string_view kActivationRelu = "relu";

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

// What a loader checks beyond the format: the bound on parameters and the probes.
struct LoadChecks {
  double max_abs = kDefaultMaxAbsParameter;
  bool verify_probes = true;
  double probe_tolerance = kDefaultProbeTolerance;
  static LoadChecks from(const SafetensorsReadOptions& o) {
    return {o.max_abs_parameter, o.verify_probes, o.probe_tolerance};
  }
};

// A FormatError, as a reserved tensor name is (Safetensors::add): the file format cannot
// hold such a key as user metadata.
inline void check_user_metadata(const Safetensors::Metadata& metadata) {
  for (const auto& [key, value] : metadata) {
    require_utf8(key, "metadata key");
    if (starts_with(key, "age."))
      throw FormatError("metadata key '" + printable(key) +
                        "': expected a key not starting with 'age.' (reserved for the model format), got one");
    require_utf8(value, "value of metadata key '" + printable(key) + "'");
  }
}

inline std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Index of the first element that is not finite or exceeds max_abs in magnitude, or n.
inline std::size_t first_bad_parameter(const Scalar* data, std::size_t n, double max_abs) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(data[i]);
    if (!(std::abs(v) <= max_abs)) return i;  // NaN fails the comparison too
  }
  return n;
}

// Refuses to write a file that load would reject with its default options.
inline void check_finite_for_save(const Scalar* data, Index size, const std::string& tensor) {
  const auto n = static_cast<std::size_t>(size);
  const std::size_t i = first_bad_parameter(data, n, kDefaultMaxAbsParameter);
  if (i == n) return;
  const std::string at = "cannot save tensor '" + tensor + "': element " + std::to_string(i);
  if (!std::isfinite(data[i])) throw InputError(at + " is not finite (" + std::to_string(data[i]) + ")");
  throw InputError(at + " = " + number(data[i]) + ": expected a magnitude <= " + number(kDefaultMaxAbsParameter) +
                   " (load_model's max_abs_parameter)");
}

// Checks the parameters just read into memory: finite and within max_abs.
inline void check_loaded(const Scalar* data, std::size_t n, const std::string& tensor, const std::string& where,
                         double max_abs) {
  const std::size_t i = first_bad_parameter(data, n, max_abs);
  if (i == n) return;
  const std::string at = where + ": tensor '" + tensor + "': element " + std::to_string(i);
  if (!std::isfinite(data[i])) throw FormatError(at + " is not finite (" + std::to_string(data[i]) + ")");
  throw FormatError(at + " = " + number(data[i]) + ": expected a magnitude <= " + number(max_abs) +
                    " (max_abs_parameter)");
}

// A model file's tensors, read from a parsed file in memory (or, for load_model, from a
// SafetensorsFile, which has the same four members): metadata, names in buffer order,
// find(name) -> an entry with dtype and shape (or null), copy_f32(name, out).
struct MemoryTensors {
  const Safetensors& st;
  const Safetensors::Metadata& metadata() const noexcept { return st.metadata(); }
  const std::vector<std::string>& names() const noexcept { return st.names(); }
  const TensorData* find(std::string_view name) const { return st.find(name); }
  void copy_f32(std::string_view name, std::span<float> out) const { st.at(name).copy_f32(out); }
};

// ConfigError for an empty model or tower (default-constructed or moved-from).
inline void require_usable_for_save(bool empty, const char* what) {
  if (empty)
    throw ConfigError(std::string("cannot save ") + what + ": expected one with a shape (constructed or loaded), " +
                      "got an empty one (default-constructed or moved-from)");
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

// Checks that tensor `name` is present, F32 and of exactly `shape` (its values are
// checked once read, check_loaded).
template <class Source>
void expect_f32(const Source& src, const std::string& name, const std::vector<std::uint64_t>& shape,
                const std::string& where, const std::string& role) {
  const auto* t = src.find(name);
  if (!t) throw FormatError(where + ": missing tensor '" + name + "' (" + role + ", shape " + shape_string(shape) + ")");
  if (t->dtype != TensorDtype::F32)
    throw FormatError(where + ": tensor '" + name + "': dtype " + std::string(to_string(t->dtype)) + ", expected F32");
  if (t->shape != shape)
    throw FormatError(where + ": tensor '" + name + "': shape " + shape_string(t->shape) + ", expected " +
                      shape_string(shape) + " (" + role + ")");
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

// The config's "activation" (absent: relu, see kActivationRelu), refused unless the tower
// implements it.
inline void check_activation(const nlohmann::json& obj, const std::string& what) {
  if (!obj.contains("activation")) return;
  const auto& v = obj["activation"];
  if (!v.is_string()) throw FormatError(what + ": 'activation' must be a string, got " + v.dump());
  if (v.get<std::string>() != kActivationRelu)
    throw FormatError(what + ": activation '" + printable(v.get<std::string>()) + "' is not one this build's tower " +
                      "evaluates (it has '" + std::string(kActivationRelu) + "' only); the file cannot be loaded " +
                      "without changing its scores");
}

template <class Source>
nlohmann::json parse_config(const Source& st, std::string_view key, const std::string& where) {
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

template <class Source>
TowerConfig parse_tower_config(const Source& st, std::string_view prefix, const std::string& where) {
  const std::string key = std::string(kTowerConfigKeyPrefix) + std::string(prefix);
  const nlohmann::json c = parse_config(st, key, where);
  const std::string what = where + ": metadata '" + key + "'";
  config_only_keys(c, {"version", "user_dim", "item_dim", "hidden", "activation"}, what);
  check_version(c, what);
  check_activation(c, what);
  TowerConfig tc;
  tc.user_dim = config_uint(c, "user_dim", what, false);
  tc.item_dim = config_uint(c, "item_dim", what, true);
  tc.hidden = config_hidden(c, what);
  return tc;
}

// Checks every tensor of a tower against its shape (tower null), or copies them into
// `tower` (already constructed with that shape) and checks their values; then rejects
// stray "<prefix>.*" tensors.
template <class Source>
void read_tower_tensors(const Source& st, std::string_view prefix, const std::vector<std::size_t>& hidden,
                        std::size_t input_dim, Tower* tower, const std::string& where, double max_abs) {
  std::set<std::string> expected;
  const std::string p(prefix);
  std::optional<Tower::Edit> edit;  // the tower's tables are rebuilt once, when it ends
  if (tower) edit.emplace(tower->edit());
  for (std::size_t l = 0; l <= hidden.size(); ++l) {
    const std::string wn = tensor_name(prefix, l, "weight"), bn = tensor_name(prefix, l, "bias");
    const auto wshape = tower_weight_shape(hidden, input_dim, l);
    const std::string role = "layer " + std::to_string(l) + " of tower '" + p + "'";
    expect_f32(st, wn, wshape, where, role + ", [out, in]");
    expect_f32(st, bn, {wshape[0]}, where, role + ", [out]");
    expected.insert(wn);
    expected.insert(bn);
    if (!tower) continue;
    // The file is row-major [out, in]: exactly an in x out column-major matrix, whose
    // element k is the file's element k.
    Matrix transposed(static_cast<Index>(wshape[1]), static_cast<Index>(wshape[0]));
    const std::span<float> w(transposed.data(), static_cast<std::size_t>(transposed.size()));
    st.copy_f32(wn, w);
    check_loaded(w.data(), w.size(), wn, where, max_abs);
    edit->weight(l) = transposed.transpose();
    VectorRef bias = edit->bias(l);
    const std::span<float> b(bias.data(), static_cast<std::size_t>(bias.size()));
    st.copy_f32(bn, b);
    check_loaded(b.data(), b.size(), bn, where, max_abs);
  }
  for (const std::string& name : st.names())
    if (starts_with(name, p + ".") && !expected.count(name))
      throw FormatError(where + ": unknown tensor '" + name + "' (tower '" + p + "' has " +
                        std::to_string(hidden.size() + 1) + " layers)");
}

inline void check_tower_prefix(std::string_view prefix) {
  if (prefix.empty()) throw ConfigError("tower prefix: must not be empty");
  if (invalid_utf8_at(prefix) != std::string_view::npos)
    throw ConfigError("tower prefix '" + printable(prefix) + "': expected valid UTF-8 (it names tensors), got " +
                      "an invalid byte at offset " + std::to_string(invalid_utf8_at(prefix)));
  if (prefix == "embedding")
    throw ConfigError("tower prefix 'embedding': reserved for the model's embedding tables");
}

// Stores the probes of `tower` as "age.probes.<prefix>" (none when it cannot be probed).
inline void add_probes(Safetensors& st, std::string_view prefix, const Tower& tower) {
  std::string probes = make_probes_json(tower);
  if (!probes.empty()) st.metadata()[std::string(kProbesKeyPrefix) + std::string(prefix)] = std::move(probes);
}

// Verifies the probes of the tower stored under `prefix`, if the file has any.
template <class Source>
void check_probes(const Source& st, std::string_view prefix, const Tower& tower, const std::string& where,
                  const LoadChecks& checks) {
  if (!checks.verify_probes) return;
  const auto it = st.metadata().find(std::string(kProbesKeyPrefix) + std::string(prefix));
  if (it != st.metadata().end()) verify_probes(tower, it->second, prefix, where, checks.probe_tolerance);
}

template <class Source>
Tower read_tower_checked(const Source& st, std::string_view prefix, const std::string& where,
                         const LoadChecks& checks) {
  const double max_abs = checks.max_abs;
  check_tower_prefix(prefix);
  const TowerConfig tc = parse_tower_config(st, prefix, where);
  // Shapes first: the file's size bounds them, so constructing cannot allocate absurdly.
  read_tower_tensors(st, prefix, tc.hidden, tc.user_dim + tc.item_dim, nullptr, where, max_abs);
  Tower tower;
  try {
    tower = Tower(tc.user_dim, tc.item_dim, tc.hidden);
  } catch (const ConfigError& e) {
    throw FormatError(where + ": tower '" + std::string(prefix) + "': " + e.what());
  }
  read_tower_tensors(st, prefix, tc.hidden, tower.input_dim(), &tower, where, max_abs);
  check_probes(st, prefix, tower, where, checks);
  return tower;
}

inline std::string model_config_json(const EmbeddingCtrModel& model) {
  nlohmann::ordered_json c = nlohmann::ordered_json::object();
  c["format"] = "age.embedding_ctr";
  c["version"] = kModelFormatVersion;
  nlohmann::ordered_json fields = nlohmann::ordered_json::array();
  for (const FieldSpec& f : model.layout().fields()) {
    require_utf8(f.name, "field name");  // it becomes a JSON string and a tensor name
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
  c["activation"] = kActivationRelu;
  return c.dump();
}

struct ModelConfig {
  FeatureLayout layout;
  std::vector<std::size_t> hidden;
};

template <class Source>
ModelConfig parse_model_config(const Source& st, const std::string& where) {
  const nlohmann::json c = parse_config(st, kModelConfigKey, where);
  const std::string what = where + ": metadata '" + std::string(kModelConfigKey) + "'";
  config_only_keys(c, {"format", "version", "fields", "hidden", "activation"}, what);
  const std::string format = config_string(c, "format", what);
  if (format != "age.embedding_ctr")
    throw FormatError(what + ": format '" + format + "', expected 'age.embedding_ctr'");
  check_version(c, what);
  check_activation(c, what);
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
// prefix, or an empty tower (default-constructed or moved-from), FormatError when a name
// is taken (nothing is added then), InputError for a parameter load would refuse.
inline void add_tower(Safetensors& st, std::string_view prefix, const Tower& tower) {
  detail::check_tower_prefix(prefix);
  detail::require_usable_for_save(tower.empty(), "tower");
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
  c["activation"] = kActivationRelu;
  st.metadata()[key] = c.dump();
  detail::add_probes(st, prefix, tower);
}

// The tower stored under `prefix` by add_tower(), with every tensor validated (present,
// F32, shape, finite and within max_abs_parameter, no stray "<prefix>.*" tensor) and its
// probes verified. `source` names the file in errors.
inline Tower read_tower(const Safetensors& st, std::string_view prefix, std::string_view source,
                        const SafetensorsReadOptions& options) {
  return detail::read_tower_checked(detail::MemoryTensors{st}, prefix, std::string(source),
                                    detail::LoadChecks::from(options));
}
inline Tower read_tower(const Safetensors& st, std::string_view prefix, std::string_view source = "safetensors buffer",
                        double max_abs_parameter = kDefaultMaxAbsParameter) {
  SafetensorsReadOptions options;
  options.max_abs_parameter = max_abs_parameter;
  return read_tower(st, prefix, source, options);
}

// The file form of a model (see the top of this header). `metadata`: free-form pairs
// stored alongside; FormatError for a key starting with "age." or a string that is not
// UTF-8. InputError for a parameter that load would refuse (not finite, or of magnitude
// above kDefaultMaxAbsParameter), ConfigError for an empty model.
inline Safetensors model_to_safetensors(const EmbeddingCtrModel& model, const Safetensors::Metadata& metadata = {}) {
  detail::require_usable_for_save(model.empty(), "model");
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
  detail::add_probes(st, "tower", model.tower());
  return st;
}

// The file form of a model and its DGU tower (stored under kDguPrefix, "dgu").
inline Safetensors model_with_dgu_to_safetensors(const EmbeddingCtrModel& model, const Tower& dgu,
                                                  const Safetensors::Metadata& metadata = {}) {
  Safetensors st = model_to_safetensors(model, metadata);
  if (!dgu.empty() && dgu.item_dim() != model.item_dim())
    throw ConfigError("dgu: item_dim " + std::to_string(dgu.item_dim()) + ", expected the model's item_dim " +
                      std::to_string(model.item_dim()));
  add_tower(st, kDguPrefix, dgu);
  return st;
}

namespace detail {

// model_from_safetensors over either source of tensors (MemoryTensors, SafetensorsFile).
template <class Source>
EmbeddingCtrModel model_from(const Source& st, const std::string& where, Safetensors::Metadata* metadata,
                             const LoadChecks& checks) {
  const double max_abs = checks.max_abs;
  ModelConfig mc = parse_model_config(st, where);

  std::set<std::string> known;
  for (const auto& [key, value] : st.metadata()) {
    if (!starts_with(key, "age.") || key == kModelConfigKey) continue;
    if (starts_with(key, kProbesKeyPrefix)) {
      // Probes of the model's tower or of a declared extra tower, verified with it.
      const std::string prefix = key.substr(kProbesKeyPrefix.size());
      if (prefix != "tower" && !st.metadata().count(std::string(kTowerConfigKeyPrefix) + prefix))
        throw FormatError(where + ": metadata '" + key + "' probes a tower the file does not have");
      continue;
    }
    if (!starts_with(key, kTowerConfigKeyPrefix))
      throw FormatError(where + ": unknown reserved metadata key '" + key + "'");
    const std::string prefix = key.substr(kTowerConfigKeyPrefix.size());
    if (prefix == "tower") throw FormatError(where + ": metadata '" + key + "' clashes with the model's own tower");
    const Tower extra = read_tower_checked(st, prefix, where, checks);
    for (std::size_t l = 0; l < extra.num_layers(); ++l) {
      known.insert(tensor_name(prefix, l, "weight"));
      known.insert(tensor_name(prefix, l, "bias"));
    }
  }

  // Shapes first (bounded by the file's size), then allocate the model and copy.
  const FeatureLayout& layout = mc.layout;
  for (std::size_t f = 0; f < layout.size(); ++f) {
    const FieldSpec& spec = layout.field(f);
    if (!spec.has_table()) continue;
    const std::string name = "embedding." + spec.name;
    expect_f32(st, name, {spec.rows, spec.dim}, where, "table of field '" + spec.name + "', [rows, dim]");
    known.insert(name);
  }
  read_tower_tensors(st, "tower", mc.hidden, layout.input_dim(), nullptr, where, max_abs);
  for (std::size_t l = 0; l <= mc.hidden.size(); ++l) {
    known.insert(tensor_name("tower", l, "weight"));
    known.insert(tensor_name("tower", l, "bias"));
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
    const std::string name = "embedding." + layout.field(f).name;
    Matrix& table = model.tables().table(f);
    // [rows, dim] row-major is the dim x rows column-major table: read in place.
    const std::span<float> values(table.data(), static_cast<std::size_t>(table.size()));
    st.copy_f32(name, values);
    check_loaded(values.data(), values.size(), name, where, max_abs);
  }
  read_tower_tensors(st, "tower", mc.hidden, layout.input_dim(), &model.tower(), where, max_abs);
  check_probes(st, "tower", model.tower(), where, checks);

  if (metadata) {
    metadata->clear();
    for (const auto& [key, value] : st.metadata())
      if (!starts_with(key, "age.")) metadata->emplace(key, value);
  }
  return model;
}

}  // namespace detail

// Rebuilds a model from its file form. Everything is validated: the config, every
// expected tensor (present, F32, shape, finite, within max_abs_parameter), no tensor that
// is neither the model's nor a declared tower's ("age.tower.<prefix>", each validated too),
// no unknown "age.*" metadata, and the probes of every tower verified ("age.probes.*",
// age/io/probes.hpp; options.verify_probes). `metadata`, when given, receives the
// free-form (non-"age.") pairs.
inline EmbeddingCtrModel model_from_safetensors(const Safetensors& st, std::string_view source,
                                                Safetensors::Metadata* metadata, const SafetensorsReadOptions& options) {
  return detail::model_from(detail::MemoryTensors{st}, std::string(source), metadata,
                            detail::LoadChecks::from(options));
}
inline EmbeddingCtrModel model_from_safetensors(const Safetensors& st, std::string_view source = "safetensors buffer",
                                                Safetensors::Metadata* metadata = nullptr,
                                                double max_abs_parameter = kDefaultMaxAbsParameter) {
  SafetensorsReadOptions options;
  options.max_abs_parameter = max_abs_parameter;
  return model_from_safetensors(st, source, metadata, options);
}

// Writes the model atomically (a failed save leaves the previous file untouched), with the
// probes of its tower. Every error names the file.
inline void save_model(const std::filesystem::path& path, const EmbeddingCtrModel& model,
                       const Safetensors::Metadata& metadata = {}) {
  std::vector<std::uint8_t> bytes;
  try {
    bytes = serialize_safetensors(model_to_safetensors(model, metadata));
  } catch (const Error&) {
    detail::rethrow_with_prefix("cannot save '" + path.string() + "': ");
  }
  write_file_atomic(path, bytes);
}

// The model and its DGU tower in one file (the DGU under "dgu"; read it with load_dgu).
inline void save_model_with_dgu(const std::filesystem::path& path, const EmbeddingCtrModel& model, const Tower& dgu,
                                const Safetensors::Metadata& metadata = {}) {
  std::vector<std::uint8_t> bytes;
  try {
    bytes = serialize_safetensors(model_with_dgu_to_safetensors(model, dgu, metadata));
  } catch (const Error&) {
    detail::rethrow_with_prefix("cannot save '" + path.string() + "': ");
  }
  write_file_atomic(path, bytes);
}

// The model in the file at `path`, validated as model_from_safetensors does. The file
// must be a regular file (IoError otherwise, never a wait on a FIFO); `options` bound it
// (max_file_bytes, default 4 GiB, and the header length, both checked before anything is
// read or allocated for them; max_abs_parameter). The header is read first and each tensor
// straight into the model's memory: peak memory is the model's own size, not the file's
// twice.
inline EmbeddingCtrModel load_model(const std::filesystem::path& path, Safetensors::Metadata* metadata = nullptr,
                                    const SafetensorsReadOptions& options = {}) {
  const SafetensorsFile file(path, options);
  return detail::model_from(file, file.where(), metadata, detail::LoadChecks::from(options));
}

// A file holding one tower (e.g. the DGU gate's, user_dim 0) under `prefix`.
inline void save_tower(const std::filesystem::path& path, const Tower& tower, std::string_view prefix = "tower",
                       const Safetensors::Metadata& metadata = {}) {
  std::vector<std::uint8_t> bytes;
  try {
    detail::check_user_metadata(metadata);
    Safetensors st;
    st.metadata() = metadata;
    add_tower(st, prefix, tower);
    bytes = serialize_safetensors(st);
  } catch (const Error&) {
    detail::rethrow_with_prefix("cannot save '" + path.string() + "': ");
  }
  write_file_atomic(path, bytes);
}

// The tower stored under `prefix` in the file at `path` (a tower file, or a model file with
// extra towers), validated and probe-verified as load_model does.
inline Tower load_tower(const std::filesystem::path& path, std::string_view prefix = "tower",
                        const SafetensorsReadOptions& options = {}) {
  const SafetensorsFile file(path, options);
  return detail::read_tower_checked(file, prefix, file.where(), detail::LoadChecks::from(options));
}

// The DGU tower stored with a model (save_model_with_dgu(path, model, dgu), or the PyTorch
// exporter's export_model(..., dgu=...)), or alone by save_dgu.
inline Tower load_dgu(const std::filesystem::path& path, const SafetensorsReadOptions& options = {}) {
  return load_tower(path, kDguPrefix, options);
}

// A file holding the DGU tower alone, under "dgu".
inline void save_dgu(const std::filesystem::path& path, const Tower& dgu, const Safetensors::Metadata& metadata = {}) {
  save_tower(path, dgu, kDguPrefix, metadata);
}

}  // namespace age
