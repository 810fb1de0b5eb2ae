// Load-time probes of a tower: a few (input, logit, input gradient) triples that the writer
// of a model file stores next to the weights, and that the loader recomputes with this
// build's own float32 passes. A file whose weights were changed after it was written, a
// writer whose network is not the tower this library evaluates (another activation, a
// layer the file cannot hold), or a service built with flags that break the arithmetic is
// refused when it is loaded, not found out from its scores.
//
// A tower gets 8 probes (fewer when its input is wider than 8192: probe_count()).
//
// Stored as metadata "age.probes.<prefix>" (prefix "tower" for the model's own tower, the
// extra tower's prefix otherwise, e.g. "dgu"), a JSON string:
//   {"version":1,"probes":[{"input":[..],"logit":z,"logit_scale":s,
//                           "gradient":[..],"gradient_scale":g},..]}
//   input           one point h = [user | item] (input_dim values in [-1, 1), exact in float32)
//   logit           the tower's logit at h
//   gradient        d logit / d h (input_dim values)
//   logit_scale     the magnitude of the terms the logit is summed from: the same pass on
//                   |W|, |b|, |h| through the same ReLU pattern (M1). float32 rounding is
//                   relative to it, not to the logit, which may cancel to near 0.
//   gradient_scale  the largest such magnitude of a gradient element
//
// The writer computes them in double precision from the float32 weights and rounds them to
// 7 significant digits, and picks inputs by a fixed rule (SplitMix64 of the probe's
// number, redrawn while a hidden unit sits within 1e-4 of its scale from the ReLU kink, so
// that rounding cannot flip a unit and move the gradient). The C++ writer (save_model,
// add_tower) and the PyTorch exporter (examples/pytorch/export_safetensors.py) follow the
// same rule, so both write the same bytes for the same weights.
//
// A probe passes when |computed - stored| <= tolerance * logit_scale for the logit, and
// <= tolerance * gradient_scale for every gradient element (default tolerance
// kDefaultProbeTolerance = 1e-5; float32 passes land within 2e-7 of the scale on towers
// from 6 inputs and one hidden layer to 256 inputs and 1024-512-256, test_probes.cpp).
//
// Requires nlohmann_json (link age::io).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/io/safetensors.hpp"
#include "age/model/tower.hpp"

namespace age {

inline constexpr std::string_view kProbesKeyPrefix = "age.probes.";
inline constexpr std::size_t kProbeCount = 8;
// A probe stores 2 * input_dim numbers: a wide input gets fewer probes, so that they stay
// a small part of the file (at most about 1.6 MB of text for any width).
inline constexpr std::size_t kProbeValueBudget = 65536;
// How many probes a tower with `input_dim` inputs gets: kProbeCount, fewer above
// kProbeValueBudget / kProbeCount inputs, at least 1.
constexpr std::size_t probe_count(std::size_t input_dim) noexcept {
  return input_dim == 0 ? kProbeCount : std::clamp<std::size_t>(kProbeValueBudget / input_dim, 1, kProbeCount);
}
// More probes than this in a file is taken as corruption: each costs a pass at load.
inline constexpr std::size_t kMaxProbes = 64;

namespace detail {

// One probe in double precision.
struct ProbeValues {
  std::vector<double> input;
  double logit = 0, logit_scale = 0;
  std::vector<double> gradient;
  double gradient_scale = 0;
  double kink_margin = 0;  // smallest |pre-activation| / its scale over the hidden units
  double largest_term = 0;  // the largest term magnitude of any layer, forward or backward
};

// Element j of attempt `attempt` of probe k: a 24-bit SplitMix64 draw mapped to [-1, 1),
// exactly representable in float32.
inline double probe_input(std::size_t k, std::size_t attempt, std::size_t j) noexcept {
  const std::uint64_t counter = ((static_cast<std::uint64_t>(k) * 64 + attempt) << 32) + j;
  const std::uint64_t x = mix64(counter);
  return (static_cast<double>(x >> 40) - 8388608.0) / 8388608.0;
}

// The forward half of a probe in double precision from the float32 weights (M1: ReLU
// hidden layers, linear output): the logit, its scale, the kink margin and which hidden
// units pass (`active`, for the backward half). The weights are read through raw column
// pointers (column-major), each sum adding its terms in input order.
inline void reference_forward(const Tower& tower, const std::vector<double>& input, ProbeValues& p,
                              std::vector<std::vector<double>>& active) {
  const std::size_t layers = tower.num_layers();
  active.assign(layers, {});
  std::vector<double> x = input, ax(input.size());
  for (std::size_t j = 0; j < input.size(); ++j) ax[j] = std::abs(input[j]);
  p.kink_margin = std::numeric_limits<double>::infinity();
  p.largest_term = 0;
  for (std::size_t l = 0; l < layers; ++l) {
    const Matrix& w = tower.weight(l);  // out x in
    const Vector& b = tower.bias(l);
    const auto rows = static_cast<std::size_t>(w.rows()), cols = static_cast<std::size_t>(w.cols());
    std::vector<double> y(rows), ay(rows);
    for (std::size_t o = 0; o < rows; ++o) {
      y[o] = b[static_cast<Index>(o)];
      ay[o] = std::abs(y[o]);
    }
    for (std::size_t i = 0; i < cols; ++i) {
      const Scalar* column = w.data() + i * rows;
      const double xi = x[i], axi = ax[i];
      for (std::size_t o = 0; o < rows; ++o) {
        y[o] += static_cast<double>(column[o]) * xi;
        ay[o] += std::abs(static_cast<double>(column[o])) * axi;
      }
    }
    for (double a : ay) p.largest_term = std::max(p.largest_term, a);
    if (l + 1 < layers) {
      active[l].resize(rows);
      for (std::size_t o = 0; o < rows; ++o) {
        if (ay[o] > 0) p.kink_margin = std::min(p.kink_margin, std::abs(y[o]) / ay[o]);
        active[l][o] = y[o] > 0 ? 1.0 : 0.0;
        y[o] *= active[l][o];
        ay[o] *= active[l][o];
      }
    }
    x = std::move(y);
    ax = std::move(ay);
  }
  p.logit = x[0];
  p.logit_scale = ax[0];
}

// The backward half: d logit / d input from d logit = 1, g_in = W^T (g_out * relu'), and
// the same on |W| for the gradient's scale.
inline void reference_backward(const Tower& tower, const std::vector<std::vector<double>>& active, ProbeValues& p) {
  const std::size_t layers = tower.num_layers();
  std::vector<double> g{1.0}, ag{1.0};
  for (std::size_t l = layers; l-- > 0;) {
    const Matrix& w = tower.weight(l);
    const auto rows = static_cast<std::size_t>(w.rows()), cols = static_cast<std::size_t>(w.cols());
    if (l + 1 < layers)
      for (std::size_t o = 0; o < rows; ++o) {
        g[o] *= active[l][o];
        ag[o] *= active[l][o];
      }
    std::vector<double> gi(cols, 0.0), agi(cols, 0.0);
    for (std::size_t i = 0; i < cols; ++i) {
      const Scalar* column = w.data() + i * rows;
      for (std::size_t o = 0; o < rows; ++o) {
        gi[i] += static_cast<double>(column[o]) * g[o];
        agi[i] += std::abs(static_cast<double>(column[o])) * ag[o];
      }
    }
    for (double a : agi) p.largest_term = std::max(p.largest_term, a);
    g = std::move(gi);
    ag = std::move(agi);
  }
  p.gradient = std::move(g);
  p.gradient_scale = 0;
  for (double a : ag) p.gradient_scale = std::max(p.gradient_scale, a);
}

// A number as the probes store it: 7 significant digits (or the exact input), formatted
// the same way by C and Python ("%.7g", "%.9g").
inline std::string probe_number(double v, int digits) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, v);
  return buffer;
}

inline void append_array(std::string& out, const std::vector<double>& values, int digits) {
  out += '[';
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += probe_number(values[i], digits);
  }
  out += ']';
}

// Whether the float32 passes can represent the probe: every term of every layer, forward
// and backward, far inside float range (1e30; float ends at 3.4e38), so that no pass
// overflows to inf, or to NaN where an inf meets a zero weight, where double does not.
inline constexpr double kLargestProbeTerm = 1e30;
inline bool representable_probe(const ProbeValues& p) {
  const auto ok = [](double v) { return std::abs(v) <= kLargestProbeTerm; };  // false for NaN and inf
  return ok(p.largest_term) && ok(p.logit) && ok(p.logit_scale) && ok(p.gradient_scale) &&
         std::all_of(p.gradient.begin(), p.gradient.end(), ok);
}

inline std::string where_probe(const std::string& where, std::string_view prefix, std::size_t k) {
  return where + ": metadata '" + std::string(kProbesKeyPrefix) + std::string(prefix) + "': probe " +
         std::to_string(k);
}

inline double probe_real(const nlohmann::json& j, const char* key, const std::string& what) {
  if (!j.contains(key) || !j[key].is_number())
    throw FormatError(what + ": '" + key + "' must be a number");
  const double v = j[key].get<double>();
  if (!std::isfinite(v)) throw FormatError(what + ": '" + key + "' must be finite");
  return v;
}

inline std::vector<double> probe_vector(const nlohmann::json& j, const char* key, std::size_t size,
                                        const std::string& what) {
  if (!j.contains(key) || !j[key].is_array())
    throw FormatError(what + ": '" + key + "' must be an array of numbers");
  const auto& a = j[key];
  if (a.size() != size)
    throw FormatError(what + ": '" + key + "' has " + std::to_string(a.size()) + " values, expected " +
                      std::to_string(size) + " (the tower's input_dim)");
  std::vector<double> v(size);
  for (std::size_t i = 0; i < size; ++i) {
    if (!a[i].is_number()) throw FormatError(what + ": '" + key + "'[" + std::to_string(i) + "] is not a number");
    v[i] = a[i].get<double>();
    if (!std::isfinite(v[i])) throw FormatError(what + ": '" + key + "'[" + std::to_string(i) + "] is not finite");
  }
  return v;
}

}  // namespace detail

// The probes of `tower` as the metadata value "age.probes.<prefix>" holds them, or an empty
// string when a term of its passes on such inputs exceeds 1e30 (such a tower cannot be
// probed in float32; its file is written without probes).
inline std::string make_probes_json(const Tower& tower) {
  if (tower.empty())
    throw ConfigError("make_probes_json: tower: expected a tower with layers, got an empty one (default-constructed "
                      "or moved from)");
  std::string out = "{\"version\":1,\"probes\":[";
  for (std::size_t k = 0; k < probe_count(tower.input_dim()); ++k) {
    // Redraw while a hidden unit sits on the kink; keep the best of 8 draws otherwise. The
    // draws need the forward half only; the backward half runs once, for the one kept.
    detail::ProbeValues best;
    std::vector<std::vector<double>> best_active, active;
    bool have = false;
    for (std::size_t attempt = 0; attempt < 8; ++attempt) {
      detail::ProbeValues p;
      p.input.resize(tower.input_dim());
      for (std::size_t j = 0; j < p.input.size(); ++j) p.input[j] = detail::probe_input(k, attempt, j);
      detail::reference_forward(tower, p.input, p, active);
      if (!have || p.kink_margin > best.kink_margin) {
        best = std::move(p);
        best_active.swap(active);
        have = true;
      }
      if (best.kink_margin >= 1e-4) break;
    }
    detail::reference_backward(tower, best_active, best);
    if (!detail::representable_probe(best)) return {};
    if (k) out += ',';
    out += "{\"input\":";
    detail::append_array(out, best.input, 9);
    out += ",\"logit\":" + detail::probe_number(best.logit, 7);
    out += ",\"logit_scale\":" + detail::probe_number(best.logit_scale, 7);
    out += ",\"gradient\":";
    detail::append_array(out, best.gradient, 7);
    out += ",\"gradient_scale\":" + detail::probe_number(best.gradient_scale, 7) + "}";
  }
  out += "]}";
  return out;
}

// Recomputes the probes `json` (a metadata value "age.probes.<prefix>") with this build's
// float32 passes of `tower` and throws FormatError naming the file (`where`), the probe,
// the output, the computed and stored values, their difference and the allowed one when
// one is off by more than `tolerance` of its scale. FormatError also for a malformed value.
inline void verify_probes(const Tower& tower, std::string_view json, std::string_view prefix,
                          const std::string& where, double tolerance = kDefaultProbeTolerance) {
  if (!(tolerance >= 0) || !std::isfinite(tolerance))
    throw ConfigError("probe_tolerance: expected a finite value >= 0, got " + std::to_string(tolerance));
  const std::string what = where + ": metadata '" + std::string(kProbesKeyPrefix) + std::string(prefix) + "'";
  // {probes [ {input [ ] } ] } is as deep as it goes; duplicate keys and trailing bytes are
  // refused as in the header.
  const nlohmann::json j =
      detail::parse_json_strict(json, where, "metadata '" + std::string(kProbesKeyPrefix) + std::string(prefix) + "'", 4);
  if (!j.is_object()) throw FormatError(what + ": expected a JSON object");
  for (const auto& [key, value] : j.items())
    if (key != "version" && key != "probes") throw FormatError(what + ": unknown key '" + key + "'");
  if (!j.contains("version") || !j["version"].is_number_unsigned() || j["version"].get<std::uint64_t>() != 1)
    throw FormatError(what + ": 'version' must be 1");
  if (!j.contains("probes") || !j["probes"].is_array())
    throw FormatError(what + ": 'probes' must be an array");
  const auto& probes = j["probes"];
  if (probes.size() > kMaxProbes)
    throw FormatError(what + ": " + std::to_string(probes.size()) + " probes, at most " + std::to_string(kMaxProbes));

  const std::size_t dim = tower.input_dim();
  Matrix user(static_cast<Index>(tower.user_dim()), 1), items(static_cast<Index>(tower.item_dim()), 1);
  TowerWorkspace ws;
  RowVector logit(1);
  const RowVector d_logit = RowVector::Ones(1);
  Matrix d_user, d_items;
  for (std::size_t k = 0; k < probes.size(); ++k) {
    const std::string pw = detail::where_probe(where, prefix, k);
    const auto& p = probes[k];
    if (!p.is_object()) throw FormatError(pw + ": expected a JSON object");
    for (const auto& [key, value] : p.items())
      if (key != "input" && key != "logit" && key != "logit_scale" && key != "gradient" && key != "gradient_scale")
        throw FormatError(pw + ": unknown key '" + key + "'");
    const std::vector<double> input = detail::probe_vector(p, "input", dim, pw);
    const std::vector<double> gradient = detail::probe_vector(p, "gradient", dim, pw);
    const double stored = detail::probe_real(p, "logit", pw);
    const double logit_scale = detail::probe_real(p, "logit_scale", pw);
    const double gradient_scale = detail::probe_real(p, "gradient_scale", pw);
    if (logit_scale < 0 || gradient_scale < 0) throw FormatError(pw + ": scales must be >= 0");

    for (std::size_t i = 0; i < dim; ++i) {
      const auto v = static_cast<Scalar>(input[i]);
      if (i < tower.user_dim()) user(static_cast<Index>(i), 0) = v;
      else items(static_cast<Index>(i - tower.user_dim()), 0) = v;
    }
    tower.logits(user, items, nullptr, ws, logit);
    tower.forward(user, items, nullptr, ws);
    tower.backward(d_logit, user, items, ws, nullptr, tower.user_dim() ? &d_user : nullptr, &d_items);

    // The allowed difference, with a floor for a scale of 0 (a zero tower). `output` names
    // the value (element i of the gradient when i >= 0), only when it fails.
    const auto check = [&](double computed, double expected, double scale, std::ptrdiff_t i) {
      const double allowed = tolerance * scale + 1e-30;
      const double diff = std::abs(computed - expected);
      if (diff <= allowed) return;
      const std::string output = i < 0 ? std::string("logit") : "gradient[" + std::to_string(i) + "]";
      throw FormatError(pw + ": " + output + " computed " + detail::probe_number(computed, 9) + ", stored " +
                        detail::probe_number(expected, 9) + ", difference " + detail::probe_number(diff, 3) +
                        " > allowed " + detail::probe_number(allowed, 3) + " (tolerance " +
                        detail::probe_number(tolerance, 3) +
                        " of the terms' scale): the weights or the arithmetic differ from the ones the file was "
                        "written with");
    };
    check(static_cast<double>(logit[0]), stored, logit_scale, -1);
    for (std::size_t i = 0; i < dim; ++i) {
      const double computed = i < tower.user_dim()
                                  ? static_cast<double>(d_user(static_cast<Index>(i), 0))
                                  : static_cast<double>(d_items(static_cast<Index>(i - tower.user_dim()), 0));
      check(computed, gradient[i], gradient_scale, static_cast<std::ptrdiff_t>(i));
    }
  }
}

}  // namespace age
