// The tower's products that are not a layer of candidates times a weight matrix wide
// enough for the kernel's blocks -- the output logit (one row of weights), the user part
// of the first layer, the parameter gradients of training -- all on the tower's own kernel
// (age/model/gemm.hpp) or on one vectorised dot product per column:
//   multiply(y, a, b)            y  = a b
//   multiply_add(y, a, b)        y += a b
//   multiply_nt(y, a, b, bt)     y  = a b^T   (bt: scratch for b^T)
// Eigen's general product is not used anywhere in the tower: it instantiates its whole
// GEMM machinery (packing, block kernels, the matrix-vector fallback) for every distinct
// pair of operand types, which was most of the compile time of a translation unit that
// includes age, and it packs the weight matrix again on every call.
#pragma once

#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/gemm.hpp"

namespace age::detail {

// sum_i a[i] b[i] over n floats, kWidth at a time, then the tail.
inline Scalar dot(const Scalar* a, const Scalar* b, Index n) noexcept {
  simd::Vec sum = simd::zero();
  Index i = 0;
  for (; i + simd::kWidth <= n; i += simd::kWidth) sum += simd::load(a + i) * simd::load(b + i);
  Scalar tail = simd::sum_lanes(sum);
  for (; i < n; ++i) tail += a[i] * b[i];
  return tail;
}

// y (+)= a b. A contiguous row a (the output layer's weights) is one dot product per
// column of b; anything else runs on the kernel, whose scalar tails serve the rows past its
// last whole vector.
inline void multiply_into(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b, bool add) noexcept {
  if (a.rows() == 1 && (a.cols() == 1 || a.outerStride() == 1)) {
    for (Index n = 0; n < b.cols(); ++n) {
      const Scalar v = dot(a.data(), b.col(n).data(), a.cols());
      y(0, n) = add ? y(0, n) + v : v;
    }
    return;
  }
  if (add)
    gemm_add(y, a, b);
  else
    gemm_assign(y, a, b);
}
inline void multiply(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) noexcept {
  multiply_into(y, a, b, false);
}
inline void multiply_add(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) noexcept {
  multiply_into(y, a, b, true);
}
// y = a b^T, through a copy of b^T in `bt` (the kernel reads its right operand column by
// column).
inline void multiply_nt(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b, Matrix& bt) {
  bt = b.transpose();
  multiply(y, a, bt);
}

}  // namespace age::detail
