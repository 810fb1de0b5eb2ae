// Optimizers for dense parameters (tower weights) and for sparse embedding rows.
//
// An optimizer is a small value type (its settings) with one update rule for a contiguous
// block of parameters; the `Optimizer` concept below states what it must provide. The
// library ships Sgd, Adagrad and Adam, each following PyTorch's torch.optim update rule
// with the same defaults, so that hyper-parameters carry over from PyTorch training code.
// The optimizer STATE (moments, step counters) lives outside it in ParameterState, one per
// tensor or table, so one settings value can drive many parameters and many models.
//
// Sparse rows (embedding tables): only the rows a batch used are updated, and each row
// keeps its own moments AND its own step counter, which advances only when the row is
// updated ("lazy" Adam/Adagrad). A row seen for the first time at global step 10,000 then
// gets exactly the update a fresh dense Adam would give it (bias correction for t = 1),
// whereas a global step counter (PyTorch's SparseAdam) would make that first move
// (1 - beta1) / sqrt(1 - beta2) ~ 3.2 times larger than lr. Rows never used keep their
// values and their state bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/types.hpp"
#include "age/model/tower.hpp"

namespace age {

using ArrayMap = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
using ConstArrayMap = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;

// The Optimizer policy. A type O models it when:
//   O::name                          a short name for messages ("adam")
//   o.validate()                     throws ConfigError naming a setting that is out of range
//   o.state_slots()                  how many state arrays (0, 1 or 2) a parameter needs
//   o.apply(p, g, s1, s2, t)         updates the block p in place from its gradient g, with
//                                    state arrays s1, s2 (same length as p; zero before the
//                                    first update; unused ones have length 0) and the
//                                    block's 1-based step count t (already advanced).
template <class O>
concept Optimizer = std::copy_constructible<O> &&
    requires(const O& o, ArrayMap p, ConstArrayMap g, ArrayMap s, std::int64_t t) {
      { O::name } -> std::convertible_to<std::string_view>;
      o.validate();
      { o.state_slots() } -> std::convertible_to<int>;
      o.apply(p, g, s, s, t);
    };

namespace detail {
inline void require_positive(std::string_view opt, std::string_view setting, double v) {
  check_scale(std::string(opt) + ": " + std::string(setting), v, /*positive=*/true);
}
inline void require_unit_interval(std::string_view opt, std::string_view setting, double v) {
  if (!(v >= 0.0 && v < 1.0))
    throw ConfigError(std::string(opt) + ": " + std::string(setting) + ": expected a value in [0, 1), got " +
                      std::to_string(v));
}
}  // namespace detail

// torch.optim.SGD (dampening 0, no Nesterov, no weight decay):
//   momentum = 0:  p -= lr * g
//   momentum > 0:  b = g (first step), b = momentum * b + g (later);  p -= lr * b
struct Sgd {
  static constexpr std::string_view name = "sgd";
  double lr = 0.01;
  double momentum = 0.0;

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_unit_interval(name, "momentum", momentum);
  }
  int state_slots() const noexcept { return momentum > 0.0 ? 1 : 0; }
  void apply(ArrayMap p, ConstArrayMap g, ArrayMap buf, ArrayMap, std::int64_t t) const {
    const Scalar a = static_cast<Scalar>(lr);
    if (momentum > 0.0) {
      if (t == 1)
        buf = g;
      else
        buf = static_cast<Scalar>(momentum) * buf + g;
      p -= a * buf;
    } else {
      p -= a * g;
    }
  }
};

// torch.optim.Adagrad (initial accumulator 0, no weight decay):
//   lr_t = lr / (1 + (t - 1) * lr_decay);  s += g^2;  p -= lr_t * g / (sqrt(s) + eps)
struct Adagrad {
  static constexpr std::string_view name = "adagrad";
  double lr = 0.01;
  double lr_decay = 0.0;
  double eps = 1e-10;

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::check_scale("adagrad: lr_decay", lr_decay, /*positive=*/false);
    detail::require_positive(name, "eps", eps);
  }
  int state_slots() const noexcept { return 1; }
  void apply(ArrayMap p, ConstArrayMap g, ArrayMap sum, ArrayMap, std::int64_t t) const {
    const Scalar clr = static_cast<Scalar>(lr / (1.0 + static_cast<double>(t - 1) * lr_decay));
    sum += g.square();
    p -= clr * g / (sum.sqrt() + static_cast<Scalar>(eps));
  }
};

// torch.optim.Adam (no weight decay, no amsgrad), with bias correction:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
struct Adam {
  static constexpr std::string_view name = "adam";
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;

  void validate() const {
    detail::require_positive(name, "lr", lr);
    detail::require_unit_interval(name, "beta1", beta1);
    detail::require_unit_interval(name, "beta2", beta2);
    detail::require_positive(name, "eps", eps);
  }
  int state_slots() const noexcept { return 2; }
  void apply(ArrayMap p, ConstArrayMap g, ArrayMap m, ArrayMap v, std::int64_t t) const {
    const double tt = static_cast<double>(t);
    const Scalar step_size = static_cast<Scalar>(lr / (1.0 - std::pow(beta1, tt)));
    const Scalar bc2_sqrt = static_cast<Scalar>(std::sqrt(1.0 - std::pow(beta2, tt)));
    // 1 - beta in double first: 1 - 0.999f in float is off by 1e-5 relative.
    const Scalar b1 = static_cast<Scalar>(beta1), b2 = static_cast<Scalar>(beta2);
    const Scalar c1 = static_cast<Scalar>(1.0 - beta1), c2 = static_cast<Scalar>(1.0 - beta2);
    m = b1 * m + c1 * g;
    v = b2 * v + c2 * g.square();
    p -= step_size * m / (v.sqrt() / bc2_sqrt + static_cast<Scalar>(eps));
  }
};

static_assert(Optimizer<Sgd> && Optimizer<Adagrad> && Optimizer<Adam>);

// Optimizer state of one dense tensor (steps has one entry) or of one embedding table
// (dim x rows; steps has one entry per row). Allocated on the first update.
struct ParameterState {
  Matrix s1, s2;
  std::vector<std::int64_t> steps;

  bool initialized() const noexcept { return !steps.empty(); }
};

namespace detail {
template <Optimizer O>
void prepare_state(const O& opt, ParameterState& st, Index rows, Index cols, std::size_t counters) {
  if (st.initialized()) {
    if (st.steps.size() != counters || (opt.state_slots() >= 1 && (st.s1.rows() != rows || st.s1.cols() != cols)))
      throw DimensionError("optimizer state: shape " + std::to_string(st.s1.rows()) + "x" +
                           std::to_string(st.s1.cols()) + " does not fit a parameter of shape " +
                           std::to_string(rows) + "x" + std::to_string(cols));
    return;
  }
  const int slots = opt.state_slots();
  st.s1 = slots >= 1 ? Matrix::Zero(rows, cols) : Matrix();
  st.s2 = slots >= 2 ? Matrix::Zero(rows, cols) : Matrix();
  st.steps.assign(counters, 0);
}

inline ArrayMap slot_block(Matrix& s, Index offset, Index n) {
  return s.size() == 0 ? ArrayMap(nullptr, 0) : ArrayMap(s.data() + offset, n);
}
}  // namespace detail

// One optimizer step on a dense parameter (Matrix or Vector) from its gradient.
template <Optimizer O, class Param, class Grad>
void update_dense(const O& opt, Param&& param, const Grad& grad, ParameterState& st) {
  const Index n = param.size();
  detail::require_dim(std::string(O::name) + ": gradient size", static_cast<std::size_t>(n),
                      static_cast<std::size_t>(grad.size()));
  detail::prepare_state(opt, st, param.rows(), param.cols(), 1);
  const std::int64_t t = ++st.steps[0];
  opt.apply(ArrayMap(param.data(), n), ConstArrayMap(grad.data(), n), detail::slot_block(st.s1, 0, n),
            detail::slot_block(st.s2, 0, n), t);
}

// The gradient of one embedding table restricted to the rows a batch used: row index ->
// dim-long gradient column, summed over every use of the row in the batch. Keeps its
// storage across reset() so a training loop stops allocating once warmed up.
class SparseRowGradient {
 public:
  void reset(Index dim) {
    dim_ = dim;
    rows_.clear();
    slot_.clear();
  }

  Index dim() const noexcept { return dim_; }
  std::size_t size() const noexcept { return rows_.size(); }
  bool empty() const noexcept { return rows_.empty(); }
  // The k-th used row (in order of first use) and its gradient.
  std::size_t row(std::size_t k) const { return rows_.at(k); }
  auto gradient(std::size_t k) const { return values_.col(static_cast<Index>(k)); }

  // Gradient of `row`, or nullptr when the batch did not use it.
  const Scalar* find(std::size_t row) const {
    const auto it = slot_.find(row);
    return it == slot_.end() ? nullptr : values_.col(static_cast<Index>(it->second)).data();
  }

  // Adds scale * g to the gradient of `row`.
  template <class G>
  void add(std::size_t row, const G& g, Scalar scale = Scalar(1)) {
    detail::require_dim("sparse row gradient: length", static_cast<std::size_t>(dim_),
                        static_cast<std::size_t>(g.size()));
    auto [it, inserted] = slot_.try_emplace(row, rows_.size());
    if (inserted) {
      rows_.push_back(row);
      if (values_.rows() != dim_ || static_cast<Index>(rows_.size()) > values_.cols())
        values_.conservativeResize(dim_, std::max<Index>(16, 2 * static_cast<Index>(rows_.size())));
      values_.col(static_cast<Index>(it->second)).setZero();
    }
    values_.col(static_cast<Index>(it->second)) += scale * g;
  }

 private:
  Index dim_ = 0;
  std::vector<std::size_t> rows_;
  Matrix values_;  // dim x capacity; column k is the gradient of rows_[k]
  std::unordered_map<std::size_t, std::size_t> slot_;
};

// One optimizer step on the used rows of an embedding table (dim x rows, one row per
// column). Each row's step counter advances only here (lazy update, see the top of file).
template <Optimizer O>
void update_rows(const O& opt, Matrix& table, const SparseRowGradient& grad, ParameterState& st) {
  if (grad.empty()) return;
  detail::require_dim(std::string(O::name) + ": embedding gradient length (table dim)",
                      static_cast<std::size_t>(table.rows()), static_cast<std::size_t>(grad.dim()));
  detail::prepare_state(opt, st, table.rows(), table.cols(), static_cast<std::size_t>(table.cols()));
  const Index d = table.rows();
  for (std::size_t k = 0; k < grad.size(); ++k) {
    const std::size_t r = grad.row(k);
    if (r >= static_cast<std::size_t>(table.cols()))
      throw DimensionError("embedding gradient: row " + std::to_string(r) + " is out of range: expected < " +
                           std::to_string(table.cols()) + " (rows of the table)");
    const Index off = static_cast<Index>(r) * d;
    const std::int64_t t = ++st.steps[r];
    opt.apply(ArrayMap(table.data() + off, d), ConstArrayMap(grad.gradient(k).data(), d),
              detail::slot_block(st.s1, off, d), detail::slot_block(st.s2, off, d), t);
  }
}

// An optimizer together with the state of every parameter of one Tower.
template <Optimizer O>
class TowerOptimizer {
 public:
  explicit TowerOptimizer(O opt = O{}) : opt_(std::move(opt)) { opt_.validate(); }

  const O& optimizer() const noexcept { return opt_; }

  // One step on every weight and bias of `tower` from gradients shaped like them.
  void update(Tower& tower, const TowerGradients& grads) {
    const std::size_t layers = tower.num_layers();
    detail::require_dim(std::string(O::name) + ": number of weight gradients", layers, grads.weights.size());
    detail::require_dim(std::string(O::name) + ": number of bias gradients", layers, grads.biases.size());
    weights_.resize(layers);
    biases_.resize(layers);
    Tower::Edit edit = tower.edit();  // the tower's tables are rebuilt once, at the end
    for (std::size_t l = 0; l < layers; ++l) {
      update_dense(opt_, edit.weight(l), grads.weights[l], weights_[l]);
      update_dense(opt_, edit.bias(l), grads.biases[l], biases_[l]);
    }
  }

  void reset() {
    weights_.clear();
    biases_.clear();
  }

 private:
  O opt_;
  std::vector<ParameterState> weights_, biases_;
};

}  // namespace age
