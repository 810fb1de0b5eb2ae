// Gate policies: which candidates are explored at all ((M16), (M17), METHOD.md "Dynamic
// Gating Unit"). A closed gate (sigma = 0) leaves a candidate at exactly its base prediction.
//
// A Gate policy G for a model M (concept GatePolicy<G, M>) provides
//   typename G::Workspace                      per-thread scratch, default constructible
//   void validate() const                      throws ConfigError for a bad setting
//   g.evaluate(model, request, base, ws, open)
//       open[n] in {0, 1} for every candidate (std::span<std::uint8_t>, N), from the
//       request (embeddings, impression counts) and the no-dropout probabilities `base`.
//       Const (thread-safe) and deterministic.
// Optionally `void validate(const M& model) const`, called once when a scorer is built,
// to check the gate against the model (e.g. the DGU's input width).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/types.hpp"
#include "age/explore/request.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/tower.hpp"

namespace age {

template <class G, class M>
concept GatePolicy =
    CtrModel<M> && requires { typename G::Workspace; } && std::default_initializable<typename G::Workspace> &&
    requires(const G& g, const M& model, const Request& request, Eigen::Ref<const RowVector> base,
             typename G::Workspace& ws, std::span<std::uint8_t> open) {
      g.validate();
      g.evaluate(model, request, base, ws, open);
    };

namespace detail {
inline void check_gate_output(std::string_view gate, const Request& request, Eigen::Ref<const RowVector> base,
                              std::span<std::uint8_t> open) {
  // The message is built only on failure: this runs on every request.
  const auto n = static_cast<std::size_t>(request.size());
  if (static_cast<std::size_t>(base.size()) != n)
    throw DimensionError(mismatch(std::string(gate) + ": base length", n, static_cast<std::size_t>(base.size())));
  if (open.size() != n) throw DimensionError(mismatch(std::string(gate) + ": output length", n, open.size()));
}

// Calls g.validate(model) when the gate has one.
template <class G, class M>
void validate_against_model(const G& g, const M& model) {
  if constexpr (requires { g.validate(model); }) g.validate(model);
}
}  // namespace detail

// A DGU tower (M15): the 2-layer MLP f_dgu(h_item) = sigmoid(w2 ReLU(W1 h_item + b1) + b2)
// on the item embeddings only (no user part). Train it with OnlineTrainer::attach_item_tower.
// Its weights start at ZERO (for loading trained weights into it); a tower to be trained
// needs random weights, which the overload taking an Rng gives: with all-zero weights the
// hidden layer's gradient is zero and only the output bias would ever learn.
inline Tower make_dgu_tower(std::size_t item_dim, std::size_t hidden = 32) {
  if (hidden == 0) throw ConfigError("DGU tower: hidden: expected >= 1, got 0");
  return Tower(0, item_dim, {hidden});
}

// A DGU tower initialised like PyTorch's nn.Linear, ready to be trained.
inline Tower make_dgu_tower(std::size_t item_dim, Rng& rng, std::size_t hidden = 32) {
  Tower dgu = make_dgu_tower(item_dim, hidden);
  dgu.initialize(rng);
  return dgu;
}

// The Dynamic Gating Unit (M16):
//   sigma = 1[ f(h | theta) > f_dgu(h_item | theta_s) ]
// f_dgu estimates the item's average CTR over all users, so the gate explores a candidate
// only when this user already likes it more than the average user does: exploration is
// not wasted on items that would not win after exploring. Strict ">" by default (open in
// the paper); `open_on_equal` makes it ">=".
//
// The gate reads a Tower(0, item_dim, {hidden}) it does not own (the trainer updates it
// online); the tower must outlive the gate and is read-only here.
class DguGate {
 public:
  struct Workspace {
    TowerWorkspace tower;
    RowVector average;  // f_dgu of every candidate
    Matrix no_user = Matrix(0, 1);
  };

  DguGate() = default;
  explicit DguGate(const Tower& dgu, bool open_on_equal = false) : dgu_(&dgu), open_on_equal_(open_on_equal) {}
  DguGate(const Tower&&, bool = false) = delete;  // the gate keeps a pointer: no temporaries

  void validate() const {
    if (!dgu_) throw ConfigError("DguGate: tower: expected a trained Tower(0, item_dim, {hidden}), got none");
    if (dgu_->empty())  // checked on every request too: the tower may be moved from later
      throw ConfigError("DguGate: tower: expected a trained Tower(0, item_dim, {hidden}), got an empty one "
                        "(default-constructed or moved from)");
    detail::require_dim("DguGate: tower user_dim (it reads item embeddings only)", 0, dgu_->user_dim());
  }
  template <CtrModel M>
  void validate(const M& model) const {
    validate();
    detail::require_dim("DguGate: tower item_dim (the model's item_dim)", static_cast<std::size_t>(model.item_dim()),
                        dgu_->item_dim());
  }

  // f_dgu(h_item) of every candidate (item_dim x N) into `out` (N).
  void average_ctr(ConstMatrixRef items, Workspace& ws, Eigen::Ref<RowVector> out) const {
    validate();
    dgu_->logits(ws.no_user, items, nullptr, ws.tower, out);
    sigmoid_in_place(out);
  }

  template <CtrModel M>
  void evaluate(const M&, const Request& request, Eigen::Ref<const RowVector> base, Workspace& ws,
                std::span<std::uint8_t> open) const {
    detail::check_gate_output("DguGate", request, base, open);
    ws.average.resize(request.size());
    average_ctr(request.items, ws, ws.average);
    for (Index i = 0; i < base.size(); ++i) {
      const bool above = open_on_equal_ ? base[i] >= ws.average[i] : base[i] > ws.average[i];
      open[static_cast<std::size_t>(i)] = above ? 1 : 0;
    }
  }

  const Tower& tower() const {
    validate();
    return *dgu_;
  }
  bool open_on_equal() const noexcept { return open_on_equal_; }

 private:
  const Tower* dgu_ = nullptr;
  bool open_on_equal_ = false;
};

// Ablation: a fixed threshold instead of the DGU, open when base pCTR > threshold. The
// paper tried 0.005, 0.01 and 0.02 (all worse than the DGU).
struct FixedThresholdGate {
  double threshold = 0.01;

  void validate() const {
    if (!(threshold >= 0.0 && threshold <= 1.0))
      throw ConfigError("FixedThresholdGate.threshold: expected a probability in [0, 1], got " +
                        std::to_string(threshold));
  }

  struct Workspace {};

  template <CtrModel M>
  void evaluate(const M&, const Request& request, Eigen::Ref<const RowVector> base, Workspace&,
                std::span<std::uint8_t> open) const {
    detail::check_gate_output("FixedThresholdGate", request, base, open);
    for (Index i = 0; i < base.size(); ++i)
      open[static_cast<std::size_t>(i)] = static_cast<double>(base[i]) > threshold ? 1 : 0;
  }
};

// Open while the item has been shown fewer than `limit` times (the authors explored online
// only items with fewer than 3,000 impressions). The counts come from the caller through
// Request::impressions, one per candidate; a request without them is an InputError.
struct ImpressionCapGate {
  std::uint64_t limit = 3000;

  void validate() const {}

  struct Workspace {};

  template <CtrModel M>
  void evaluate(const M&, const Request& request, Eigen::Ref<const RowVector> base, Workspace&,
                std::span<std::uint8_t> open) const {
    detail::check_gate_output("ImpressionCapGate", request, base, open);
    if (request.impressions.size() != open.size())
      throw InputError(detail::mismatch("ImpressionCapGate: request.impressions (one count per candidate)",
                                        open.size(), request.impressions.size()));
    for (std::size_t i = 0; i < open.size(); ++i) open[i] = request.impressions[i] < limit ? 1 : 0;
  }
};

// Every candidate explored (the ablation "AGE without DGU").
struct AlwaysOpen {
  void validate() const {}

  struct Workspace {};

  template <CtrModel M>
  void evaluate(const M&, const Request& request, Eigen::Ref<const RowVector> base, Workspace&,
                std::span<std::uint8_t> open) const {
    detail::check_gate_output("AlwaysOpen", request, base, open);
    std::fill(open.begin(), open.end(), std::uint8_t{1});
  }
};

// Open only where every gate is open, e.g. AllOf<DguGate, ImpressionCapGate> as online.
// All gates are evaluated (no short cut), so a missing input is reported every time.
template <class... Gates>
class AllOf {
  static_assert(sizeof...(Gates) >= 1, "AllOf needs at least one gate");

 public:
  struct Workspace {
    std::tuple<typename Gates::Workspace...> parts;
    std::vector<std::uint8_t> scratch;
  };

  AllOf() = default;
  AllOf(Gates... gates) : gates_(std::move(gates)...) {}  // implicit: {gate_a, gate_b} works

  void validate() const {
    std::apply([](const auto&... g) { (g.validate(), ...); }, gates_);
  }
  template <CtrModel M>
  void validate(const M& model) const {
    std::apply([&](const auto&... g) { (detail::validate_against_model(g, model), ...); }, gates_);
  }

  template <CtrModel M>
    requires(GatePolicy<Gates, M> && ...)
  void evaluate(const M& model, const Request& request, Eigen::Ref<const RowVector> base, Workspace& ws,
                std::span<std::uint8_t> open) const {
    detail::check_gate_output("AllOf", request, base, open);
    std::fill(open.begin(), open.end(), std::uint8_t{1});
    ws.scratch.resize(open.size());
    evaluate_each(model, request, base, ws, open, std::index_sequence_for<Gates...>{});
  }

  template <std::size_t I>
  const auto& get() const noexcept {
    return std::get<I>(gates_);
  }

 private:
  template <class M, std::size_t... I>
  void evaluate_each(const M& model, const Request& request, Eigen::Ref<const RowVector> base, Workspace& ws,
                     std::span<std::uint8_t> open, std::index_sequence<I...>) const {
    auto one = [&](const auto& gate, auto& part) {
      gate.evaluate(model, request, base, part, std::span<std::uint8_t>(ws.scratch));
      for (std::size_t i = 0; i < open.size(); ++i) open[i] = static_cast<std::uint8_t>(open[i] & ws.scratch[i]);
    };
    (one(std::get<I>(gates_), std::get<I>(ws.parts)), ...);
  }

  std::tuple<Gates...> gates_;
};

}  // namespace age
