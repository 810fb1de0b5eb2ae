// The logging record of a served request: what a service that explores writes for every
// request, so that the explored traffic can later train a model without bias and evaluate
// another policy offline (age/sim/ope.hpp). The schema, field by field, is
// examples/ope/LOG_SCHEMA.md; this header builds and checks records and writes and reads
// their CSV form (standard library only); age/io/served_log.hpp writes and reads them as
// JSON lines (needs nlohmann_json).
//
//   ScoredRequest out;
//   policy.score(request, out, ws);
//   compute_propensities(policy, request, out, {.positions = 3}, ws, pws, props);
//   ServedRecord rec = make_served_record("age-ts", policy.seed(), request, out, item_ids, 3, &props);
//   rec.user = user_features;  rec.candidate_features = item_features;  // optional, for offline re-scoring
//   csv_writer.write(rec);     // later, when the click arrives: rec.shown[k].reward = 1
//
// A record holds the request id and the policy's seed (with the model version, enough to
// recompute the propensities offline: PropensityMethod::deferred), the candidates' item
// ids, the shown items (position, candidate, item, propensity, its standard error, reward),
// the explorer's per-candidate breakdown (base, delta, gate, explored) and, optionally, the
// request's features. check_served_record() names the first problem: a shown item that is
// not among the candidates, a propensity that is 0 or missing (unless deferred), a position
// shown twice, a breakdown or feature list of another length than the candidates, a policy
// name that is not UTF-8, a feature value that is not finite, ...
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "age/core/csv.hpp"
#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/core/utf8.hpp"
#include "age/explore/propensity.hpp"
#include "age/explore/request.hpp"
#include "age/features/layout.hpp"

namespace age {

struct ShownItem {
  std::uint32_t position = 1;  // 1-based slot
  std::uint64_t candidate = 0;  // index into ServedRecord::candidates
  std::uint64_t item = 0;       // candidates[candidate], repeated so that a reader can check it
  double propensity = std::numeric_limits<double>::quiet_NaN();  // in (0, 1]; NaN while deferred
  double propensity_se = 0.0;                                     // its standard error (0 exact)
  double reward = std::numeric_limits<double>::quiet_NaN();      // the click once joined; NaN unknown
};

struct ServedRecord {
  std::uint64_t request_id = 0;
  std::uint64_t seed = 0;  // the policy's seed: Rng(seed, request_id) drew its randomness
  std::string policy;      // the policy's name (no commas, quotes or line breaks)
  PropensityMethod method = PropensityMethod::deferred;
  std::uint64_t draws = 0;  // Monte-Carlo draws (monte_carlo only)
  std::vector<std::uint64_t> candidates;  // the candidates' item ids, in the request's order
  std::vector<ShownItem> shown;
  // The explorer's per-candidate breakdown (ScoredRequest): empty, or one entry per candidate.
  std::vector<float> base, delta, explored;
  std::vector<std::uint8_t> gate;
  // The request's features, for offline re-scoring: empty, or the user's and one SideInput
  // per candidate.
  SideInput user;
  std::vector<SideInput> candidate_features;

  bool has_breakdown() const noexcept { return !explored.empty(); }
  bool has_features() const noexcept { return !candidate_features.empty(); }
};

namespace detail::served {

inline std::string number_text(double v) {
  if (std::isnan(v)) return "missing";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// The first problem of one shown item of `r` (fields named after `prefix`), or "".
inline std::string shown_problem(const ServedRecord& r, const ShownItem& s, const std::string& f) {
  const std::size_t n = r.candidates.size();
  if (s.position < 1) return f + "position: expected >= 1, got 0";
  // Constant time for a valid item; the search of the candidates only names the problem
  // (a record may show thousands of items out of as many candidates).
  if (s.candidate >= n || r.candidates[s.candidate] != s.item) {
    if (std::find(r.candidates.begin(), r.candidates.end(), s.item) == r.candidates.end())
      return f + "item: expected one of the request's candidates, got " + std::to_string(s.item);
    if (s.candidate >= n)
      return f + "candidate: expected an index < " + std::to_string(n) + ", got " + std::to_string(s.candidate);
    return f + "item: expected candidates[" + std::to_string(s.candidate) + "] = " +
           std::to_string(r.candidates[s.candidate]) + ", got " + std::to_string(s.item);
  }
  if (r.method == PropensityMethod::deferred) {
    if (!std::isnan(s.propensity))
      return f + "propensity: expected none (the method is deferred), got " + number_text(s.propensity);
  } else if (!(s.propensity > 0.0 && s.propensity <= 1.0)) {
    return f + "propensity: expected a value in (0, 1], got " + number_text(s.propensity);
  }
  if (!(std::isfinite(s.propensity_se) && s.propensity_se >= 0.0))
    return f + "propensity_se: expected a finite value >= 0, got " + number_text(s.propensity_se);
  if (std::isinf(s.reward)) return f + "reward: expected a finite value or none, got " + number_text(s.reward);
  return "";
}

// The smallest j whose shown[j].position is also that of an earlier shown item, or
// shown.size() when every position is distinct. O(S log S), not a pairwise scan: a CSV
// record may have one row per shown item, hundreds of thousands of them.
inline std::size_t first_repeated_position(const std::vector<ShownItem>& shown) {
  std::vector<std::pair<std::uint32_t, std::size_t>> order(shown.size());  // (position, index)
  for (std::size_t j = 0; j < shown.size(); ++j) order[j] = {shown[j].position, j};
  std::sort(order.begin(), order.end());
  std::size_t first = shown.size();
  for (std::size_t k = 1; k < order.size(); ++k)  // every repeat; the smallest index wins
    if (order[k].first == order[k - 1].first) first = std::min(first, order[k].second);
  return first;
}

// The first non-finite feature value of a side ("<name>[f].values[i]: ..."), or "".
inline std::string side_problem(const SideInput& side, const std::string& name) {
  for (std::size_t f = 0; f < side.size(); ++f)
    for (std::size_t i = 0; i < side[f].values.size(); ++i)
      if (!std::isfinite(side[f].values[i]))
        return name + "[" + std::to_string(f) + "].values[" + std::to_string(i) + "]: expected a finite value, got " +
               number_text(side[f].values[i]);
  return "";
}

}  // namespace detail::served

// The first problem of a record, as "<field>: expected <...>, got <...>", or "" when it is
// valid. See the top of this file.
inline std::string served_record_problem(const ServedRecord& r) {
  const auto num = detail::served::number_text;
  if (r.policy.empty() || r.policy.find_first_of(",\"\n\r|;") != std::string::npos)
    return "policy: expected a non-empty name without , \" | ; or line breaks, got '" + r.policy + "'";
  // The JSON form cannot hold anything else, and the CSV reader would otherwise hand out
  // records that its JSON writer refuses.
  if (detail::invalid_utf8_at(r.policy) != std::string_view::npos)
    return "policy: expected UTF-8 text, got bytes that are not";
  const std::size_t n = r.candidates.size();
  if (n == 0) return "candidates: expected at least 1 candidate, got 0";
  if (r.method == PropensityMethod::monte_carlo && r.draws == 0)
    return "draws: expected >= 1 for monte_carlo propensities, got 0";
  if (r.shown.empty()) return "shown: expected at least 1 shown item, got 0";
  const std::size_t repeat = detail::served::first_repeated_position(r.shown);
  for (std::size_t j = 0; j < r.shown.size(); ++j) {
    const std::string f = "shown[" + std::to_string(j) + "].";
    if (j == repeat)
      return f + "position: expected each position once, got " + std::to_string(r.shown[j].position) + " again";
    std::string problem = detail::served::shown_problem(r, r.shown[j], f);
    if (!problem.empty()) return problem;
  }
  const bool any_breakdown = !r.base.empty() || !r.delta.empty() || !r.explored.empty() || !r.gate.empty();
  if (any_breakdown) {
    const std::pair<const char*, std::size_t> parts[] = {
        {"base", r.base.size()}, {"delta", r.delta.size()}, {"gate", r.gate.size()}, {"explored", r.explored.size()}};
    for (const auto& [name, size] : parts)
      if (size != n)
        return std::string("breakdown.") + name + ": expected " + std::to_string(n) +
               " values (one per candidate), got " + std::to_string(size);
    for (std::size_t i = 0; i < n; ++i) {
      if (r.gate[i] > 1)
        return "breakdown.gate[" + std::to_string(i) + "]: expected 0 or 1, got " + std::to_string(r.gate[i]);
      if (!std::isfinite(r.base[i]) || !std::isfinite(r.delta[i]) || !std::isfinite(r.explored[i]))
        return "breakdown[" + std::to_string(i) + "]: expected finite base, delta and explored, got " +
               num(r.base[i]) + ", " + num(r.delta[i]) + ", " + num(r.explored[i]);
    }
  }
  if (!r.candidate_features.empty() && r.candidate_features.size() != n)
    return "candidate_features: expected " + std::to_string(n) + " (one per candidate), got " +
           std::to_string(r.candidate_features.size());
  // Feature values must be finite: neither form can write an infinity or a NaN that its
  // reader takes back (JSON has no such numbers, the CSV reader refuses "inf").
  std::string problem = detail::served::side_problem(r.user, "user");
  for (std::size_t c = 0; c < r.candidate_features.size() && problem.empty(); ++c)
    problem = detail::served::side_problem(r.candidate_features[c], "candidate_features[" + std::to_string(c) + "]");
  return problem;
}

// InputError "served record <id>: <problem>" for an invalid record.
inline void check_served_record(const ServedRecord& r) {
  const std::string problem = served_record_problem(r);
  if (!problem.empty()) throw InputError("served record " + std::to_string(r.request_id) + ": " + problem);
}

// The record of a served request: its top `shown` candidates of `served.ranking` (clipped to
// N) at positions 1..shown, with the propensities of `propensities` (floored,
// Propensities::logged) or, when it is null, marked deferred. `item_ids` are the
// candidates' ids (N). Throws DimensionError when `served`, `item_ids` or the propensities
// do not match the request's N candidates (or cover fewer positions than shown),
// ConfigError for shown = 0, InputError for an invalid record (e.g. a policy name with a
// comma).
inline ServedRecord make_served_record(std::string policy, std::uint64_t seed, const Request& request,
                                       const ScoredRequest& served, std::span<const std::uint64_t> item_ids,
                                       std::size_t shown, const Propensities* propensities) {
  const auto n = static_cast<std::size_t>(request.size());
  detail::require_dim("served record: scores (candidates of the request)", n, static_cast<std::size_t>(served.size()));
  detail::require_dim("served record: ranking (candidates of the request)", n, served.ranking.size());
  detail::require_dim("served record: item ids (candidates of the request)", n, item_ids.size());
  if (shown == 0) throw ConfigError("served record: shown: expected >= 1 position, got 0");
  shown = std::min(shown, n);
  ServedRecord r;
  r.request_id = request.id;
  r.seed = seed;
  r.policy = std::move(policy);
  r.candidates.assign(item_ids.begin(), item_ids.end());
  if (propensities) {
    detail::require_dim("served record: propensities (candidates of the request)", n,
                        static_cast<std::size_t>(propensities->candidates()));
    if (static_cast<std::size_t>(propensities->positions()) < shown)
      detail::require_dim("served record: propensities (positions shown)", shown,
                          static_cast<std::size_t>(propensities->positions()));
    r.method = propensities->method;
    r.draws = propensities->draws;
  }
  for (std::size_t k = 0; k < shown; ++k) {
    ShownItem s;
    s.position = static_cast<std::uint32_t>(k + 1);
    const Index c = served.ranking[k];
    s.candidate = static_cast<std::uint64_t>(c);
    s.item = item_ids[static_cast<std::size_t>(c)];
    if (propensities) {
      s.propensity = propensities->logged(c, static_cast<Index>(k));
      s.propensity_se = propensities->std_error(c, static_cast<Index>(k));
    }
    r.shown.push_back(s);
  }
  r.base.assign(served.base.data(), served.base.data() + n);
  r.delta.assign(served.delta.data(), served.delta.data() + n);
  r.explored.assign(served.explored.data(), served.explored.data() + n);
  r.gate.assign(served.gate.begin(), served.gate.end());
  check_served_record(r);
  return r;
}

// Fills the propensities of a record (typically a deferred one, computed offline from its
// request id and seed: see age/explore/propensity.hpp) from `p`, the propensities of the
// rebuilt request. DimensionError when `p` has another number of candidates or fewer
// positions than a shown item's; InputError when the result is invalid.
inline void fill_propensities(ServedRecord& r, const Propensities& p) {
  detail::require_dim("served record " + std::to_string(r.request_id) + ": propensities (candidates)",
                      r.candidates.size(), static_cast<std::size_t>(p.candidates()));
  for (ShownItem& s : r.shown) {
    if (s.position < 1 || s.position > static_cast<std::size_t>(p.positions()))
      throw DimensionError("served record " + std::to_string(r.request_id) + ": propensities (positions): expected >= " +
                           std::to_string(s.position) + ", got " + std::to_string(p.positions()));
    s.propensity = p.logged(static_cast<Index>(s.candidate), static_cast<Index>(s.position - 1));
    s.propensity_se = p.std_error(static_cast<Index>(s.candidate), static_cast<Index>(s.position - 1));
  }
  r.method = p.method;
  r.draws = p.draws;
  check_served_record(r);
}

// --- CSV form -------------------------------------------------------------------------
// One row per shown item; the request's columns repeat on each of its rows. Lists are
// space-separated; features are encoded as described in examples/ope/LOG_SCHEMA.md (a field
// is "ids[=values]" followed by ';', a candidate's fields are followed by '|'). An empty
// propensity is a deferred one, an empty reward an unknown one.

inline constexpr std::string_view kServedCsvHeader =
    "request_id,seed,policy,propensity_method,draws,position,candidate,item,propensity,propensity_se,reward,"
    "candidates,base,delta,gate,explored,user_features,candidate_features";

namespace detail::served {

inline void put_double(std::string& out, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  out += buf;
}
inline void put_float(std::string& out, float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  out += buf;
}
template <class T, class Put>
void put_list(std::string& out, const std::vector<T>& v, Put put) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += ' ';
    put(out, v[i]);
  }
}
inline void put_side(std::string& out, const SideInput& side) {
  for (const FieldInput& f : side) {
    put_list(out, f.ids, [](std::string& o, std::uint64_t id) { o += std::to_string(id); });
    if (!f.values.empty()) {
      out += '=';
      put_list(out, f.values, put_float);
    }
    out += ';';
  }
}

// The request-level columns of a record (everything but the shown item's).
inline std::string request_columns(const ServedRecord& r) {
  std::string c;
  auto u64 = [](std::string& o, std::uint64_t v) { o += std::to_string(v); };
  put_list(c, r.candidates, u64);
  c += ',';
  put_list(c, r.base, put_float);
  c += ',';
  put_list(c, r.delta, put_float);
  c += ',';
  put_list(c, r.gate, [](std::string& o, std::uint8_t g) { o += g ? '1' : '0'; });
  c += ',';
  put_list(c, r.explored, put_float);
  c += ',';
  put_side(c, r.user);
  c += ',';
  for (const SideInput& s : r.candidate_features) {
    put_side(c, s);
    c += '|';
  }
  return c;
}

// Splits `text` at `sep`; with `terminated`, every piece ends with sep (none after the last).
inline std::vector<std::string_view> pieces(std::string_view text, char sep, bool terminated, const csv::Location& at,
                                            std::string_view column) {
  std::vector<std::string_view> out;
  if (text.empty()) return out;
  if (terminated && text.back() != sep)
    csv::fail(at, column, std::string("every element terminated by '") + sep + "'", text);
  if (terminated) text.remove_suffix(1);
  std::size_t start = 0;
  for (;;) {
    const std::size_t p = text.find(sep, start);
    out.push_back(text.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
  return out;
}

inline std::vector<std::string_view> words(std::string_view text) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && text[i] == ' ') ++i;
    const std::size_t start = i;
    while (i < text.size() && text[i] != ' ') ++i;
    if (i > start) out.push_back(text.substr(start, i - start));
  }
  return out;
}

inline std::vector<std::uint64_t> parse_ids(std::string_view text, const csv::Location& at, std::string_view column) {
  std::vector<std::uint64_t> out;
  for (std::string_view w : words(text)) out.push_back(csv::parse_uint(w, at, column));
  return out;
}

inline std::vector<float> parse_floats(std::string_view text, const csv::Location& at, std::string_view column) {
  std::vector<float> out;
  for (std::string_view w : words(text)) out.push_back(csv::parse_float(w, at, column));
  return out;
}

inline SideInput parse_side(std::string_view text, const csv::Location& at, std::string_view column) {
  SideInput side;
  for (std::string_view field : pieces(text, ';', true, at, column)) {
    FieldInput f;
    const std::size_t eq = field.find('=');
    f.ids = parse_ids(field.substr(0, eq), at, column);
    if (eq != std::string_view::npos) f.values = parse_floats(field.substr(eq + 1), at, column);
    side.push_back(std::move(f));
  }
  return side;
}

}  // namespace detail::served

// Writes records as CSV rows to a stream: the header first, then one row per shown item.
class ServedCsvWriter {
 public:
  explicit ServedCsvWriter(std::ostream& out) : out_(&out) { *out_ << kServedCsvHeader << '\n'; }

  // Checks the record (InputError) and writes its rows; IoError when the stream fails.
  void write(const ServedRecord& r) {
    check_served_record(r);
    const std::string request = detail::served::request_columns(r);
    std::string row;
    for (const ShownItem& s : r.shown) {
      row.clear();
      row += std::to_string(r.request_id) + ',' + std::to_string(r.seed) + ',' + r.policy + ',' +
             std::string(to_string(r.method)) + ',' + std::to_string(r.draws) + ',' + std::to_string(s.position) +
             ',' + std::to_string(s.candidate) + ',' + std::to_string(s.item) + ',';
      if (!std::isnan(s.propensity)) detail::served::put_double(row, s.propensity);
      row += ',';
      detail::served::put_double(row, s.propensity_se);
      row += ',';
      if (!std::isnan(s.reward)) detail::served::put_double(row, s.reward);
      row += ',';
      row += request;
      *out_ << row << '\n';
    }
    if (!*out_) throw IoError("served log (CSV): the output stream failed while writing request " +
                              std::to_string(r.request_id));
  }

 private:
  std::ostream* out_;
};

// What a log reader read: the records, and the rows it skipped (ServedReadOptions).
struct ServedLog {
  std::vector<ServedRecord> records;
  std::size_t skipped = 0;   // bad rows (CSV) or lines (JSON) skipped
  std::string first_error;   // the first one's message
};

struct ServedReadOptions {
  bool skip_bad_rows = false;  // skip and count a bad row or record instead of throwing
};

// Reads a CSV served log: consecutive rows with the same request columns form one record.
// FormatError "<file>:<line>: column '<name>': expected ..., got '...'" for a bad row, and
// "<file>:<line>: <problem>" (served_record_problem, line of the record's first row) for an
// invalid record; IoError when the file cannot be read.
inline ServedLog read_served_csv(const std::filesystem::path& path, const ServedReadOptions& options = {}) {
  namespace csv = detail::csv;
  namespace sv = detail::served;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path.string() + "' for reading");
  const std::string file = path.string();
  ServedLog log;
  std::string line;
  std::size_t number = 0;
  csv::Location at{file, 0};
  if (!std::getline(in, line)) throw FormatError(file + ": expected the header line, got an empty file");
  ++number;
  if (csv::chomp(line) != kServedCsvHeader)
    throw FormatError(file + ":1: header: expected '" + std::string(kServedCsvHeader) + "', got '" +
                      std::string(csv::chomp(line)) + "'");
  std::vector<std::string_view> fields;
  ServedRecord current;
  std::string current_key;
  std::size_t current_line = 0;
  bool open = false;
  auto finish = [&] {
    if (!open) return;
    open = false;
    const std::string problem = served_record_problem(current);
    if (problem.empty()) {
      log.records.push_back(std::move(current));
      return;
    }
    const std::string message = csv::where({file, current_line}) + ": " + problem;
    if (!options.skip_bad_rows) throw FormatError(message);
    if (log.skipped++ == 0) log.first_error = message;
  };
  while (std::getline(in, line)) {
    at.line = ++number;
    const std::string_view text = csv::chomp(line);
    if (text.empty()) continue;
    try {
      csv::split(text, at, fields);
      if (fields.size() != 18)
        throw FormatError(csv::where(at) + ": row: expected 18 comma-separated fields, got " +
                          std::to_string(fields.size()));
      // The request's columns (request_id .. draws and candidates .. candidate_features).
      std::string key;
      static constexpr std::size_t kRequestColumns[] = {0, 1, 2, 3, 4, 11, 12, 13, 14, 15, 16, 17};
      for (std::size_t c : kRequestColumns) {
        key += fields[c];
        key += ',';
      }
      ShownItem s;
      // Refused, not clamped: a clamped slot would be a different record (the JSON reader
      // refuses it too).
      const std::uint64_t position = csv::parse_uint(fields[5], at, "position");
      if (position > std::numeric_limits<std::uint32_t>::max()) csv::fail(at, "position", "a slot below 2^32", fields[5]);
      s.position = static_cast<std::uint32_t>(position);
      s.candidate = csv::parse_uint(fields[6], at, "candidate");
      s.item = csv::parse_uint(fields[7], at, "item");
      s.propensity = fields[8].empty() ? std::numeric_limits<double>::quiet_NaN()
                                       : csv::parse_double(fields[8], at, "propensity");
      s.propensity_se = csv::parse_double(fields[9], at, "propensity_se");
      if (!fields[10].empty()) s.reward = csv::parse_double(fields[10], at, "reward");
      const bool new_record = !open || key != current_key;
      ServedRecord fresh;
      if (new_record) {
        fresh.request_id = csv::parse_uint(fields[0], at, "request_id");
        fresh.seed = csv::parse_uint(fields[1], at, "seed");
        fresh.policy = std::string(fields[2]);
        try {
          fresh.method = propensity_method_from_string(fields[3]);
        } catch (const InputError&) {
          csv::fail(at, "propensity_method", "exact, monte_carlo or deferred", fields[3]);
        }
        fresh.draws = csv::parse_uint(fields[4], at, "draws");
        fresh.candidates = sv::parse_ids(fields[11], at, "candidates");
        fresh.base = sv::parse_floats(fields[12], at, "base");
        fresh.delta = sv::parse_floats(fields[13], at, "delta");
        for (std::uint64_t g : sv::parse_ids(fields[14], at, "gate")) {
          if (g > 1) csv::fail(at, "gate", "0 or 1 per candidate", fields[14]);
          fresh.gate.push_back(static_cast<std::uint8_t>(g));
        }
        fresh.explored = sv::parse_floats(fields[15], at, "explored");
        fresh.user = sv::parse_side(fields[16], at, "user_features");
        for (std::string_view c : sv::pieces(fields[17], '|', true, at, "candidate_features"))
          fresh.candidate_features.push_back(sv::parse_side(c, at, "candidate_features"));
      }
      // The shown item's own checks, on its own line (columns named as in the header).
      const std::string problem = sv::shown_problem(new_record ? fresh : current, s, "");
      if (!problem.empty()) throw FormatError(csv::where(at) + ": " + problem);
      if (new_record) {
        finish();
        current = std::move(fresh);
        current_key = std::move(key);
        current_line = number;
        open = true;
      }
      current.shown.push_back(s);
    } catch (const FormatError& e) {
      if (!options.skip_bad_rows) throw;
      if (log.skipped++ == 0) log.first_error = e.what();
    }
  }
  finish();
  return log;
}

}  // namespace age
