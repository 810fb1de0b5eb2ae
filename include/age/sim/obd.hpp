// The Open Bandit Dataset (Saito et al., NeurIPS 2021 Datasets and Benchmarks; ZOZOTOWN
// fashion recommendations): a reader for its CSV files, so that off-policy estimators
// (age/sim/ope.hpp) run on real logged traffic with the logging policy's propensities.
// Standard library only (no zlib).
//
// A campaign's log (e.g. men/random/men.csv) has one row per impression:
//   <row index>,timestamp,item_id,position,click,propensity_score,
//   user_feature_0..U-1 (hashed categorical strings),
//   user-item_affinity_0..I-1 (one number per item: the user's affinity to that item)
// and its item_context.csv one row per item:
//   <row index>,item_id,item_feature_0..F-1 (numbers or hashed categorical strings)
// Columns are found by their header names, so their order may change. Every item of the
// campaign is a candidate of every impression; `position` (1-based) is the slot the item
// was shown in, and propensity_score the logging policy's probability of showing that item
// in that slot.
//
//   ObdLog log = read_obd("men/random/men.csv", "men/random/item_context.csv");
//   log.records[i].item, .position, .click, .propensity, .user_features, .affinity
//
// Hashed strings become 64-bit ids (FNV-1a, obd_feature_id), what EmbeddingTables hash into
// rows. Errors are FormatError (or IoError) naming the file, the line, the column, the
// expected and the actual text: a missing column, a row with the wrong number of fields, an
// item id that is not one of the campaign's items (not among the candidates), a position
// < 1, a click other than 0/1, a propensity that is missing, 0, or above 1, a number that
// is not one (an affinity, stored as a float, must also be within float range). With
// ObdReadOptions::skip_bad_rows a bad row is skipped and counted instead (ObdLog::skipped,
// first_error); a bad header or item file always throws.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "age/core/csv.hpp"
#include "age/core/error.hpp"

namespace age::sim {

// The 64-bit id of a hashed categorical value of the dataset.
inline std::uint64_t obd_feature_id(std::string_view value) noexcept { return age::detail::csv::string_id(value); }

struct ObdItem {
  std::uint32_t id = 0;
  std::vector<double> dense;                // the numeric item features, in ObdLog::item_dense_names order
  std::vector<std::uint64_t> categorical;   // the hashed ones (obd_feature_id), item_categorical_names order
};

struct ObdRecord {
  std::uint64_t index = 0;  // the file's row index (first column); also the request id
  std::string timestamp;
  std::uint32_t item = 0;      // item_id, in [0, items)
  std::uint32_t position = 1;  // 1-based slot
  bool click = false;
  double propensity = 1.0;     // the logging policy's P(item at position), in (0, 1]
  std::vector<std::uint64_t> user_features;  // obd_feature_id of user_feature_0..U-1
  std::vector<float> affinity;               // user-item_affinity_0..I-1, one per item
  std::size_t line = 0;                      // line in the file (the header is line 1)
};

struct ObdLog {
  std::string file;
  std::vector<ObdRecord> records;
  std::vector<ObdItem> items;  // items[i].id == i
  std::vector<std::string> user_feature_names, item_dense_names, item_categorical_names;
  std::uint32_t positions = 0;  // the largest position seen
  std::size_t skipped = 0;      // bad rows skipped (ObdReadOptions::skip_bad_rows)
  std::string first_error;      // the first skipped row's error

  std::size_t clicks() const noexcept {
    std::size_t c = 0;
    for (const ObdRecord& r : records) c += r.click ? 1 : 0;
    return c;
  }
  double click_rate() const noexcept {
    return records.empty() ? 0.0 : static_cast<double>(clicks()) / static_cast<double>(records.size());
  }
};

struct ObdReadOptions {
  bool skip_bad_rows = false;  // skip and count a bad row instead of throwing
  std::size_t max_rows = 0;    // stop after this many good rows; 0: all
};

namespace detail::obd {

namespace csv = age::detail::csv;

inline std::ifstream open(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path.string() + "' for reading");
  return in;
}

inline bool starts_with(std::string_view s, std::string_view p) noexcept { return s.substr(0, p.size()) == p; }

// Column k of "<prefix>k" names, k = 0, 1, ...: their positions in the header, in k order.
// One pass over the header (a header may have tens of thousands of columns): every column
// that starts with the prefix must be "<prefix>k" with k written in decimal without
// leading zeros, each k at most once and with no gap (e.g. _0 and _2 but no _1), which
// would silently drop columns.
inline std::vector<std::size_t> numbered_columns(const std::vector<std::string_view>& header, std::string_view prefix,
                                                 const csv::Location& at) {
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  // slot[k] = the column named "<prefix>k"; k < header.size() in a gapless numbering.
  std::vector<std::size_t> slot(header.size(), kNone);
  auto number_of = [&](std::string_view name) -> std::size_t {  // k, or kNone when not canonical or too big
    const std::string_view digits = name.substr(prefix.size());
    if (digits.empty() || digits.size() > 9 || (digits.size() > 1 && digits[0] == '0')) return kNone;
    std::size_t k = 0;
    for (char d : digits) {
      if (d < '0' || d > '9') return kNone;
      k = k * 10 + static_cast<std::size_t>(d - '0');
    }
    return k < header.size() ? k : kNone;
  };
  std::size_t first_stray = kNone;  // the first column with the prefix that is not "<prefix>k"
  for (std::size_t c = 0; c < header.size(); ++c) {
    if (!starts_with(header[c], prefix)) continue;
    const std::size_t k = number_of(header[c]);
    if (k == kNone) {
      if (first_stray == kNone) first_stray = c;
    } else if (slot[k] != kNone) {
      throw FormatError(csv::where(at) + ": header: column '" + std::string(header[c]) + "' appears twice (columns " +
                        std::to_string(slot[k] + 1) + " and " + std::to_string(c + 1) + ")");
    } else {
      slot[k] = c;
    }
  }
  std::size_t count = 0;
  while (count < slot.size() && slot[count] != kNone) ++count;
  // The first column, in header order, left out of 0..count-1.
  std::size_t unlisted = first_stray;
  for (std::size_t k = count; k < slot.size(); ++k)
    if (slot[k] != kNone && (unlisted == kNone || slot[k] < unlisted)) unlisted = slot[k];
  if (unlisted != kNone)
    throw FormatError(csv::where(at) + ": header: expected columns " + std::string(prefix) + "0.." +
                      std::string(prefix) + std::to_string(count) + " numbered without gaps, got '" +
                      std::string(header[unlisted]) + "'");
  slot.resize(count);
  return slot;
}

inline std::size_t required_column(const std::vector<std::string_view>& header, std::string_view name,
                                   const csv::Location& at) {
  for (std::size_t c = 0; c < header.size(); ++c)
    if (header[c] == name) return c;
  throw FormatError(csv::where(at) + ": header: expected a column '" + std::string(name) + "', got none");
}

inline bool next_line(std::istream& in, std::string& line, std::size_t& number) {
  while (std::getline(in, line)) {
    ++number;
    if (!csv::chomp(line).empty()) return true;  // blank lines (e.g. at the end) carry nothing
  }
  return false;
}

inline void require_field_count(const std::vector<std::string_view>& fields, std::size_t expected,
                                const csv::Location& at) {
  if (fields.size() != expected)
    throw FormatError(csv::where(at) + ": row: expected " + std::to_string(expected) + " comma-separated fields, got " +
                      std::to_string(fields.size()));
}

inline std::vector<ObdItem> read_items(const std::filesystem::path& path, ObdLog& log) {
  std::ifstream in = open(path);
  const std::string file = path.string();
  std::string line;
  std::size_t number = 0;
  std::vector<std::string_view> header, fields;
  if (!next_line(in, line, number)) throw FormatError(file + ": expected a header line, got an empty file");
  const std::string header_line(csv::chomp(line));
  csv::Location at{file, number};
  csv::split(header_line, at, header);
  const std::size_t id_col = required_column(header, "item_id", at);
  const std::vector<std::size_t> feature_cols = numbered_columns(header, "item_feature_", at);

  std::vector<std::vector<std::string>> rows;
  std::vector<std::size_t> lines;
  while (next_line(in, line, number)) {
    at.line = number;
    csv::split(csv::chomp(line), at, fields);
    require_field_count(fields, header.size(), at);
    rows.emplace_back(fields.begin(), fields.end());
    lines.push_back(number);
  }
  if (rows.empty()) throw FormatError(file + ": expected at least 1 item row, got 0");
  // A feature column is dense when every item's value is a number, categorical otherwise.
  std::vector<bool> dense(feature_cols.size(), true);
  for (std::size_t f = 0; f < feature_cols.size(); ++f)
    for (const auto& r : rows) dense[f] = dense[f] && csv::is_number(r[feature_cols[f]]);
  for (std::size_t f = 0; f < feature_cols.size(); ++f)
    (dense[f] ? log.item_dense_names : log.item_categorical_names).emplace_back(header[feature_cols[f]]);

  std::vector<ObdItem> items(rows.size());
  std::vector<bool> seen(rows.size(), false);
  for (std::size_t k = 0; k < rows.size(); ++k) {
    at.line = lines[k];
    const std::uint64_t id = csv::parse_uint(rows[k][id_col], at, "item_id");
    if (id >= rows.size())
      csv::fail(at, "item_id", "an id in [0, " + std::to_string(rows.size()) + ") (one row per item)", rows[k][id_col]);
    if (seen[id]) csv::fail(at, "item_id", "each item once", rows[k][id_col]);
    seen[id] = true;
    ObdItem& item = items[id];
    item.id = static_cast<std::uint32_t>(id);
    for (std::size_t f = 0; f < feature_cols.size(); ++f) {
      const std::string& v = rows[k][feature_cols[f]];
      if (dense[f])
        item.dense.push_back(csv::parse_double(v, at, header[feature_cols[f]]));
      else
        item.categorical.push_back(obd_feature_id(v));
    }
  }
  return items;
}

}  // namespace detail::obd

// Reads a campaign's log and its item context. See the top of this file for the checks.
inline ObdLog read_obd(const std::filesystem::path& log_csv, const std::filesystem::path& item_context_csv,
                       const ObdReadOptions& options = {}) {
  namespace csv = age::detail::csv;
  ObdLog log;
  log.file = log_csv.string();
  log.items = detail::obd::read_items(item_context_csv, log);
  const std::size_t n_items = log.items.size();

  std::ifstream in = detail::obd::open(log_csv);
  std::string line;
  std::size_t number = 0;
  std::vector<std::string_view> header, fields;
  if (!detail::obd::next_line(in, line, number))
    throw FormatError(log.file + ": expected a header line, got an empty file");
  const std::string header_line(csv::chomp(line));
  csv::Location at{log.file, number};
  csv::split(header_line, at, header);
  const std::size_t index_col = 0;  // the unnamed row index
  const std::size_t time_col = detail::obd::required_column(header, "timestamp", at);
  const std::size_t item_col = detail::obd::required_column(header, "item_id", at);
  const std::size_t pos_col = detail::obd::required_column(header, "position", at);
  const std::size_t click_col = detail::obd::required_column(header, "click", at);
  const std::size_t prop_col = detail::obd::required_column(header, "propensity_score", at);
  const std::vector<std::size_t> user_cols = detail::obd::numbered_columns(header, "user_feature_", at);
  const std::vector<std::size_t> aff_cols = detail::obd::numbered_columns(header, "user-item_affinity_", at);
  if (!aff_cols.empty() && aff_cols.size() != n_items)
    throw FormatError(csv::where(at) + ": header: expected " + std::to_string(n_items) +
                      " user-item_affinity_ columns (one per item of " + item_context_csv.string() + "), got " +
                      std::to_string(aff_cols.size()));
  for (std::size_t c : user_cols) log.user_feature_names.emplace_back(header[c]);

  while (detail::obd::next_line(in, line, number)) {
    at.line = number;
    try {
      csv::split(csv::chomp(line), at, fields);
      detail::obd::require_field_count(fields, header.size(), at);
      ObdRecord r;
      r.line = number;
      r.index = csv::parse_uint(fields[index_col], at, "(row index)");
      r.timestamp = std::string(fields[time_col]);
      const std::uint64_t item = csv::parse_uint(fields[item_col], at, "item_id");
      if (item >= n_items)
        csv::fail(at, "item_id", "one of the " + std::to_string(n_items) + " candidate items [0, " +
                                     std::to_string(n_items) + ")",
                  fields[item_col]);
      r.item = static_cast<std::uint32_t>(item);
      const std::uint64_t position = csv::parse_uint(fields[pos_col], at, "position");
      if (position < 1 || position > 1000) csv::fail(at, "position", "a slot in [1, 1000]", fields[pos_col]);
      r.position = static_cast<std::uint32_t>(position);
      if (fields[click_col] != "0" && fields[click_col] != "1") csv::fail(at, "click", "0 or 1", fields[click_col]);
      r.click = fields[click_col] == "1";
      if (fields[prop_col].empty()) csv::fail(at, "propensity_score", "a value in (0, 1]", "");
      r.propensity = csv::parse_double(fields[prop_col], at, "propensity_score");
      if (!(r.propensity > 0.0 && r.propensity <= 1.0))
        csv::fail(at, "propensity_score", "a value in (0, 1]", fields[prop_col]);
      r.user_features.reserve(user_cols.size());
      for (std::size_t c : user_cols) {
        if (fields[c].empty()) csv::fail(at, header[c], "a hashed categorical value", "");
        r.user_features.push_back(obd_feature_id(fields[c]));
      }
      r.affinity.reserve(aff_cols.size());
      for (std::size_t c : aff_cols) r.affinity.push_back(csv::parse_float(fields[c], at, header[c]));
      log.positions = std::max(log.positions, r.position);
      log.records.push_back(std::move(r));
    } catch (const FormatError& e) {
      if (!options.skip_bad_rows) throw;
      if (log.skipped++ == 0) log.first_error = e.what();
    }
    if (options.max_rows > 0 && log.records.size() >= options.max_rows) break;
  }
  return log;
}

}  // namespace age::sim
