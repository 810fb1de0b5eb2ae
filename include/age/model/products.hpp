// The few products of the tower that its own kernel (age/model/gemm.hpp) does not serve --
// layers narrower than one vector, the user part of the first layer, the parameter
// gradients of training -- in exactly three forms of Eigen's product, all on Eigen::Ref
// operands:
//   multiply(y, a, b)      y  = a b       multiply_add(y, a, b)      y += a b
//   multiply_tn(y, a, b)   y  = a^T b     multiply_nt(y, a, b)       y  = a b^T
// Eigen instantiates its whole GEMM machinery (packing, block kernels, the matrix-vector
// fallback) for every distinct pair of operand types; written as blocks, transposes and
// Refs of different shapes, the tower's products instantiated it about fifteen times,
// which was most of the compile time of a translation unit that includes age. A vector
// operand (one column) takes Eigen's matrix-vector product at run time.
#pragma once

#include "age/core/types.hpp"

namespace age::detail {

inline void multiply(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) { y.noalias() = a * b; }
inline void multiply_add(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) { y.noalias() += a * b; }
inline void multiply_tn(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) {
  y.noalias() = a.transpose() * b;
}
inline void multiply_nt(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& b) {
  y.noalias() = a * b.transpose();
}

}  // namespace age::detail
