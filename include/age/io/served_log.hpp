// Served logs as JSON lines: one ServedRecord (age/explore/served_record.hpp) per line, the
// schema of examples/ope/LOG_SCHEMA.md:
//
//   {"request_id":17,"seed":0,"policy":"age-ts","propensity_method":"monte_carlo","draws":256,
//    "candidates":[10,11,12],
//    "shown":[{"position":1,"candidate":2,"item":12,"propensity":0.83,"propensity_se":0.023,
//              "reward":null}],
//    "breakdown":{"base":[...],"delta":[...],"gate":[...],"explored":[...]},
//    "user":[{"ids":[3,7]},{"values":[0.5]}],
//    "candidate_features":[[{"ids":[10]}],[{"ids":[11]}],[{"ids":[12]}]]}
//
// "breakdown", "user" and "candidate_features" are optional, "propensity" is null while
// deferred, "reward" null until the click is joined. Unknown keys are ignored (a newer
// writer may add fields); known ones are checked. Errors are FormatError
// "<file>:<line>: field '<name>': expected ..., got ..." (or the record's first problem,
// served_record_problem), IoError when a file cannot be read or written.
//
// Requires nlohmann_json (link the CMake target age::io); age/age.hpp does not include it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/core/csv.hpp"
#include "age/core/error.hpp"
#include "age/explore/served_record.hpp"

namespace age {

namespace detail::served_json {

using json = nlohmann::json;

inline json number_or_null(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

inline json side_json(const SideInput& side) {
  json out = json::array();
  for (const FieldInput& f : side) {
    json field = json::object();
    if (!f.ids.empty()) field["ids"] = f.ids;
    if (!f.values.empty()) field["values"] = f.values;
    out.push_back(std::move(field));
  }
  return out;
}

// The value for a message. An array or object is summarised, not dumped: dump() recurses
// once per nesting level, and a line of 40 kB of '[' would overflow the stack.
inline std::string describe(const json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + " elements";
  if (v.is_object()) return "an object of " + std::to_string(v.size()) + " keys";
  std::string text = v.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

[[noreturn]] inline void bad(std::string_view where, std::string_view field, std::string_view expected, const json& got) {
  const std::string text = describe(got);
  throw FormatError(std::string(where) + ": field '" + std::string(field) + "': expected " + std::string(expected) +
                    ", got " + text);
}

inline const json& member(const json& obj, const char* key, std::string_view where, const std::string& path) {
  const auto it = obj.find(key);
  if (it == obj.end()) throw FormatError(std::string(where) + ": field '" + path + key + "': expected it, got none");
  return *it;
}

inline std::uint64_t as_uint(const json& v, std::string_view where, const std::string& field) {
  if (!v.is_number_unsigned()) bad(where, field, "an unsigned integer", v);
  return v.get<std::uint64_t>();
}

inline double as_number_or_nan(const json& v, std::string_view where, const std::string& field, const char* expected) {
  if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!v.is_number()) bad(where, field, expected, v);
  return v.get<double>();
}

template <class T>
std::vector<T> as_list(const json& v, std::string_view where, const std::string& field) {
  if (!v.is_array()) bad(where, field, "an array", v);
  std::vector<T> out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string name = field + "[" + std::to_string(i) + "]";
    if constexpr (std::is_same_v<T, std::uint64_t>) {
      out.push_back(as_uint(v[i], where, name));
    } else {
      if (!v[i].is_number()) bad(where, name, "a number", v[i]);
      const double x = v[i].get<double>();
      // Stored as a float: 1e39 would become infinity, which the writer cannot write back.
      if (!detail::csv::fits_float(x)) bad(where, name, "a number within float range", v[i]);
      out.push_back(static_cast<T>(x));
    }
  }
  return out;
}

inline SideInput as_side(const json& v, std::string_view where, const std::string& field) {
  if (!v.is_array()) bad(where, field, "an array of fields", v);
  SideInput side;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string name = field + "[" + std::to_string(i) + "]";
    if (!v[i].is_object()) bad(where, name, "an object with \"ids\" and/or \"values\"", v[i]);
    FieldInput f;
    if (const auto it = v[i].find("ids"); it != v[i].end()) f.ids = as_list<std::uint64_t>(*it, where, name + ".ids");
    if (const auto it = v[i].find("values"); it != v[i].end()) f.values = as_list<float>(*it, where, name + ".values");
    side.push_back(std::move(f));
  }
  return side;
}

}  // namespace detail::served_json

// The record as one line of JSON (no newline). Checks it first (InputError).
inline std::string served_record_json(const ServedRecord& r) {
  using detail::served_json::json;
  check_served_record(r);
  json j;
  j["request_id"] = r.request_id;
  j["seed"] = r.seed;
  j["policy"] = r.policy;
  j["propensity_method"] = std::string(to_string(r.method));
  j["draws"] = r.draws;
  j["candidates"] = r.candidates;
  json shown = json::array();
  for (const ShownItem& s : r.shown)
    shown.push_back({{"position", s.position},
                     {"candidate", s.candidate},
                     {"item", s.item},
                     {"propensity", detail::served_json::number_or_null(s.propensity)},
                     {"propensity_se", s.propensity_se},
                     {"reward", detail::served_json::number_or_null(s.reward)}});
  j["shown"] = std::move(shown);
  if (r.has_breakdown() || !r.base.empty())
    j["breakdown"] = {{"base", r.base}, {"delta", r.delta}, {"gate", r.gate}, {"explored", r.explored}};
  if (!r.user.empty()) j["user"] = detail::served_json::side_json(r.user);
  if (r.has_features()) {
    json c = json::array();
    for (const SideInput& s : r.candidate_features) c.push_back(detail::served_json::side_json(s));
    j["candidate_features"] = std::move(c);
  }
  return j.dump();
}

// One record from a line of JSON; `where` names it in messages ("<file>:<line>").
inline ServedRecord served_record_from_json(std::string_view line, std::string_view where = "served record") {
  namespace sj = detail::served_json;
  using sj::json;
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    // Not only parse_error: a number beyond double's range ("1e400") is out_of_range.
    throw FormatError(std::string(where) + ": expected one JSON object per line, got invalid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) sj::bad(where, "(line)", "a JSON object", j);
  ServedRecord r;
  r.request_id = sj::as_uint(sj::member(j, "request_id", where, ""), where, "request_id");
  r.seed = sj::as_uint(sj::member(j, "seed", where, ""), where, "seed");
  const json& policy = sj::member(j, "policy", where, "");
  if (!policy.is_string()) sj::bad(where, "policy", "a string", policy);
  r.policy = policy.get<std::string>();
  const json& method = sj::member(j, "propensity_method", where, "");
  if (!method.is_string()) sj::bad(where, "propensity_method", "\"exact\", \"monte_carlo\" or \"deferred\"", method);
  try {
    r.method = propensity_method_from_string(method.get<std::string>());
  } catch (const InputError&) {
    sj::bad(where, "propensity_method", "\"exact\", \"monte_carlo\" or \"deferred\"", method);
  }
  if (const auto it = j.find("draws"); it != j.end()) r.draws = sj::as_uint(*it, where, "draws");
  r.candidates = sj::as_list<std::uint64_t>(sj::member(j, "candidates", where, ""), where, "candidates");
  const json& shown = sj::member(j, "shown", where, "");
  if (!shown.is_array()) sj::bad(where, "shown", "an array of shown items", shown);
  for (std::size_t k = 0; k < shown.size(); ++k) {
    const std::string f = "shown[" + std::to_string(k) + "]";
    const json& o = shown[k];
    if (!o.is_object()) sj::bad(where, f, "an object", o);
    ShownItem s;
    const std::uint64_t position = sj::as_uint(sj::member(o, "position", where, f + "."), where, f + ".position");
    if (position > std::numeric_limits<std::uint32_t>::max())
      sj::bad(where, f + ".position", "a slot below 2^32", o["position"]);
    s.position = static_cast<std::uint32_t>(position);
    s.candidate = sj::as_uint(sj::member(o, "candidate", where, f + "."), where, f + ".candidate");
    s.item = sj::as_uint(sj::member(o, "item", where, f + "."), where, f + ".item");
    s.propensity = sj::as_number_or_nan(sj::member(o, "propensity", where, f + "."), where, f + ".propensity",
                                        "a number in (0, 1], or null when deferred");
    if (const auto it = o.find("propensity_se"); it != o.end()) {
      if (!it->is_number()) sj::bad(where, f + ".propensity_se", "a number >= 0", *it);
      s.propensity_se = it->get<double>();
    }
    if (const auto it = o.find("reward"); it != o.end())
      s.reward = sj::as_number_or_nan(*it, where, f + ".reward", "a number, or null when unknown");
    r.shown.push_back(s);
  }
  if (const auto it = j.find("breakdown"); it != j.end()) {
    if (!it->is_object()) sj::bad(where, "breakdown", "an object", *it);
    r.base = sj::as_list<float>(sj::member(*it, "base", where, "breakdown."), where, "breakdown.base");
    r.delta = sj::as_list<float>(sj::member(*it, "delta", where, "breakdown."), where, "breakdown.delta");
    r.explored = sj::as_list<float>(sj::member(*it, "explored", where, "breakdown."), where, "breakdown.explored");
    for (std::uint64_t g : sj::as_list<std::uint64_t>(sj::member(*it, "gate", where, "breakdown."), where,
                                                      "breakdown.gate")) {
      if (g > 1) sj::bad(where, "breakdown.gate", "0 or 1 per candidate", (*it)["gate"]);
      r.gate.push_back(static_cast<std::uint8_t>(g));
    }
  }
  if (const auto it = j.find("user"); it != j.end()) r.user = sj::as_side(*it, where, "user");
  if (const auto it = j.find("candidate_features"); it != j.end()) {
    if (!it->is_array()) sj::bad(where, "candidate_features", "an array (one per candidate)", *it);
    for (std::size_t i = 0; i < it->size(); ++i)
      r.candidate_features.push_back(sj::as_side((*it)[i], where, "candidate_features[" + std::to_string(i) + "]"));
  }
  const std::string problem = served_record_problem(r);
  if (!problem.empty()) throw FormatError(std::string(where) + ": " + problem);
  return r;
}

// Writes records as JSON lines to a stream.
class ServedJsonWriter {
 public:
  explicit ServedJsonWriter(std::ostream& out) : out_(&out) {}
  void write(const ServedRecord& r) {
    *out_ << served_record_json(r) << '\n';
    if (!*out_)
      throw IoError("served log (JSON lines): the output stream failed while writing request " +
                    std::to_string(r.request_id));
  }

 private:
  std::ostream* out_;
};

// Reads a JSON-lines served log (blank lines are skipped).
inline ServedLog read_served_jsonl(const std::filesystem::path& path, const ServedReadOptions& options = {}) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path.string() + "' for reading");
  ServedLog log;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    const std::string_view text = detail::csv::chomp(line);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;
    try {
      log.records.push_back(served_record_from_json(text, path.string() + ":" + std::to_string(number)));
    } catch (const FormatError& e) {
      if (!options.skip_bad_rows) throw;
      if (log.skipped++ == 0) log.first_error = e.what();
    }
  }
  return log;
}

// Reads a served log in either form, by its extension: .csv, else JSON lines.
inline ServedLog read_served_log(const std::filesystem::path& path, const ServedReadOptions& options = {}) {
  return path.extension() == ".csv" ? read_served_csv(path, options) : read_served_jsonl(path, options);
}

}  // namespace age
