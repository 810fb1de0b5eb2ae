// What each fuzz target does with one untrusted input, shared by the libFuzzer entry
// points (tests/fuzz/fuzz_*.cpp) and the [fuzz-regression] unit test, so that a saved
// crashing input replays exactly the code the fuzzer ran.
//
// Contract checked on every input: it is either accepted or rejected with an age::Error.
// Anything else is a bug: a crash or sanitizer report, an exception of another type, or a
// PropertyViolation (an accepted input that breaks a round trip or a consistency rule).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "age/core/error.hpp"
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#include "age/model/embedding_model.hpp"

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
