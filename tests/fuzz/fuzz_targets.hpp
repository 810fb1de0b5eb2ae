// What each fuzz target does with one untrusted input, shared by the libFuzzer entry
// points (tests/fuzz/fuzz_*.cpp) and the [fuzz-regression] unit test, so that a saved
// crashing input replays exactly the code the fuzzer ran.
//
// Contract checked on every input: it is either accepted or rejected with an age::Error.
// Anything else is a bug: a crash or sanitizer report, an exception of another type, or a
// PropertyViolation (an accepted input that breaks a round trip or a consistency rule).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "age/core/error.hpp"
#include "age/explore/served_record.hpp"
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "age/io/served_log.hpp"
#include "age/model/embedding_model.hpp"
#include "age/sim/obd.hpp"

#if __has_include("age/sim/r6b.hpp")
#include "age/sim/r6b.hpp"
#define AGE_FUZZ_HAVE_R6B 1
#endif

// R6bReader needs zlib at link time: the fuzz build defines AGE_FUZZ_WITH_ZLIB, a test
// build that links zlib may define AGE_HAVE_ZLIB instead.
#if defined(AGE_HAVE_ZLIB) && !defined(AGE_FUZZ_WITH_ZLIB)
#define AGE_FUZZ_WITH_ZLIB 1
#endif

#include <sys/mman.h>
#include <unistd.h>

namespace age_fuzz {

// An accepted input that breaks a rule. Deliberately not an age::Error: the fuzzer must
// report it as a failure, not as a rejected input.
class PropertyViolation : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

inline void require(bool ok, const std::string& what) {
  if (!ok) throw PropertyViolation(what);
}

// How far an input got: rejected, accepted by the first stage, or accepted all the way.
enum class Outcome { Rejected, Parsed, Loaded };

namespace detail {

inline bool same_tensor(const age::TensorData& a, const age::TensorData& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

inline bool same_contents(const age::Safetensors& a, const age::Safetensors& b) {
  if (a.names() != b.names() || a.metadata() != b.metadata()) return false;
  for (const std::string& name : a.names())
    if (!same_tensor(a.at(name), b.at(name))) return false;
  return true;
}

inline bool same_bits(const age::Matrix& a, const age::Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 ||
          std::memcmp(a.data(), b.data(), sizeof(age::Scalar) * static_cast<std::size_t>(a.size())) == 0);
}

inline bool same_model(const age::EmbeddingCtrModel& a, const age::EmbeddingCtrModel& b) {
  if (!(a.layout() == b.layout()) || a.tower().hidden() != b.tower().hidden()) return false;
  for (std::size_t f = 0; f < a.layout().size(); ++f)
    if (a.layout().field(f).has_table() && !same_bits(a.tables().table(f), b.tables().table(f))) return false;
  for (std::size_t l = 0; l < a.tower().num_layers(); ++l)
    if (!same_bits(a.tower().weight(l), b.tower().weight(l)) || !same_bits(a.tower().bias(l), b.tower().bias(l)))
      return false;
  return true;
}

// Scores a two-candidate request built from the model's own layout, through the raw
// feature path and the embedding-level gradient: whatever a loaded file holds, scoring it
// must not crash or read out of bounds.
inline void score_once(const age::EmbeddingCtrModel& model) {
  const age::FeatureLayout& layout = model.layout();
  age::SideInput user, item;
  for (std::size_t f = 0; f < layout.size(); ++f) {
    const age::FieldSpec& s = layout.field(f);
    age::FieldInput in;
    switch (s.kind) {
      case age::FieldKind::Categorical: in.ids = {f * 7919 + 1}; break;
      case age::FieldKind::MultiHot: in.ids = {1, 2, 3}; break;
      case age::FieldKind::Dense: in.values.assign(s.dim, 0.5f); break;
    }
    (s.side == age::Side::User ? user : item).push_back(std::move(in));
  }
  const std::vector<age::SideInput> items{item, item};
  age::ModelWorkspace ws;
  age::RowVector prob(2);
  model.predict(user, items, ws, prob);
  age::Matrix d_items;
  model.probability_gradient(ws.user, ws.items, nullptr, ws.tower, prob, &d_items);
  require(d_items.rows() == static_cast<age::Index>(model.item_dim()) && d_items.cols() == 2,
          "probability_gradient: d_items has the wrong shape");
}

// The input as a file (an in-memory one, memfd): what the readers of a path read.
class MemFile {
 public:
  explicit MemFile(std::span<const std::uint8_t> data) {
    fd_ = ::memfd_create("age_fuzz", MFD_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error("memfd_create failed");
    for (std::size_t off = 0; off < data.size();) {
      const ::ssize_t n = ::write(fd_, data.data() + off, data.size() - off);
      if (n <= 0) {
        ::close(fd_);
        throw std::runtime_error("write to memfd failed");
      }
      off += static_cast<std::size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  ~MemFile() { ::close(fd_); }
  const std::string& path() const noexcept { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

template <class F>
auto must_accept(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const age::Error& e) {
    throw PropertyViolation(std::string(what) + ": rejected with: " + e.what());
  }
}

}  // namespace detail

// A weight file: parse it; if it parses, our own writer's bytes for it must parse back to
// the same contents and be a fixed point; the strict (finite-only) parse must agree with
// the tensors' values; if it also loads as a model, the model must survive save/load
// bit-exactly and score a request. The same bytes read as a file (read_safetensors,
// load_model: the header first, then tensor by tensor) must give exactly what the
// in-memory path gives, accepted or not.
inline Outcome safetensors_file(std::span<const std::uint8_t> data) {
  const detail::MemFile file(data);
  std::optional<age::Safetensors> from_file;
  try {
    from_file = age::read_safetensors(file.path());
  } catch (const age::Error&) {
  }
  age::Safetensors st;
  try {
    st = age::parse_safetensors(data, "fuzz input");
  } catch (const age::Error&) {
    require(!from_file, "read_safetensors accepted a file that parse_safetensors rejects");
    return Outcome::Rejected;
  }
  require(from_file && detail::same_contents(st, *from_file),
          "read_safetensors and parse_safetensors disagree on a file parse_safetensors accepts");

  const std::vector<std::uint8_t> bytes = age::serialize_safetensors(st);
  const age::Safetensors again =
      detail::must_accept("re-serialized file", [&] { return age::parse_safetensors(bytes, "re-serialized"); });
  require(detail::same_contents(st, again), "re-serialized file: contents differ from the input's");
  require(age::serialize_safetensors(again) == bytes, "serialize(parse(serialize(x))) != serialize(x)");

  bool all_finite = true;
  for (const std::string& name : st.names()) {
    const age::TensorData& t = st.at(name);
    all_finite = all_finite && t.first_non_finite() == t.numel();
  }
  age::SafetensorsReadOptions strict;
  strict.require_finite = true;
  bool strict_ok = true;
  try {
    (void)age::parse_safetensors(data, "fuzz input", strict);
  } catch (const age::FormatError&) {
    strict_ok = false;
  }
  require(strict_ok == all_finite, "require_finite parse disagrees with the tensors' values");

  age::Safetensors::Metadata user_metadata, file_metadata;
  std::optional<age::EmbeddingCtrModel> model_from_file;
  try {
    model_from_file = age::load_model(file.path(), &file_metadata);
  } catch (const age::Error&) {
  }
  age::EmbeddingCtrModel model;
  try {
    model = age::model_from_safetensors(st, "fuzz input", &user_metadata);
  } catch (const age::Error&) {
    require(!model_from_file, "load_model accepted a file that model_from_safetensors rejects");
    return Outcome::Parsed;
  }
  require(model_from_file && detail::same_model(model, *model_from_file) && file_metadata == user_metadata,
          "load_model and model_from_safetensors disagree on a model model_from_safetensors accepts");
  const std::vector<std::uint8_t> saved = detail::must_accept(
      "saving a loaded model", [&] { return age::serialize_safetensors(age::model_to_safetensors(model, user_metadata)); });
  const age::EmbeddingCtrModel back = detail::must_accept(
      "reloading a saved model", [&] { return age::model_from_safetensors(age::parse_safetensors(saved)); });
  require(detail::same_model(model, back), "model save/load round trip is not bit-exact");
  detail::must_accept("scoring a loaded model", [&] {
    detail::score_once(model);
    return 0;
  });
  return Outcome::Loaded;
}

// The same checks on a file whose 8-byte length field the harness writes: the input is
// the JSON header, a NUL byte (which valid JSON text cannot hold), then the data buffer.
// Mutations that grow or shrink the header then still reach the header's checks instead
// of stopping at the length field.
inline Outcome safetensors_parts(std::span<const std::uint8_t> data) {
  const void* nul = data.empty() ? nullptr : std::memchr(data.data(), 0, data.size());
  const std::size_t header = nul ? static_cast<std::size_t>(static_cast<const std::uint8_t*>(nul) - data.data())
                                 : data.size();
  std::vector<std::uint8_t> file(8);
  for (std::size_t i = 0; i < 8; ++i) file[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(header) >> (8 * i));
  file.insert(file.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(header));
  if (nul) file.insert(file.end(), data.begin() + static_cast<std::ptrdiff_t>(header) + 1, data.end());
  return safetensors_file(file);
}

// The "age.config" metadata of a model file (the JSON text a file's header carries). If
// the config parses, a file holding it plus exactly the tensors it describes must load.
inline Outcome model_config(std::span<const std::uint8_t> data) {
  const std::string text(reinterpret_cast<const char*>(data.data()), data.size());
  age::Safetensors st;
  st.metadata()[std::string(age::kModelConfigKey)] = text;
  age::detail::ModelConfig config;
  try {
    config = age::detail::parse_model_config(st, "fuzz config");
  } catch (const age::Error&) {
    return Outcome::Rejected;
  }
  // The harness's own bound (the library bounds a file's tensors by the file's size):
  // building a model for an absurd but valid config would only exhaust memory.
  double parameters = 0;
  for (const age::FieldSpec& s : config.layout.fields())
    if (s.has_table()) parameters += static_cast<double>(s.rows) * static_cast<double>(s.dim);
  double in = static_cast<double>(config.layout.input_dim());
  for (std::size_t h : config.hidden) {
    parameters += (in + 1) * static_cast<double>(h);
    in = static_cast<double>(h);
  }
  parameters += in + 1;
  if (parameters > 4e6) return Outcome::Parsed;

  age::EmbeddingCtrModel model;
  try {
    model = age::EmbeddingCtrModel(config.layout, config.hidden);
  } catch (const age::Error&) {
    return Outcome::Parsed;  // model_from_safetensors reports this as a FormatError
  }
  age::Safetensors file = model_to_safetensors(model);
  file.metadata()[std::string(age::kModelConfigKey)] = text;  // the fuzzed text, not ours
  const age::EmbeddingCtrModel back =
      detail::must_accept("a valid config with its tensors", [&] { return age::model_from_safetensors(file, "fuzz"); });
  require(back.layout() == model.layout() && back.tower().hidden() == model.tower().hidden(),
          "loaded layout differs from the parsed config");
  return Outcome::Loaded;
}

// --- CSV and JSON-lines logs ---------------------------------------------------------

namespace detail {

// The lines std::getline yields for `text` (a last line without '\n' counts) that are not
// blank by the reader's rule: `blank(line)` after dropping a trailing '\r'.
template <class Blank>
std::size_t count_lines(std::string_view text, Blank blank) {
  std::size_t n = 0, begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    if (!blank(age::detail::csv::chomp(text.substr(begin, end - begin)))) ++n;
    begin = end + 1;
  }
  return n;
}

inline bool same_obd_record(const age::sim::ObdRecord& a, const age::sim::ObdRecord& b) {
  return a.index == b.index && a.timestamp == b.timestamp && a.item == b.item && a.position == b.position &&
         a.click == b.click && a.propensity == b.propensity && a.user_features == b.user_features &&
         a.affinity == b.affinity && a.line == b.line;
}

inline bool same_obd_log(const age::sim::ObdLog& a, const age::sim::ObdLog& b) {
  if (a.records.size() != b.records.size() || a.items.size() != b.items.size()) return false;
  for (std::size_t i = 0; i < a.records.size(); ++i)
    if (!same_obd_record(a.records[i], b.records[i])) return false;
  for (std::size_t i = 0; i < a.items.size(); ++i)
    if (a.items[i].id != b.items[i].id || a.items[i].dense != b.items[i].dense ||
        a.items[i].categorical != b.items[i].categorical)
      return false;
  return a.user_feature_names == b.user_feature_names && a.item_dense_names == b.item_dense_names &&
         a.item_categorical_names == b.item_categorical_names && a.positions == b.positions;
}

// What read_obd promises of a log it returns (the checks listed at the top of obd.hpp).
inline void check_obd_log(const age::sim::ObdLog& log) {
  require(!log.items.empty(), "OBD: a log without items");
  for (std::size_t i = 0; i < log.items.size(); ++i) {
    const age::sim::ObdItem& item = log.items[i];
    require(item.id == i, "OBD: items[" + std::to_string(i) + "].id is " + std::to_string(item.id));
    require(item.dense.size() == log.item_dense_names.size() &&
                item.categorical.size() == log.item_categorical_names.size(),
            "OBD: an item's feature counts differ from the item file's columns");
    for (double v : item.dense) require(std::isfinite(v), "OBD: a non-finite dense item feature");
  }
  std::uint32_t positions = 0;
  std::size_t line = 1;
  for (const age::sim::ObdRecord& r : log.records) {
    const std::string at = "OBD record of line " + std::to_string(r.line) + ": ";
    require(r.line > line, at + "lines out of order");
    line = r.line;
    require(r.item < log.items.size(), at + "item out of range");
    require(r.position >= 1 && r.position <= 1000, at + "position out of [1, 1000]");
    require(r.propensity > 0.0 && r.propensity <= 1.0, at + "propensity out of (0, 1]");
    require(r.user_features.size() == log.user_feature_names.size(), at + "user feature count");
    require(r.affinity.size() == log.records.front().affinity.size() &&
                (r.affinity.empty() || r.affinity.size() == log.items.size()),
            at + "affinity count");
    for (float a : r.affinity) require(std::isfinite(a), at + "a non-finite affinity");
    positions = std::max(positions, r.position);
  }
  require(log.positions == positions, "OBD: positions is not the largest position read");
}

}  // namespace detail

// The item file the obd_csv target uses when its input has no NUL byte: three items, one
// dense and one hashed feature.
inline constexpr std::string_view kFuzzObdItems =
    ",item_id,item_feature_0,item_feature_1\n0,0,0.5,a\n1,1,-1,b\n2,2,1e3,c\n";

// An Open Bandit Dataset campaign (age/sim/obd.hpp, and the CSV pieces of age/core/csv.hpp
// under it): the input is the item_context.csv text, a NUL byte, then the log's CSV text
// (without a NUL byte, the input is the log and the items are kFuzzObdItems). Read strictly
// and with skip_bad_rows: a log read either way must keep the reader's promises (ids,
// ranges, counts, finite numbers); the strict read succeeds exactly when the skipping one
// skips nothing, and then both give the same log; the skipping read accounts for every
// non-blank row; max_rows keeps a prefix.
inline Outcome obd_csv(std::span<const std::uint8_t> data) {
  const void* nul = data.empty() ? nullptr : std::memchr(data.data(), 0, data.size());
  const std::size_t split =
      nul ? static_cast<std::size_t>(static_cast<const std::uint8_t*>(nul) - data.data()) : data.size();
  const std::span<const std::uint8_t> log_bytes = nul ? data.subspan(split + 1) : data;
  const std::span<const std::uint8_t> item_bytes =
      nul ? data.first(split)
          : std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(kFuzzObdItems.data()),
                                          kFuzzObdItems.size());
  const detail::MemFile items(item_bytes), log(log_bytes);

  std::optional<age::sim::ObdLog> strict;
  try {
    strict = age::sim::read_obd(log.path(), items.path());
  } catch (const age::Error&) {
  }
  age::sim::ObdLog skipping;
  try {
    skipping = age::sim::read_obd(log.path(), items.path(), {.skip_bad_rows = true});
  } catch (const age::Error&) {
    require(!strict, "read_obd accepted a log strictly that it rejects with skip_bad_rows");
    return Outcome::Rejected;
  }
  detail::check_obd_log(skipping);
  require(strict.has_value() == (skipping.skipped == 0),
          "the strict read and skip_bad_rows disagree on whether the log has a bad row");
  if (strict) {
    detail::check_obd_log(*strict);
    require(detail::same_obd_log(*strict, skipping), "the strict read and skip_bad_rows read different logs");
  }
  // Every non-blank line after the header is a record or a skipped row.
  const std::string_view text(reinterpret_cast<const char*>(log_bytes.data()), log_bytes.size());
  const std::size_t rows = detail::count_lines(text, [](std::string_view l) { return l.empty(); });
  require(rows >= 1 && skipping.records.size() + skipping.skipped == rows - 1,
          "records + skipped rows != the log's non-blank rows after the header");
  if (!skipping.records.empty()) {
    const age::sim::ObdLog first = detail::must_accept("max_rows = 1", [&] {
      return age::sim::read_obd(log.path(), items.path(), {.skip_bad_rows = true, .max_rows = 1});
    });
    require(first.records.size() == 1 && detail::same_obd_record(first.records[0], skipping.records[0]),
            "max_rows = 1 did not keep the first record");
  }
  return skipping.records.empty() ? Outcome::Parsed : Outcome::Loaded;
}

namespace detail {

inline bool same_number(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

inline bool same_side(const age::SideInput& a, const age::SideInput& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t f = 0; f < a.size(); ++f)
    if (a[f].ids != b[f].ids || a[f].values != b[f].values) return false;
  return true;
}

inline bool same_served(const age::ServedRecord& a, const age::ServedRecord& b) {
  if (a.request_id != b.request_id || a.seed != b.seed || a.policy != b.policy || a.method != b.method ||
      a.draws != b.draws || a.candidates != b.candidates || a.shown.size() != b.shown.size() || a.base != b.base ||
      a.delta != b.delta || a.gate != b.gate || a.explored != b.explored || !same_side(a.user, b.user) ||
      a.candidate_features.size() != b.candidate_features.size())
    return false;
  for (std::size_t k = 0; k < a.shown.size(); ++k) {
    const age::ShownItem &x = a.shown[k], &y = b.shown[k];
    if (x.position != y.position || x.candidate != y.candidate || x.item != y.item ||
        !same_number(x.propensity, y.propensity) || !same_number(x.propensity_se, y.propensity_se) ||
        !same_number(x.reward, y.reward))
      return false;
  }
  for (std::size_t c = 0; c < a.candidate_features.size(); ++c)
    if (!same_side(a.candidate_features[c], b.candidate_features[c])) return false;
  return true;
}

// A record a reader returned: valid, and written in either form it reads back unchanged
// (the JSON line is also a fixed point of write(read(.))).
inline void check_served_round_trips(const age::ServedRecord& r) {
  const std::string problem = age::served_record_problem(r);
  require(problem.empty(), "a reader returned an invalid record: " + problem);
  const std::string line = must_accept("writing a read record as JSON", [&] { return age::served_record_json(r); });
  const age::ServedRecord from_json =
      must_accept("re-reading its JSON line", [&] { return age::served_record_from_json(line, "re-read"); });
  require(same_served(r, from_json), "JSON write/read changed the record: " + line);
  require(age::served_record_json(from_json) == line, "JSON write(read(write(r))) != write(r)");

  std::ostringstream csv;
  must_accept("writing a read record as CSV", [&] {
    age::ServedCsvWriter(csv).write(r);
    return 0;
  });
  const std::string text = csv.str();
  const MemFile file(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  const age::ServedLog back = must_accept("re-reading its CSV rows", [&] { return age::read_served_csv(file.path()); });
  require(back.records.size() == 1 && same_served(r, back.records[0]), "CSV write/read changed the record: " + text);
}

}  // namespace detail

// A served log (age/io/served_log.hpp, age/explore/served_record.hpp), read from the same
// bytes as JSON lines and as CSV, each strictly and with skip_bad_rows. Every record read
// is valid and survives a write/read round trip in both forms; the strict read succeeds
// exactly when the skipping one skips nothing, and then both give the same records; the
// JSON reader accounts for every non-blank line.
inline Outcome served_log(std::span<const std::uint8_t> data) {
  const detail::MemFile file(data);
  Outcome outcome = Outcome::Rejected;
  for (const bool json : {true, false}) {
    auto read = [&](bool skip) {
      return json ? age::read_served_jsonl(file.path(), {.skip_bad_rows = skip})
                  : age::read_served_csv(file.path(), {.skip_bad_rows = skip});
    };
    std::optional<age::ServedLog> strict;
    try {
      strict = read(false);
    } catch (const age::Error&) {
    }
    age::ServedLog skipping;
    try {
      skipping = read(true);
    } catch (const age::Error&) {
      require(!strict, "a served log read strictly was rejected with skip_bad_rows");
      continue;
    }
    require(strict.has_value() == (skipping.skipped == 0),
            "the strict read and skip_bad_rows disagree on whether the log has a bad row");
    if (strict) {
      require(strict->records.size() == skipping.records.size(), "strict and skipping reads differ in length");
      for (std::size_t i = 0; i < strict->records.size(); ++i)
        require(detail::same_served(strict->records[i], skipping.records[i]), "strict and skipping reads differ");
    }
    if (json) {
      const std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
      const std::size_t lines = detail::count_lines(
          text, [](std::string_view l) { return l.find_first_not_of(" \t") == std::string_view::npos; });
      require(skipping.records.size() + skipping.skipped == lines, "JSON records + skipped lines != non-blank lines");
    }
    for (const age::ServedRecord& r : skipping.records) detail::check_served_round_trips(r);
    if (!skipping.records.empty()) outcome = Outcome::Loaded;
    else if (outcome == Outcome::Rejected) outcome = Outcome::Parsed;
  }
  return outcome;
}

#ifdef AGE_FUZZ_HAVE_R6B

// One R6B log line: if it parses, formatting the event and parsing that gives the same
// event (under both the strict R6B format and the permissive one).
inline Outcome r6b_line(std::span<const std::uint8_t> data) {
  const std::string_view line(reinterpret_cast<const char*>(data.data()), data.size());
  Outcome outcome = Outcome::Rejected;
  const age::sim::R6bFormat formats[] = {age::sim::R6bFormat{}, age::sim::R6bFormat{0, false}};
  for (const age::sim::R6bFormat& format : formats) {
    age::sim::R6bEvent event;
    try {
      age::sim::parse_r6b_line(line, event, format);
    } catch (const age::sim::detail::LineError&) {
      continue;
    }
    outcome = Outcome::Parsed;
    const std::string text = age::sim::format_r6b_line(event);
    age::sim::R6bEvent back;
    try {
      age::sim::parse_r6b_line(text, back, format);
    } catch (const age::sim::detail::LineError& e) {
      throw PropertyViolation("formatted event '" + text + "' does not parse: " + e.what());
    }
    require(back == event, "format/parse round trip changed the event: '" + text + "'");
  }
  return outcome;
}

#ifdef AGE_FUZZ_WITH_ZLIB

// A whole R6B file (plain or gzip), read through R6bReader from an in-memory file: with
// skip_malformed every line is either an event or a counted skip; without it, the first
// malformed line is a FormatError. The events must be those of the file's lines parsed
// one by one: of its bytes for a plain file, of what zlib's own gzread decompresses for a
// gzip one (a file gzread cannot decompress must be refused; the reader may also refuse
// one gzread accepts, for data after the gzip stream, which gzread drops). Lines are
// bounded at kFuzzMaxLine bytes, so that the bound is exercised by inputs of the fuzzer's
// sizes.
inline constexpr std::size_t kFuzzMaxLine = 256;

namespace detail {
// The file's content as zlib's gzread decompresses it, or nullopt when it reports an error.
inline std::optional<std::string> gzread_all(const std::string& path) {
  const gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("gzopen failed on the memfd");
  std::string text;
  char buf[1 << 14];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
  int err = Z_OK;
  (void)gzerror(f, &err);
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) return std::nullopt;
  return text;
}
}  // namespace detail

inline Outcome r6b_file(std::span<const std::uint8_t> data) {
  const detail::MemFile file(data);
  const std::string& path = file.path();

  // What the reader should produce: the lines of the (decompressed) text split at '\n' (a
  // last line without one counts), each parsed on its own, one longer than kFuzzMaxLine
  // skipped; a NUL byte stays inside its line, where the parser rejects it.
  const bool gzip = data.size() >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  const std::optional<std::string> text =
      gzip ? detail::gzread_all(path) : std::string(reinterpret_cast<const char*>(data.data()), data.size());
  std::vector<age::sim::R6bEvent> expected;
  std::uint64_t expected_lines = 0, expected_skipped = 0;
  if (text) {
    const std::string_view all(*text);
    std::size_t begin = 0;
    while (begin < all.size()) {
      std::size_t end = all.find('\n', begin);
      if (end == std::string_view::npos) end = all.size();
      ++expected_lines;
      age::sim::R6bEvent event;
      try {
        if (end - begin > kFuzzMaxLine) throw age::sim::detail::LineError("too long");
        age::sim::parse_r6b_line(all.substr(begin, end - begin), event, age::sim::R6bFormat{});
        expected.push_back(event);
      } catch (const age::sim::detail::LineError&) {
        ++expected_skipped;
      }
      begin = end + 1;
    }
  }

  Outcome outcome = Outcome::Rejected;
  for (bool skip : {true, false}) {
    age::sim::R6bReader::Options options;
    options.skip_malformed = skip;
    options.max_line_bytes = kFuzzMaxLine;
    std::vector<age::sim::R6bEvent> events;
    try {
      age::sim::R6bReader reader(path, options);
      age::sim::R6bEvent event;
      while (reader.next(event)) {
        require(!event.candidates.empty(), "reader returned an event without candidates");
        events.push_back(event);
        outcome = Outcome::Parsed;
      }
      require(text.has_value(), "the reader accepted a gzip file that zlib's gzread cannot decompress");
      if (skip) {
        require(reader.events() + reader.skipped() == reader.line_number(), "events + skipped lines != lines read");
        require(reader.line_number() == expected_lines, "reader counted " + std::to_string(reader.line_number()) +
                                                            " lines, the file has " + std::to_string(expected_lines));
        require(reader.skipped() == expected_skipped && events == expected,
                "reader's events differ from parsing the file's lines one by one");
      }
    } catch (const age::Error&) {
      require(!skip || gzip, "a plain file with skip_malformed threw");
    }
  }
  return outcome;
}

#endif  // AGE_FUZZ_WITH_ZLIB
#endif  // AGE_FUZZ_HAVE_R6B

}  // namespace age_fuzz
