// Safetensors weight files: the format PyTorch users share weights in.
//
//   [8 bytes: N, little-endian u64][N bytes: JSON header][data buffer, little-endian]
//
// The header maps every tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the start of the data buffer) and may hold "__metadata__", a
// string -> string map. Tensors must cover the buffer contiguously: no gap, no overlap.
//
// Requires nlohmann_json (link the CMake target age::io); age/age.hpp does not include it.
// Saving uses POSIX calls (open/fsync/rename) so that a failed save never destroys the
// previous file.
//
// Everything a file claims is checked on load, and a bad file raises FormatError naming the
// source, the tensor and the problem; the operating system's refusals raise IoError. A file
// is read tensor by tensor after its header has been checked (never whole into memory),
// and only a regular file is read: a FIFO or a device would block or never end.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "age/core/error.hpp"
#include "age/core/utf8.hpp"

namespace age {

// Element types this reader decodes. Files holding any other safetensors dtype (integers,
// BOOL, F8_*) are rejected with a FormatError naming the tensor and the dtype.
enum class TensorDtype { F16, BF16, F32, F64 };

inline std::string_view to_string(TensorDtype d) noexcept {
  switch (d) {
    case TensorDtype::F16: return "F16";
    case TensorDtype::BF16: return "BF16";
    case TensorDtype::F32: return "F32";
    case TensorDtype::F64: return "F64";
  }
  return "?";
}

inline std::size_t dtype_size(TensorDtype d) noexcept {
  switch (d) {
    case TensorDtype::F16:
    case TensorDtype::BF16: return 2;
    case TensorDtype::F32: return 4;
    case TensorDtype::F64: return 8;
  }
  return 0;
}

namespace detail {

inline std::string shape_string(std::span<const std::uint64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Product of the shape, or false when it overflows 64 bits. [] is a scalar (1 element).
inline bool checked_numel(std::span<const std::uint64_t> shape, std::uint64_t& out) noexcept {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) {
    if (d != 0 && n > std::numeric_limits<std::uint64_t>::max() / d) return false;
    n *= d;
  }
  out = n;
  return true;
}

// Byte-by-byte little-endian loads and stores: correct on any host, and compiled to a
// plain load/store on little-endian ones.
inline std::uint64_t load_le(const std::uint8_t* p, std::size_t bytes) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
inline void store_le(std::uint8_t* p, std::uint64_t v, std::size_t bytes) noexcept {
  for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// IEEE 754 binary16 -> double, subnormals, infinities and NaN included.
inline double half_to_double(std::uint16_t h) noexcept {
  const int sign = (h >> 15) & 1;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  double v;
  if (exponent == 0)
    v = std::ldexp(static_cast<double>(mantissa), -24);
  else if (exponent == 31)
    v = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else
    v = std::ldexp(static_cast<double>(mantissa | 0x400), exponent - 25);
  return sign ? -v : v;
}

inline std::string errno_text(int err) { return std::generic_category().message(err); }

// `s` for a message: at most 60 bytes, anything but printable ASCII as \xNN, so that a
// message about a bad name is itself valid text.
inline std::string printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < 60; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  if (s.size() > 60) out += "...";
  return out;
}

// FormatError unless `s` is valid UTF-8: a name or metadata string that the file's JSON
// header could not hold. `what` names it.
inline void require_utf8(std::string_view s, std::string_view what) {
  const std::size_t bad = invalid_utf8_at(s);
  if (bad == std::string_view::npos) return;
  throw FormatError(std::string(what) + " '" + printable(s) + "': expected valid UTF-8 (the header is JSON), got " +
                    "an invalid byte at offset " + std::to_string(bad));
}

}  // namespace detail

// One tensor: element type, shape (row-major, as in PyTorch) and its raw little-endian bytes.
struct TensorData {
  TensorDtype dtype = TensorDtype::F32;
  std::vector<std::uint64_t> shape;
  std::vector<std::uint8_t> bytes;

  // Number of elements (1 for a scalar with shape []). Callers may rely on it not
  // overflowing: Safetensors::add and the parser reject shapes whose byte size does.
  std::uint64_t numel() const noexcept {
    std::uint64_t n = 0;
    return detail::checked_numel(shape, n) ? n : 0;
  }

  // Element i (row-major order) converted to double.
  double value(std::size_t i) const noexcept {
    const std::uint8_t* p = bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case TensorDtype::F16: return detail::half_to_double(static_cast<std::uint16_t>(detail::load_le(p, 2)));
      case TensorDtype::BF16:
        return std::bit_cast<float>(static_cast<std::uint32_t>(detail::load_le(p, 2) << 16));
      case TensorDtype::F32: return std::bit_cast<float>(static_cast<std::uint32_t>(detail::load_le(p, 4)));
      case TensorDtype::F64: return std::bit_cast<double>(detail::load_le(p, 8));
    }
    return 0.0;
  }

  // Copies an F32 tensor's elements into `out` (numel() long) without conversion.
  void copy_f32(std::span<float> out) const {
    if (dtype != TensorDtype::F32)
      throw FormatError("tensor copy: dtype " + std::string(to_string(dtype)) + ", expected F32");
    detail::require_dim("tensor copy: number of elements", static_cast<std::size_t>(numel()), out.size());
    if constexpr (std::endian::native == std::endian::little) {
      if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
    } else {
      for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(detail::load_le(bytes.data() + 4 * i, 4)));
    }
  }

  // Index of the first element that is NaN or infinite, or numel() when all are finite.
  std::size_t first_non_finite() const noexcept {
    const std::size_t n = static_cast<std::size_t>(numel());
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(value(i))) return i;
    return n;
  }

  // An F32 tensor from values in row-major order.
  static TensorData from_f32(std::vector<std::uint64_t> shape, std::span<const float> values) {
    TensorData t;
    t.dtype = TensorDtype::F32;
    t.shape = std::move(shape);
    std::uint64_t n = 0;
    if (!detail::checked_numel(t.shape, n) || n != values.size())
      throw DimensionError("F32 tensor of shape " + detail::shape_string(t.shape) + ": number of values: expected " +
                           std::to_string(n) + ", got " + std::to_string(values.size()));
    t.bytes.resize(values.size() * sizeof(float));
    if constexpr (std::endian::native == std::endian::little) {
      if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
    } else {
      for (std::size_t i = 0; i < values.size(); ++i)
        detail::store_le(t.bytes.data() + 4 * i, std::bit_cast<std::uint32_t>(values[i]), 4);
    }
    return t;
  }
};

// The contents of one safetensors file: named tensors, kept in the order they were added
// (which is the order of their bytes in the data buffer when written), and the
// string -> string metadata.
class Safetensors {
 public:
  using Metadata = std::map<std::string, std::string>;

  // Adds a tensor. Throws FormatError when the name is taken or reserved, or when the
  // byte count does not match shape x dtype size.
  TensorData& add(std::string name, TensorData tensor) {
    if (name == kMetadataKey) throw FormatError("tensor name '__metadata__' is reserved for the metadata");
    if (tensors_.count(name)) throw FormatError("tensor '" + name + "': added twice");
    std::uint64_t n = 0;
    const std::uint64_t esize = dtype_size(tensor.dtype);
    if (!detail::checked_numel(tensor.shape, n) || n > std::numeric_limits<std::uint64_t>::max() / esize ||
        n * esize != tensor.bytes.size())
      throw FormatError("tensor '" + name + "': " + std::to_string(tensor.bytes.size()) + " bytes but shape " +
                        detail::shape_string(tensor.shape) + " of " + std::string(to_string(tensor.dtype)) +
                        " needs " + (detail::checked_numel(tensor.shape, n) ? std::to_string(n * esize) : "more than 2^64") +
                        " bytes");
    names_.push_back(name);
    return tensors_.emplace(std::move(name), std::move(tensor)).first->second;
  }

  TensorData& add_f32(std::string name, std::vector<std::uint64_t> shape, std::span<const float> values) {
    return add(std::move(name), TensorData::from_f32(std::move(shape), values));
  }

  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  const TensorData* find(std::string_view name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  const TensorData& at(std::string_view name) const {
    if (const TensorData* t = find(name)) return *t;
    throw FormatError("no tensor named '" + std::string(name) + "'");
  }

  // Tensor names in buffer order.
  const std::vector<std::string>& names() const noexcept { return names_; }
  std::size_t size() const noexcept { return names_.size(); }

  Metadata& metadata() noexcept { return metadata_; }
  const Metadata& metadata() const noexcept { return metadata_; }

  static constexpr std::string_view kMetadataKey = "__metadata__";

 private:
  std::vector<std::string> names_;
  std::map<std::string, TensorData, std::less<>> tensors_;
  Metadata metadata_;
};

// Default bound on the size of a weight file (SafetensorsReadOptions).
inline constexpr std::uint64_t kDefaultMaxFileBytes = std::uint64_t{4} << 30;  // 4 GiB

// Default bound on the magnitude of a model parameter (SafetensorsReadOptions): far above
// the weights and embeddings of any trained CTR model, far below what overflows float in
// the tower's products (a finite weight of 1e30 makes every score NaN).
inline constexpr double kDefaultMaxAbsParameter = 1e6;
// Model files: how far a load-time probe may be off, as a fraction of its terms' scale
// (age/io/probes.hpp).
inline constexpr double kDefaultProbeTolerance = 1e-5;

struct SafetensorsReadOptions {
  // Reject NaN and infinite elements (FormatError naming the tensor and the element).
  bool require_finite = false;
  // A larger header is taken as a corrupt length field (the reference implementation
  // uses the same 100 MB bound).
  std::uint64_t max_header_bytes = 100'000'000;
  // A larger file is refused (IoError naming the path, the size and the limit) before
  // anything is read or allocated for it. 4 GiB by default: the tensors must fit in memory.
  std::uint64_t max_file_bytes = kDefaultMaxFileBytes;
  // Model files only (load_model, load_tower; age/io/model_io.hpp): a parameter of larger
  // magnitude is refused (FormatError naming the tensor, the element and the value), as a
  // non-finite one always is. save_model refuses to write one above the default.
  double max_abs_parameter = kDefaultMaxAbsParameter;
  // Model files only: recompute the probes a file carries ("age.probes.<tower>", written by
  // save_model, add_tower and the PyTorch exporter; age/io/probes.hpp) with this build's
  // passes and refuse the file (FormatError naming the probe and the difference) when one
  // is off by more than probe_tolerance of its terms' scale. A file without probes loads.
  bool verify_probes = true;
  double probe_tolerance = kDefaultProbeTolerance;
};

// The file's bytes: 8-byte length, the JSON header padded with spaces so that the data
// buffer starts 8-byte aligned, then every tensor's bytes in names() order. Deterministic:
// "__metadata__" first (omitted when empty, keys sorted), then the tensors in order.
// Throws FormatError, naming it, for a name or metadata string that is not valid UTF-8.
inline std::vector<std::uint8_t> serialize_safetensors(const Safetensors& st) {
  // JSON holds UTF-8 only; nlohmann's dump() would throw its own type_error.
  for (const auto& [k, v] : st.metadata()) {
    detail::require_utf8(k, "metadata key");
    detail::require_utf8(v, "value of metadata key '" + detail::printable(k) + "'");
  }
  for (const std::string& name : st.names()) detail::require_utf8(name, "tensor name");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!st.metadata().empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : st.metadata()) meta[k] = v;
    header[std::string(Safetensors::kMetadataKey)] = std::move(meta);
  }
  std::uint64_t offset = 0;
  for (const std::string& name : st.names()) {
    const TensorData& t = st.at(name);
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(to_string(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.bytes.size()};
    header[name] = std::move(entry);
    offset += t.bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // checked above; never another type
    throw FormatError(std::string("safetensors header: cannot be written as JSON: ") + e.what());
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');  // the spec allows trailing spaces

  std::vector<std::uint8_t> out(8 + text.size() + offset);
  detail::store_le(out.data(), text.size(), 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::uint8_t* p = out.data() + 8 + text.size();
  for (const std::string& name : st.names()) {
    const TensorData& t = st.at(name);
    if (!t.bytes.empty()) std::memcpy(p, t.bytes.data(), t.bytes.size());
    p += t.bytes.size();
  }
  return out;
}

namespace detail {

inline std::optional<TensorDtype> parse_dtype(std::string_view s) {
  if (s == "F16") return TensorDtype::F16;
  if (s == "BF16") return TensorDtype::BF16;
  if (s == "F32") return TensorDtype::F32;
  if (s == "F64") return TensorDtype::F64;
  return std::nullopt;
}

inline bool is_known_unsupported_dtype(std::string_view s) {
  for (std::string_view d : {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F8_E5M2", "F8_E4M3",
                             "F8_E4M3FN", "F8_E5M2FNUZ", "F8_E4M3FNUZ"})
    if (s == d) return true;
  return false;
}

// Parses JSON, rejecting duplicate keys (which nlohmann would silently merge) and nesting
// deeper than `max_depth` containers (which only a hostile file has). `what` names the text.
inline nlohmann::json parse_json_strict(std::string_view text, const std::string& where, std::string_view what,
                                        std::size_t max_depth) {
  std::vector<std::set<std::string>> keys;  // keys seen, one set per open container
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        if (keys.size() >= max_depth)
          throw FormatError(where + ": " + std::string(what) + " is nested deeper than " + std::to_string(max_depth) +
                            " levels");
        keys.emplace_back();
        break;
      case E::object_end:
      case E::array_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case E::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(k).second)
          throw FormatError(where + ": " + std::string(what) + " names '" + k + "' twice");
        break;
      }
      case E::value: break;
    }
    return true;
  };
  // nlohmann's lexer takes a NUL byte for the end of the input, so "{...}\0<garbage>"
  // would parse; valid JSON text holds none (a string escapes it as \u0000).
  if (const void* nul = text.empty() ? nullptr : std::memchr(text.data(), '\0', text.size()))
    throw FormatError(where + ": " + std::string(what) + " is not valid JSON: NUL byte at offset " +
                      std::to_string(static_cast<const char*>(nul) - text.data()) + " of " +
                      std::to_string(text.size()) + ", expected JSON text up to the last byte");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(where + ": " + std::string(what) + " is not valid JSON (" + e.what() + ")");
  }
  return header;
}

inline std::uint64_t header_uint(const nlohmann::json& v, const std::string& what) {
  if (!v.is_number_unsigned()) throw FormatError(what + " must be a non-negative integer, got " + v.dump());
  return v.get<std::uint64_t>();
}

// One tensor as the header describes it: where its bytes are in the data buffer.
struct TensorEntry {
  std::string name;
  TensorDtype dtype = TensorDtype::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range in the data buffer
};

// A checked header: the metadata and every tensor in buffer order, the tensors covering
// the buffer of `buffer_size` bytes exactly.
struct SafetensorsHeader {
  Safetensors::Metadata metadata;
  std::vector<TensorEntry> tensors;
};

// The header length field of a file of `file_size` bytes, checked against the limit and
// the file before anything is allocated for the header.
inline void check_header_length(std::uint64_t file_size, std::uint64_t header_len, const std::string& where,
                                const SafetensorsReadOptions& options) {
  const std::uint64_t available = file_size - 8;
  if (header_len > options.max_header_bytes)
    throw FormatError(where + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
                      std::to_string(options.max_header_bytes) + " bytes (corrupt length field?)");
  if (header_len > available)
    throw FormatError(where + ": truncated: header length " + std::to_string(header_len) + " but only " +
                      std::to_string(available) + " bytes follow the length field");
}

inline void check_file_length(std::uint64_t file_size, const std::string& where) {
  if (file_size < 8)
    throw FormatError(where + ": truncated: " + std::to_string(file_size) +
                      " bytes, shorter than the 8-byte header length field");
}

// Parses and checks the JSON header `text` of a file whose data buffer has `buffer_size`
// bytes: every entry, and the tensors' byte ranges covering the buffer exactly.
inline SafetensorsHeader parse_header(std::string_view text, std::uint64_t buffer_size, const std::string& where) {
  if (text.empty() || text.front() != '{')
    throw FormatError(where + ": header does not start with '{' (not a safetensors file?)");
  // {header {entry [shape]}} is as deep as the format goes.
  const nlohmann::json header = parse_json_strict(text, where, "header", 3);
  if (!header.is_object()) throw FormatError(where + ": header is not a JSON object");

  SafetensorsHeader result;
  std::vector<TensorEntry>& entries = result.tensors;
  entries.reserve(header.size());
  for (const auto& [name, info] : header.items()) {
    if (name == Safetensors::kMetadataKey) {
      if (!info.is_object()) throw FormatError(where + ": __metadata__ is not a JSON object");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string())
          throw FormatError(where + ": __metadata__ '" + k + "' must be a string, got " + v.dump());
        result.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = where + ": tensor '" + name + "'";
    if (!info.is_object()) throw FormatError(what + ": entry is not a JSON object");
    for (const auto& [k, v] : info.items())
      if (k != "dtype" && k != "shape" && k != "data_offsets")
        throw FormatError(what + ": unexpected key '" + k + "'");
    for (const char* k : {"dtype", "shape", "data_offsets"})
      if (!info.contains(k)) throw FormatError(what + ": missing '" + k + "'");

    const auto& jd = info["dtype"];
    if (!jd.is_string()) throw FormatError(what + ": dtype must be a string, got " + jd.dump());
    const std::string dname = jd.get<std::string>();
    const auto dtype = parse_dtype(dname);
    if (!dtype) {
      if (is_known_unsupported_dtype(dname))
        throw FormatError(what + ": dtype " + dname + " is not supported (expected F32; F16, BF16 and F64 are also read)");
      throw FormatError(what + ": unknown dtype '" + dname + "'");
    }

    const auto& js = info["shape"];
    if (!js.is_array()) throw FormatError(what + ": shape must be an array, got " + js.dump());
    TensorEntry e;
    e.name = name;
    e.dtype = *dtype;
    for (const auto& d : js) e.shape.push_back(header_uint(d, what + ": shape entry"));

    const auto& jo = info["data_offsets"];
    if (!jo.is_array() || jo.size() != 2)
      throw FormatError(what + ": data_offsets must be an array [begin, end], got " + jo.dump());
    e.begin = header_uint(jo[0], what + ": data_offsets begin");
    e.end = header_uint(jo[1], what + ": data_offsets end");
    const std::string offsets = "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.begin > e.end) throw FormatError(what + ": " + offsets + " has begin > end");
    if (e.end > buffer_size)
      throw FormatError(what + ": " + offsets + " points past the end of the " + std::to_string(buffer_size) +
                        "-byte data buffer");
    std::uint64_t n = 0;
    const std::uint64_t esize = dtype_size(*dtype);
    if (!checked_numel(e.shape, n) || n > std::numeric_limits<std::uint64_t>::max() / esize)
      throw FormatError(what + ": shape " + shape_string(e.shape) + " is too large");
    if (e.end - e.begin != n * esize)
      throw FormatError(what + ": " + offsets + " but shape " + shape_string(e.shape) + " of " + dname + " needs " +
                        std::to_string(n * esize) + " bytes");
    entries.push_back(std::move(e));
  }

  // The data buffer must be covered exactly, in some order, by the tensors' byte ranges.
  std::stable_sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  std::uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& e : entries) {
    if (e.begin != covered) {
      const std::string prev = previous ? "the previous tensor '" + previous->name + "' ends at " + std::to_string(covered)
                                        : "the data buffer starts at 0";
      throw FormatError(where + ": tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) + " but " + prev +
                        (e.begin > covered ? " (gap)" : " (overlap)"));
    }
    covered = e.end;
    previous = &e;
  }
  if (covered != buffer_size)
    throw FormatError(where + ": data buffer is " + std::to_string(buffer_size) + " bytes but the tensors cover " +
                      std::to_string(covered) + " (" + std::to_string(buffer_size - covered) +
                      " trailing bytes belong to no tensor)");
  return result;
}

inline void check_finite_tensor(const TensorData& t, const std::string& where, const std::string& name) {
  const std::size_t bad = t.first_non_finite();
  if (bad != t.numel())
    throw FormatError(where + ": tensor '" + name + "': element " + std::to_string(bad) + " is not finite (" +
                      std::to_string(t.value(bad)) + ")");
}

}  // namespace detail

// Parses and validates a whole file held in memory. `source` names it in error messages.
inline Safetensors parse_safetensors(std::span<const std::uint8_t> bytes, std::string_view source = "safetensors buffer",
                                     const SafetensorsReadOptions& options = {}) {
  const std::string where(source);
  detail::check_file_length(bytes.size(), where);
  const std::uint64_t header_len = detail::load_le(bytes.data(), 8);
  detail::check_header_length(bytes.size(), header_len, where, options);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(header_len));
  const std::uint64_t buffer_size = bytes.size() - 8 - header_len;
  detail::SafetensorsHeader header = detail::parse_header(text, buffer_size, where);

  // Buffer order, so that serialising the result reproduces the same layout.
  const std::uint8_t* buffer = bytes.data() + 8 + header_len;
  Safetensors result;
  result.metadata() = std::move(header.metadata);
  for (detail::TensorEntry& e : header.tensors) {
    TensorData t;
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.bytes.assign(buffer + e.begin, buffer + e.end);
    if (options.require_finite) detail::check_finite_tensor(t, where, e.name);
    result.add(std::move(e.name), std::move(t));
  }
  return result;
}

namespace detail {

// A file opened for reading at offsets: a regular file only (a FIFO would block the open
// and the reads, a device may never end), no larger than `max_bytes`, checked before
// anything is read; IoError naming the path otherwise. Reads past the end (the file
// shrank) are FormatErrors.
class InputFile {
 public:
  InputFile(const std::filesystem::path& path, std::uint64_t max_bytes) : path_(path.string()) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It has no
    // effect on a regular file, the only kind read here.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd_ < 0) throw IoError("cannot open '" + path_ + "' for reading: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      throw IoError("cannot read '" + path_ + "': " + errno_text(err));
    }
    const char* refused = S_ISDIR(st.st_mode)    ? "it is a directory"
                          : !S_ISREG(st.st_mode) ? "not a regular file (a FIFO, socket or device), expected one"
                                                 : nullptr;
    if (!refused && static_cast<std::uint64_t>(st.st_size) > max_bytes) {
      ::close(fd_);
      throw IoError("cannot read '" + path_ + "': file size: expected at most " + std::to_string(max_bytes) +
                    " bytes (max_file_bytes), got " + std::to_string(st.st_size));
    }
    if (refused) {
      ::close(fd_);
      throw IoError("cannot read '" + path_ + "': " + refused);
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() { ::close(fd_); }

  const std::string& path() const noexcept { return path_; }
  std::uint64_t size() const noexcept { return size_; }

  // Bytes [offset, offset + n) into `out`; `what` names them for an error.
  void read_at(std::uint64_t offset, void* out, std::size_t n, const std::string& where, std::string_view what) const {
    auto* p = static_cast<std::uint8_t*>(out);
    std::size_t done = 0;
    while (done < n) {
      const ::ssize_t got = ::pread(fd_, p + done, n - done, static_cast<::off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw IoError("cannot read '" + path_ + "': " + std::string(what) + ": " + errno_text(errno));
      }
      if (got == 0)
        throw FormatError(where + ": truncated while reading " + std::string(what) + ": the file ends at byte " +
                          std::to_string(offset + done) + ", expected " + std::to_string(offset + n));
      done += static_cast<std::size_t>(got);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

}  // namespace detail

// The whole content of a file; IoError naming the path and the OS reason on failure, when
// it is not a regular file, or when its size exceeds max_bytes (checked before the buffer
// is allocated).
inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path,
                                                 std::uint64_t max_bytes = kDefaultMaxFileBytes) {
  const detail::InputFile file(path, max_bytes);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(file.size()));
  file.read_at(0, bytes.data(), bytes.size(), "file '" + path.string() + "'", "its bytes");
  return bytes;
}

// A safetensors file read lazily: the header is read and checked whole (against the
// file's size: a length field or offsets beyond it are refused before anything is
// allocated for them), then each tensor's bytes are read on demand, straight into the
// caller's memory. What read_safetensors and the model loaders (model_io.hpp) read from.
class SafetensorsFile {
 public:
  SafetensorsFile(const std::filesystem::path& path, const SafetensorsReadOptions& options = {})
      : file_(path, options.max_file_bytes), where_("safetensors file '" + path.string() + "'") {
    detail::check_file_length(file_.size(), where_);
    std::uint8_t length[8];
    file_.read_at(0, length, 8, where_, "the header length field");
    const std::uint64_t header_len = detail::load_le(length, 8);
    detail::check_header_length(file_.size(), header_len, where_, options);
    std::string text(static_cast<std::size_t>(header_len), '\0');
    file_.read_at(8, text.data(), text.size(), where_, "the header");
    data_start_ = 8 + header_len;
    header_ = detail::parse_header(text, file_.size() - data_start_, where_);
    for (std::size_t i = 0; i < header_.tensors.size(); ++i) {
      names_.push_back(header_.tensors[i].name);
      index_.emplace(header_.tensors[i].name, i);
    }
  }

  // "safetensors file '<path>'", the prefix of this file's error messages.
  const std::string& where() const noexcept { return where_; }
  const Safetensors::Metadata& metadata() const noexcept { return header_.metadata; }
  // Tensor names in buffer order.
  const std::vector<std::string>& names() const noexcept { return names_; }
  // The header's entry for `name` (dtype, shape, byte range), or null.
  const detail::TensorEntry* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &header_.tensors[it->second];
  }
  const detail::TensorEntry& at(std::string_view name) const {
    if (const detail::TensorEntry* e = find(name)) return *e;
    throw FormatError(where_ + ": no tensor named '" + std::string(name) + "'");
  }

  // The raw bytes of tensor `e` into `out` (exactly e.end - e.begin bytes).
  void read(const detail::TensorEntry& e, std::span<std::uint8_t> out) const {
    detail::require_dim(where_ + ": tensor '" + e.name + "': bytes to read", static_cast<std::size_t>(e.end - e.begin),
                        out.size());
    file_.read_at(data_start_ + e.begin, out.data(), out.size(), where_, "tensor '" + e.name + "'");
  }

  // An F32 tensor's elements into `out` (numel long), without a copy of its bytes.
  void copy_f32(std::string_view name, std::span<float> out) const {
    const detail::TensorEntry& e = at(name);
    if (e.dtype != TensorDtype::F32)
      throw FormatError(where_ + ": tensor '" + e.name + "': dtype " + std::string(to_string(e.dtype)) + ", expected F32");
    detail::require_dim(where_ + ": tensor '" + e.name + "': number of elements",
                        static_cast<std::size_t>((e.end - e.begin) / sizeof(float)), out.size());
    read(e, std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(out.data()), out.size_bytes()));
    if constexpr (std::endian::native != std::endian::little)
      for (float& x : out) {
        std::uint8_t le[4];
        std::memcpy(le, &x, 4);
        x = std::bit_cast<float>(static_cast<std::uint32_t>(detail::load_le(le, 4)));
      }
  }

  // Every tensor, read into memory.
  Safetensors read_all(const SafetensorsReadOptions& options = {}) const {
    Safetensors result;
    result.metadata() = header_.metadata;
    for (const detail::TensorEntry& e : header_.tensors) {
      TensorData t;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.bytes.resize(static_cast<std::size_t>(e.end - e.begin));
      read(e, t.bytes);
      if (options.require_finite) detail::check_finite_tensor(t, where_, e.name);
      result.add(e.name, std::move(t));
    }
    return result;
  }

 private:
  detail::InputFile file_;
  std::string where_;
  std::uint64_t data_start_ = 0;
  detail::SafetensorsHeader header_;
  std::vector<std::string> names_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// A whole file, read tensor by tensor into memory (peak memory: the tensors and the
// header, never a second copy of the file).
inline Safetensors read_safetensors(const std::filesystem::path& path, const SafetensorsReadOptions& options = {}) {
  return SafetensorsFile(path, options).read_all(options);
}

namespace detail {
inline std::atomic<std::uint64_t> temp_file_counter{0};

// The temporary file's name for `file_name`: "." + file_name + suffix, with file_name cut
// (at a UTF-8 character boundary) so that the whole fits in `name_max` bytes: the
// file system refuses a longer name even when the target's own name fits.
inline std::string temp_file_name(const std::string& file_name, const std::string& suffix, std::size_t name_max) {
  const std::size_t room = name_max > suffix.size() + 2 ? name_max - suffix.size() - 1 : 1;
  std::size_t keep = std::min(file_name.size(), room);
  while (keep > 1 && keep < file_name.size() && (static_cast<unsigned char>(file_name[keep]) & 0xC0) == 0x80) --keep;
  // Appended piece by piece: GCC 12 misreports "." + std::string as overlapping (-Wrestrict).
  std::string name(".");
  name.append(file_name, 0, keep);
  name += suffix;
  return name;
}
}  // namespace detail

// Replaces `target` with `bytes` atomically: the bytes go to a new file in the same
// directory, are flushed to disk (fsync), and the new file is renamed over the target. A
// failure at any step removes the temporary file and throws IoError; the previous file,
// if any, is untouched. A file that is replaced keeps its permission bits (and its owner
// and group where the process may set them): the temporary file is created with no more
// than the target's permissions, so private weights are never readable by others, not
// even while they are being written.
inline void write_file_atomic(const std::filesystem::path& target, std::span<const std::uint8_t> bytes) {
  namespace fs = std::filesystem;
  const std::string name = target.string();
  if (target.filename().empty()) throw IoError("cannot write '" + name + "': not a file name");
  std::error_code ec;
  if (fs::is_directory(target, ec)) throw IoError("cannot write '" + name + "': it is a directory");
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");

  struct stat previous {};
  const bool replacing = ::stat(target.c_str(), &previous) == 0 && S_ISREG(previous.st_mode);
  const ::mode_t mode = replacing ? (previous.st_mode & 07777) : 0666;  // a new file: 0666 less the umask
  const long name_max_conf = ::pathconf(dir.c_str(), _PC_NAME_MAX);
  const std::size_t name_max = name_max_conf > 0 ? static_cast<std::size_t>(name_max_conf) : 255;

  // O_EXCL with a process- and call-unique name: concurrent savers never share a temp file.
  fs::path temp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    std::string suffix = ".tmp.";
    suffix += std::to_string(::getpid());
    suffix += '.';
    suffix += std::to_string(detail::temp_file_counter.fetch_add(1));
    temp = dir / detail::temp_file_name(target.filename().string(), suffix, name_max);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0777);
    if (fd < 0 && (errno != EEXIST || attempt >= 100))
      throw IoError("cannot save '" + name + "': cannot create temporary file '" + temp.string() +
                    "': " + detail::errno_text(errno));
  }
  auto fail = [&](const std::string& step, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp.c_str());
    throw IoError("cannot save '" + name + "': " + step + " '" + temp.string() + "' failed: " + detail::errno_text(err));
  };
  if (replacing) {
    // Owner first (a change of owner clears set-id bits), best effort: only root may give
    // a file away. Then the exact bits, which the umask may have narrowed at the open.
    if ((previous.st_uid != ::geteuid() || previous.st_gid != ::getegid()) &&
        ::fchown(fd, previous.st_uid, previous.st_gid) != 0) {
      // Not permitted (EPERM): the file is this process's, with the target's mode.
    }
    if (::fchmod(fd, mode) != 0) fail("setting the permissions of", errno);
  }

  const std::uint8_t* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ::ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("writing", errno);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail("flushing", errno);
  const int closed = ::close(fd);
  fd = -1;
  if (closed != 0) fail("closing", errno);
  if (::rename(temp.c_str(), target.c_str()) != 0) fail("renaming over the target", errno);

  // Make the rename itself durable. Best effort: the new file is already in place.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

inline void write_safetensors(const std::filesystem::path& path, const Safetensors& st) {
  const std::vector<std::uint8_t> bytes = serialize_safetensors(st);
  write_file_atomic(path, bytes);
}

}  // namespace age
