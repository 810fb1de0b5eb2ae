// The layers of a tower f(h | theta) ((M1); age/model/tower.hpp) as every pass reads them: the
// shape and the parameters, with the first layer split as W0 = [W_user | W_item] (M25) so that
// a request computes W_user * user once for all its candidates and the gradient with
// respect to the item part alone is W_item^T times the layer's upstream gradient.
//
//   z = w_out . a_{L-1} + b_out,   a_l = ReLU(W_l a_{l-1} + b_l),   a_{-1} = [user; item]
#pragma once

#include <cmath>
#include <cstddef>
#include <new>
#include <string>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/gemm.hpp"
#include "age/model/products.hpp"

namespace age {

// Gradients of a loss with respect to every tower parameter, shaped like the parameters.
struct TowerGradients {
  std::vector<Matrix> weights;
  std::vector<Vector> biases;
};

namespace detail {

struct TowerLayers {
  std::size_t user_dim = 0, item_dim = 0;
  std::vector<std::size_t> hidden;
  std::vector<Matrix> weights;  // layer l: out_size(l) x in_size(l)
  std::vector<Vector> biases;

  TowerLayers() = default;
  // Zero parameters of the given shape. Every size is bounded before anything is
  // allocated (and before user_dim + item_dim could overflow), so that an absurd shape is
  // an age::Error, not std::bad_alloc.
  TowerLayers(std::size_t user, std::size_t item, std::vector<std::size_t> hidden_sizes)
      : user_dim(user), item_dim(item), hidden(std::move(hidden_sizes)) {
    if (item_dim == 0) throw ConfigError("tower: item_dim: expected >= 1 (AGE perturbs the item part), got 0");
    for (std::size_t l = 0; l < hidden.size(); ++l)
      if (hidden[l] == 0) throw ConfigError("tower: hidden[" + std::to_string(l) + "]: expected >= 1 units, got 0");
    check_tensor_size("tower: user_dim", user_dim, 1);
    check_tensor_size("tower: item_dim", item_dim, 1);
    const std::size_t count = hidden.size() + 1;
    for (std::size_t l = 0; l < count; ++l)
      check_tensor_size("tower: layer " + std::to_string(l) + " weights (out x in)", out_size(l), in_size(l));
    weights.resize(count);
    biases.resize(count);
    for (std::size_t l = 0; l < count; ++l) {
      try {
        weights[l] = Matrix::Zero(static_cast<Index>(out_size(l)), static_cast<Index>(in_size(l)));
        biases[l] = Vector::Zero(static_cast<Index>(out_size(l)));
      } catch (const std::bad_alloc&) {
        throw_allocation_failed("tower: layer " + std::to_string(l) + " weights (out x in)", out_size(l), in_size(l));
      }
    }
  }

  std::size_t layers() const noexcept { return weights.size(); }  // hidden + output
  std::size_t input_dim() const noexcept { return user_dim + item_dim; }
  std::size_t in_size(std::size_t l) const noexcept { return l == 0 ? input_dim() : hidden[l - 1]; }
  std::size_t out_size(std::size_t l) const noexcept { return l < hidden.size() ? hidden[l] : 1; }
  Index du() const noexcept { return static_cast<Index>(user_dim); }
  Index di() const noexcept { return static_cast<Index>(item_dim); }
  auto w_user() const { return weights[0].leftCols(du()); }
  auto w_item() const { return weights[0].rightCols(di()); }

  // PyTorch's nn.Linear default: W and b uniform in +-1/sqrt(fan_in).
  void initialize(Rng& rng) {
    for (std::size_t l = 0; l < weights.size(); ++l) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in_size(l)));
      for (Index i = 0; i < weights[l].size(); ++i) weights[l].data()[i] = static_cast<Scalar>(rng.uniform(-bound, bound));
      for (Index i = 0; i < biases[l].size(); ++i) biases[l].data()[i] = static_cast<Scalar>(rng.uniform(-bound, bound));
    }
  }

  // Whether every hidden layer runs on the product kernel (at least one vector of units):
  // then a request's first pass takes the form that writes no ReLU (request_passes.hpp).
  bool all_hidden_on_kernel() const noexcept {
    if (hidden.empty()) return false;
    for (std::size_t l = 0; l < hidden.size(); ++l)
      if (weights[l].rows() < simd::kWidth) return false;
    return true;
  }

  // pre = b_l 1^T + W_l a for layer l >= 1: the product kernel, or Eigen's product for a
  // layer narrower than one vector (the output logit), where the kernel would fall back
  // to one scalar dot product per candidate. With `act` (pre's shape), also
  // act = ReLU(pre), in the same pass on the kernel.
  void layer_product(std::size_t l, ConstMatrixRef a, MatrixRef pre, MatrixRef* act = nullptr) const {
    if (weights[l].rows() >= simd::kWidth) {
      gemm_from_column(pre, biases[l], weights[l], a, act ? also_relu(*act) : gemm_kernel::Finish{});
      return;
    }
    pre.colwise() = biases[l];
    multiply_add(pre, weights[l], a);
    if (act) *act = pre.cwiseMax(Scalar(0));
  }
};

}  // namespace detail
}  // namespace age
