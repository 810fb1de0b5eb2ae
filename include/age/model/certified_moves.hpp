// Certified linear moves ((M27), METHOD.md "How the library evaluates the formulas"). A
// ReLU network is linear between two points where no hidden unit changes sign, so for a
// move dh of the item part that provably flips no unit,
//   logit(h + dh) = logit(h) + d logit/d items . dh        (exactly, up to float rounding)
// and the moved pass (two matrix products per candidate) can be skipped; PGD's gradient at
// h + dh is then the one at h, and FGM's move along the normalised gradient scores
// logit(h) + length ||d logit/d items||. The proof is a radius per candidate: with
//   |delta pre0_j| <= ||W_item[j, :]|| ||dh||,  ||delta a_l|| <= ||delta pre_l|| (ReLU is
//   1-Lipschitz),  |delta pre_l[o]| <= ||W_l[o, :]|| ||delta a_{l-1}||,
//   ||delta pre_l|| <= ||W_l||_F ||delta a_{l-1}||,
// no unit flips while ||dh|| < r = min over hidden units of |pre| / bound (the bounds are
// TowerTables::inverse_move_bound), with a 1% margin for float rounding. At exploration's
// move sizes (lambda' |delta_y| ~ 1e-5 .. 1e-3 in embedding units) nearly every candidate
// is certified; the rest run the moved pass in full (request_passes.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/tower_tables.hpp"

namespace age::detail {

// The margin for the rounding of the pre-activations and of the bounds.
inline constexpr Scalar kRadiusMargin = Scalar(0.99);

// r[n] = min(r[n], |pre_l| / bound over the units of hidden layers first <= l < last) for
// the r.size() candidates, candidate n in column columns[n] (nullptr: n) of `pre_of`.
inline void fold_smallest_ratios(const TowerTables& tables, const std::vector<Matrix>& pre_of, const Index* columns,
                                 std::size_t first, std::size_t last, Eigen::Ref<RowVector> r) {
  if (first >= last) return;
  for (Index n = 0; n < r.size(); ++n) {
    const Index c = columns ? columns[n] : n;
    simd::Vec smallest = simd::broadcast(r[n]);
    Scalar tail = r[n];
    for (std::size_t l = first; l < last; ++l) {
      const Scalar* pre = pre_of[l].col(c).data();
      const Scalar* inv = tables.inverse_move_bound[l].data();
      const Index h = pre_of[l].rows();
      Index i = 0;
      for (; i + simd::kWidth <= h; i += simd::kWidth) {
        const simd::Vec p = simd::load(pre + i);
        const simd::Vec v = simd::abs(p) * simd::load(inv + i);
        smallest = simd::min(smallest, v);
      }
      for (; i < h; ++i) tail = std::min(tail, std::abs(pre[i]) * inv[i]);
    }
    r[n] = std::min(tail, simd::min_lanes(smallest));
  }
}

// The certified radius of each candidate of a cached pass (`hidden` hidden layers),
// candidate n in column columns[n] (nullptr: n); +inf without hidden layers.
inline void certified_radius(const TowerTables& tables, const std::vector<Matrix>& pre, const Index* columns,
                             std::size_t hidden, Eigen::Ref<RowVector> r) {
  r.setConstant(std::numeric_limits<Scalar>::infinity());
  fold_smallest_ratios(tables, pre, columns, 0, hidden, r);
  r *= kRadiusMargin;
}

// ||u||^2 of one candidate's unit gradient u (d logit / d items), in the vector order the
// one-pass FGM shortcut uses.
inline Scalar squared_norm(const Scalar* u, Index size) noexcept {
  simd::Vec sum = simd::zero();
  Index i = 0;
  for (; i + simd::kWidth <= size; i += simd::kWidth) {
    const simd::Vec v = simd::load(u + i);
    sum += v * v;
  }
  Scalar squared = simd::sum_lanes(sum);
  for (; i < size; ++i) squared += u[i] * u[i];
  return squared;
}

}  // namespace age::detail
