// Small models with known answers for the exploration tests, and an independent
// finite-difference reference for input gradients.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <utility>

#include "age/core/types.hpp"
#include "age/explore/engine.hpp"
#include "age/explore/perturbation.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/dropout.hpp"
#include "age/model/tower.hpp"

namespace age::test {

// A curved CtrModel without dropout: z = b.x + 0.5 x' A x + c.u, on item x and user u.
// Its probability gradient is analytic: dy/dx = y (1 - y) (b + A x), dy/du = y (1 - y) c.
struct QuadraticModel {
  using Mask = NoDropout;
  struct Workspace {
    RowVector z;
  };

  Vector b, c;
  Matrix a;  // symmetric

  std::size_t user_dim() const { return static_cast<std::size_t>(c.size()); }
  std::size_t item_dim() const { return static_cast<std::size_t>(b.size()); }

  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask*, Workspace&, Eigen::Ref<RowVector> out) const {
    for (Index n = 0; n < items.cols(); ++n) {
      const auto x = items.col(n);
      const auto u = user.col(user.cols() == 1 ? 0 : n);
      out[n] = b.dot(x) + Scalar(0.5) * x.dot(a * x) + c.dot(u);
    }
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    logits(user, items, mask, ws, prob);
    const Index n = items.cols();
    if (d_items) d_items->resize(items.rows(), n);
    if (d_user) d_user->resize(user.rows(), n);
    for (Index i = 0; i < n; ++i) {
      prob[i] = sigmoid(prob[i]);
      const Scalar s = prob[i] * (1 - prob[i]);
      if (d_items) d_items->col(i) = s * (b + a * items.col(i));
      if (d_user) d_user->col(i) = s * c;
    }
  }
};

// A dropout-capable curved model whose passes allocate nothing once sized:
//   z = sum_j m_j (b_j x_j + 0.5 a_j x_j^2) + c.u
// with a dropout mask m on its per-coordinate weights (theta), 1 or N columns.
struct MaskedQuadraticModel {
  using Mask = DropoutMask;
  struct Workspace {};

  Vector b, a, c;
  std::array<std::size_t, 1> mask_sizes{};

  MaskedQuadraticModel(Vector b_, Vector a_, Vector c_)
      : b(std::move(b_)), a(std::move(a_)), c(std::move(c_)), mask_sizes{static_cast<std::size_t>(b.size())} {}

  std::size_t user_dim() const { return static_cast<std::size_t>(c.size()); }
  std::size_t item_dim() const { return static_cast<std::size_t>(b.size()); }

  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace&, Eigen::Ref<RowVector> out) const {
    for (Index n = 0; n < items.cols(); ++n) {
      Scalar z = c.dot(user.col(user.cols() == 1 ? 0 : n));
      for (Index j = 0; j < items.rows(); ++j) {
        const Scalar x = items(j, n);
        z += weight(mask, j, n) * (b[j] * x + Scalar(0.5) * a[j] * x * x);
      }
      out[n] = z;
    }
  }
  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user) const {
    logits(user, items, mask, ws, prob);
    const Index n = items.cols();
    if (d_items) d_items->resize(items.rows(), n);
    if (d_user) d_user->resize(user.rows(), n);
    for (Index i = 0; i < n; ++i) {
      prob[i] = sigmoid(prob[i]);
      const Scalar s = prob[i] * (1 - prob[i]);
      if (d_items)
        for (Index j = 0; j < items.rows(); ++j) (*d_items)(j, i) = s * weight(mask, j, i) * (b[j] + a[j] * items(j, i));
      if (d_user) d_user->col(i) = s * c;
    }
  }
  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const {
    sample_dropout_mask(mask_sizes, p, columns, rng, mask);
  }

 private:
  static Scalar weight(const Mask* mask, Index j, Index n) {
    if (!mask || mask->empty()) return Scalar(1);
    const Matrix& m = mask->layers[0];
    return m(j, m.cols() == 1 ? 0 : n);
  }
};

// Probability of candidate n alone, computed in a one-column call (the reference path).
template <CtrModel M>
double probability_of(const M& model, const Matrix& user, const Matrix& items, Index n) {
  typename M::Workspace ws;
  RowVector out(1);
  const Matrix u = user.cols() == 1 ? user : Matrix(user.col(n));
  const Matrix x = items.col(n);
  model.logits(u, x, nullptr, ws, out);
  return 1.0 / (1.0 + std::exp(-static_cast<double>(out[0])));
}

// Central differences of candidate n's probability with respect to its item embedding
// (and, when `user_too`, to its user vector, stacked below), one coordinate at a time.
template <CtrModel M>
Vector fd_probability_gradient(const M& model, const Matrix& user, const Matrix& items, Index n, double h,
                               bool user_too = false) {
  const Index di = items.rows(), du = user.rows();
  Vector g(di + (user_too ? du : 0));
  Matrix x = items.col(n);
  Matrix u = user.cols() == 1 ? user : Matrix(user.col(n));
  for (Index j = 0; j < di; ++j) {
    const Scalar keep = x(j, 0);
    x(j, 0) = keep + static_cast<Scalar>(h);
    const double plus = probability_of(model, u, x, 0);
    x(j, 0) = keep - static_cast<Scalar>(h);
    const double minus = probability_of(model, u, x, 0);
    x(j, 0) = keep;
    g[j] = static_cast<Scalar>((plus - minus) / (2 * h));
  }
  if (user_too)
    for (Index j = 0; j < du; ++j) {
      const Scalar keep = u(j, 0);
      u(j, 0) = keep + static_cast<Scalar>(h);
      const double plus = probability_of(model, u, x, 0);
      u(j, 0) = keep - static_cast<Scalar>(h);
      const double minus = probability_of(model, u, x, 0);
      u(j, 0) = keep;
      g[di + j] = static_cast<Scalar>((plus - minus) / (2 * h));
    }
  return g;
}

// A perturbation policy's step on one request outside the scorer: the no-dropout
// probabilities the engine's first pass gave, and the explored ones. On the plain engine
// (the default of plain_move) the policy always leaves its move in ws.d_items / ws.d_user.
struct Explored {
  RowVector base, explored;
  bool moved = false;  // some radius lambda' |delta_n| is > 0
};
template <class E, class P, CtrModel M>
Explored explore_on(const P& policy, const M& model, const Matrix& user, const Matrix& items,
                    const RowVector& delta, Rng& rng, MoveWorkspace& ws) {
  RequestSession<M, E> session(model, Request{user, items});
  Explored out{session.base(), RowVector(items.cols()), false};
  policy.explore(session.engine(), session.base(), delta, rng, ws, out.explored);
  out.moved = (ws.radius.head(items.cols()).array() > 0).any();
  return out;
}
template <class P, CtrModel M>
Explored plain_move(const P& policy, const M& model, const Matrix& user, const Matrix& items, const RowVector& delta,
                    Rng& rng, MoveWorkspace& ws) {
  return explore_on<PlainEngine<M>>(policy, model, user, items, delta, rng, ws);
}
template <class P, CtrModel M>
Explored explore(const P& policy, const M& model, const Matrix& user, const Matrix& items, const RowVector& delta,
                 Rng& rng, MoveWorkspace& ws) {
  return explore_on<DefaultEngine<M>>(policy, model, user, items, delta, rng, ws);
}

// An uncertainty policy's step on one request outside the scorer, with the given `base`
// (the default engine; ws is U::Workspace<DefaultEngine<M>>).
template <class M>
using EngineOf = DefaultEngine<M>;
template <class U, CtrModel M, class W>
void compute_uncertainty(const U& u, const M& model, ConstMatrixRef user, ConstMatrixRef items,
                         Eigen::Ref<const RowVector> base, Rng& rng, W& ws, Eigen::Ref<RowVector> delta) {
  RequestSession<M> session(model, Request{user, items});
  u.compute(session.engine(), base, rng, ws, delta);
}

inline double cosine(const Vector& a, const Vector& b) {
  return static_cast<double>(a.dot(b)) / (static_cast<double>(a.norm()) * static_cast<double>(b.norm()));
}

}  // namespace age::test
