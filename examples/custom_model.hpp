// Two CTR models written OUTSIDE the library, as a service would have them, made
// explorable by AGE (used by examples/custom_model.cpp and by its test).
//
// 1. FactorizationMachine: a model with its own analytic input gradient. It satisfies
//    age::CtrModel directly: logits, probability_gradient, and dropout masks on its latent
//    factors (part of theta, never the embeddings), so MC-Dropout uncertainty works on it.
// 2. LegacyEngine: a black box that only computes logits (an inference engine without
//    autodiff). Its dropout is driven by a seed it is handed. age::FiniteDifferenceModel
//    gives it the gradient AGE needs.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"
#include "age/model/tower.hpp"

namespace example {

// z = w0 + w_u.u + w_i.x + sum_f m_f (V_u u)_f (V_i x)_f
// for a user vector u, an item vector x and k latent factors: the factorization machine's
// pairwise user-item term <V_u u, V_i x>, with a dropout mask m over the factors
// (m_f in {0, 1/(1-p)}; no mask = all ones).
class FactorizationMachine {
 public:
  using Mask = age::DropoutMask;  // one "layer" of k factors, 1 or N columns
  struct Workspace {
    age::Matrix mpu;  // m .* V_u u, k x N
    age::Matrix pi;   // V_i x, k x N (then m .* V_i x for the user gradient)
  };

  FactorizationMachine(std::size_t user_dim, std::size_t item_dim, std::size_t factors, std::uint64_t seed)
      : w_user_(static_cast<age::Index>(user_dim)),
        w_item_(static_cast<age::Index>(item_dim)),
        v_user_(static_cast<age::Index>(factors), static_cast<age::Index>(user_dim)),
        v_item_(static_cast<age::Index>(factors), static_cast<age::Index>(item_dim)),
        factors_{factors} {
    age::Rng rng(seed);
    auto fill = [&rng](auto& m, double sd) {
      for (age::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<age::Scalar>(rng.normal(0.0, sd));
    };
    fill(w_user_, 0.1);
    fill(w_item_, 0.1);
    fill(v_user_, 0.5);
    fill(v_item_, 0.5);
  }

  std::size_t user_dim() const { return static_cast<std::size_t>(w_user_.size()); }
  std::size_t item_dim() const { return static_cast<std::size_t>(w_item_.size()); }

  void logits(age::ConstMatrixRef user, age::ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<age::RowVector> out) const {
    const age::Index n = items.cols();
    // mpu = m .* (V_u u), one column per candidate; pi = V_i x.
    ws.mpu.resize(v_user_.rows(), n);
    if (user.cols() == 1)
      ws.mpu.colwise() = v_user_ * user.col(0);
    else
      ws.mpu.noalias() = v_user_ * user;
    apply_mask(mask, ws.mpu);
    ws.pi.resize(v_item_.rows(), n);
    ws.pi.noalias() = v_item_ * items;

    out.noalias() = w_item_.transpose() * items;
    if (user.cols() == 1) {
      out.array() += w0_ + w_user_.dot(user.col(0));
    } else {
      out.noalias() += w_user_.transpose() * user;
      out.array() += w0_;
    }
    out += ws.mpu.cwiseProduct(ws.pi).colwise().sum();
  }

  // dz/dx = w_i + V_i' (m .* V_u u),  dz/du = w_u + V_u' (m .* V_i x),  dy/dh = y (1 - y) dz/dh.
  void probability_gradient(age::ConstMatrixRef user, age::ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<age::RowVector> prob, age::Matrix* d_items, age::Matrix* d_user) const {
    logits(user, items, mask, ws, prob);
    for (age::Index i = 0; i < prob.size(); ++i) prob[i] = age::sigmoid(prob[i]);
    if (d_items) {
      d_items->resize(items.rows(), items.cols());
      d_items->noalias() = v_item_.transpose() * ws.mpu;
      d_items->colwise() += w_item_;
      scale_columns(prob, *d_items);
    }
    if (d_user) {
      apply_mask(mask, ws.pi);  // pi is not needed any more in its unmasked form
      d_user->resize(user.rows(), items.cols());
      d_user->noalias() = v_user_.transpose() * ws.pi;
      d_user->colwise() += w_user_;
      scale_columns(prob, *d_user);
    }
  }

  void sample_mask(double p, age::Index columns, age::Rng& rng, Mask& mask) const {
    age::sample_dropout_mask(factors_, p, columns, rng, mask);
  }

 private:
  static void apply_mask(const Mask* mask, age::Matrix& x) {
    if (!mask || mask->empty()) return;
    const age::Matrix& m = mask->layers[0];
    if (m.cols() == 1)
      x.array().colwise() *= m.col(0).array();
    else
      x.array() *= m.array();
  }
  static void scale_columns(Eigen::Ref<const age::RowVector> prob, age::Matrix& d) {
    for (age::Index i = 0; i < d.cols(); ++i) d.col(i) *= prob[i] * (1 - prob[i]);
  }

  age::Scalar w0_ = -1.0f;
  age::Vector w_user_, w_item_;
  age::Matrix v_user_, v_item_;
  std::array<std::size_t, 1> factors_;
};

// A black box: z = sum_h v_h * keep_h * tanh(a_h . [u; x] + c_h) + b, evaluated one
// candidate at a time, with no gradient. It can run with dropout on its hidden units
// (theta) from a seed it is handed, as an inference engine with a "dropout seed" input
// would; the same seed gives the same units dropped.
class LegacyEngine {
 public:
  struct Mask {
    std::uint64_t seed = 0;
    double rate = 0.0;
    bool per_candidate = false;
  };
  struct Workspace {
    age::Vector input;
  };

  LegacyEngine(std::size_t user_dim, std::size_t item_dim, std::size_t hidden, std::uint64_t seed)
      : user_dim_(user_dim), item_dim_(item_dim),
        a_(static_cast<age::Index>(hidden), static_cast<age::Index>(user_dim + item_dim)),
        c_(static_cast<age::Index>(hidden)), v_(static_cast<age::Index>(hidden)) {
    age::Rng rng(seed);
    for (age::Index i = 0; i < a_.size(); ++i) a_.data()[i] = static_cast<age::Scalar>(rng.normal(0.0, 0.5));
    for (age::Index i = 0; i < c_.size(); ++i) c_[i] = static_cast<age::Scalar>(rng.normal(0.0, 0.5));
    for (age::Index i = 0; i < v_.size(); ++i) v_[i] = static_cast<age::Scalar>(rng.normal(0.0, 1.0));
  }

  std::size_t user_dim() const { return user_dim_; }
  std::size_t item_dim() const { return item_dim_; }

  void logits(age::ConstMatrixRef user, age::ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<age::RowVector> out) const {
    const age::Index du = static_cast<age::Index>(user_dim_);
    ws.input.resize(du + items.rows());
    for (age::Index n = 0; n < items.cols(); ++n) {
      ws.input << user.col(user.cols() == 1 ? 0 : n), items.col(n);
      double z = -0.5;
      for (age::Index h = 0; h < v_.size(); ++h)
        z += v_[h] * keep(mask, h, n) * std::tanh(static_cast<double>(a_.row(h).dot(ws.input) + c_[h]));
      out[n] = static_cast<age::Scalar>(z);
    }
  }

  void sample_mask(double p, age::Index columns, age::Rng& rng, Mask& mask) const {
    mask = Mask{rng(), p, columns != 1};
  }

 private:
  // 0 or 1 / (1 - p), a pure function of (seed, unit, candidate).
  static double keep(const Mask* mask, age::Index h, age::Index n) {
    if (!mask || mask->rate == 0.0) return 1.0;
    const std::uint64_t key = mask->seed ^ (static_cast<std::uint64_t>(h) * 0x9E3779B97F4A7C15ULL) ^
                              (mask->per_candidate ? age::detail::mix64(static_cast<std::uint64_t>(n) + 1) : 0);
    const double u = static_cast<double>(age::detail::mix64(key) >> 11) * 0x1.0p-53;
    return u < mask->rate ? 0.0 : 1.0 / (1.0 - mask->rate);
  }

  std::size_t user_dim_, item_dim_;
  age::Matrix a_;
  age::Vector c_, v_;
};

}  // namespace example
