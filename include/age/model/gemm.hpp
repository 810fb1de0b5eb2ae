// The tower's matrix products, Y = A X with A a weight matrix (column-major, out x in)
// and X a batch of candidates (one per column), written for the shapes a ranking request
// has: A small enough to stay in cache (256 x 64 and 64 x 256 in the reference workload)
// and N anywhere from 1 to thousands of candidates.
//
// Why not Eigen's general product: for every call it packs A into panels (a copy of the
// whole weight matrix) and it blocks the candidates by 4. At N = 10 the packing alone was
// about a quarter of a request's time, and at N = 1000 its kernel reached ~135 GFLOP/s on
// this workload's shapes where the processor allows ~190. Here A is read in place (its
// columns are contiguous and the same few kilobytes are reused for every block of
// candidates), and each block of RV vectors of output rows times NR candidates is held in
// registers for the whole inner dimension:
//   for k:  a_r = A[rows r, k]  (RV vector loads)
//           b_c = X[k, c]       (NR broadcasts)
//           acc[r][c] += a_r * b_c
// (RV * NR fused multiply-adds per RV + NR loads). The block shape is chosen for the
// vector width the translation unit is compiled for: 4 x 6 vectors of 16 floats with
// AVX-512 (32 registers), 2 x 4 otherwise (16 registers). The vectors are age::simd's
// (age/core/simd.hpp: GCC/Clang vector extensions or a portable fallback), so the same
// code serves SSE2, AVX2 and AVX-512 builds; no alignment is assumed.
//
// Products with A transposed (the input gradient) run on the same kernel with transposed
// copies of the weights, which the tower rebuilds when a Tower::Edit ends (tower_tables.hpp):
// A^T's rows are A's columns, which this form cannot read in place.
#pragma once

#include <cassert>
#include <cstddef>

#include "age/core/simd.hpp"
#include "age/core/types.hpp"

namespace age::detail {

namespace gemm_kernel {

using simd::kWidth;  // floats per vector
// RV x NC accumulators plus RV row vectors and a broadcast in registers: 4 x 6 with 32
// vector registers (AVX-512), 2 x 4 with 16.
inline constexpr int kRowVectors = simd::kRegisters >= 32 ? 4 : 2;
inline constexpr int kCols = simd::kRegisters >= 32 ? 6 : 4;

static_assert(sizeof(Scalar) == 4, "the product kernels are written for float");
using simd::broadcast_relu;
using simd::load;
using simd::relu;
using simd::select;
using simd::store;
using simd::sum_lanes;
using simd::Vec;
using simd::zero;

// How the output starts: from zero, from its own values (Y += A X), or from one column
// c repeated for every candidate (Y = c 1^T + A X: a bias, or a shared user part).
struct Start {
  enum Kind { zero, accumulate, column } kind = zero;
  const float* column_values = nullptr;
};

// Work to do on each panel of Y (up to kCols whole columns) right after the product wrote
// it, while it is in the first-level cache: the caller's function, called out of line
// (inlined into the product, its pointers crowded the product's loop out of general
// registers: stride reloads from the stack in every step of k, ~1.5x slower in one
// program). The tower reads its output logits this way (age/model/masked_update.hpp).
//   run(context, rows, columns, first_column, x, ldx, y, ldy)
// x, y: the panel's first column of X (the product's right operand) and of Y.
struct PanelHook {
  void (*run)(const void* context, long rows, long columns, long first_column, const float* x, long ldx,
              const float* y, long ldy) noexcept = nullptr;
  const void* context = nullptr;
};

// What happens to a block of Y while it is still in registers, so that the pass over Y
// that would follow the product is not needed:
//   relu_copy:        also R = max(Y, 0), R of Y's shape (the layer's activation next to
//                     its pre-activation; NaN stays NaN and -0 stays -0, like Eigen's
//                     cwiseMax(0) on this tower's data)
//   keep_if_positive: Y = (S > 0) ? Y : 0, S with Y's rows (the input gradient through a
//                     ReLU, S the pre-activation); Y's column c reads S's column c, or
//                     column sign_columns[c] when given (candidates kept in place by
//                     Tower::request_select)
struct Finish {
  enum Kind { none, relu_copy, keep_if_positive } kind = none;
  float* relu = nullptr;                 // relu_copy
  const float* sign = nullptr;           // keep_if_positive
  long ld = 0;                           // column stride of R or S
  const Index* sign_columns = nullptr;   // keep_if_positive, optional
  PanelHook panel;                       // optional, with any kind

  // The same finish for the block of Y starting at row i, column j.
  AGE_ALWAYS_INLINE Finish at(long i, long j) const noexcept {
    Finish f = *this;
    if (f.relu) f.relu += j * ld + i;
    if (f.sign) f.sign += (f.sign_columns ? 0 : j * ld) + i;
    if (f.sign_columns) f.sign_columns += j;
    return f;
  }
  // Offset of column c, row r of R or S in this block.
  AGE_ALWAYS_INLINE long offset(int c, long r) const noexcept {
    return (sign_columns ? sign_columns[c] : c) * ld + r;
  }
};

// The finish of one element (rows past the last whole vector); block() finishes its
// vectors in registers, the same three kinds.
AGE_ALWAYS_INLINE float finish_scalar(float v, const Finish& f, int c, long r) noexcept {
  if (f.kind == Finish::relu_copy) {
    f.relu[f.offset(c, r)] = v < 0.0f ? 0.0f : v;
  } else if (f.kind == Finish::keep_if_positive) {
    v = f.sign[f.offset(c, r)] > 0.0f ? v : 0.0f;
  }
  return v;
}

// Rows [0, RV * kWidth) of Y's NC columns. ReluX: X is read through its ReLU, max(X, 0).
template <int RV, int NC, bool ReluX>
inline void block(long k_size, const float* a, long lda, const float* x, long ldx, float* y, long ldy,
                  Start start, long row, const Finish& finish) noexcept {
  // The kinds of start and finish are tested once per block, outside the loops over the
  // block's vectors, which are then unrolled: with the tests inside, GCC kept those loops
  // rolled and the accumulators in an array on the stack, stored and reloaded around the
  // loop over k (~4% of a product whose inner dimension is 64, ~1-2% at 256).
  Vec acc[RV][NC];
  switch (start.kind) {
    case Start::accumulate:
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
        for (int r = 0; r < RV; ++r) acc[r][c] = load(y + c * ldy + r * kWidth);
      break;
    case Start::column:
#pragma GCC unroll 8
      for (int r = 0; r < RV; ++r) {
        const Vec v = load(start.column_values + row + r * kWidth);
#pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) acc[r][c] = v;
      }
      break;
    case Start::zero:
    default:
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
        for (int r = 0; r < RV; ++r) acc[r][c] = zero();
      break;
  }
  for (long k = 0; k < k_size; ++k) {
    Vec av[RV];
    for (int r = 0; r < RV; ++r) av[r] = load(a + k * lda + r * kWidth);
    for (int c = 0; c < NC; ++c) {
      if constexpr (ReluX) {
        const Vec b = broadcast_relu(x + c * ldx + k);
        for (int r = 0; r < RV; ++r) acc[r][c] += av[r] * b;
      } else {
        // vector * scalar broadcasts the scalar (Vec{} + b instead would add 0.0f first:
        // an extra instruction per broadcast, kept by the compiler for -0.0's sake).
        const float b = x[c * ldx + k];
        for (int r = 0; r < RV; ++r) acc[r][c] += av[r] * b;
      }
    }
  }
  switch (finish.kind) {
    case Finish::none:
    default:
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
        for (int r = 0; r < RV; ++r) store(y + c * ldy + r * kWidth, acc[r][c]);
      break;
    case Finish::relu_copy:
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
        for (int r = 0; r < RV; ++r) {
          store(y + c * ldy + r * kWidth, acc[r][c]);
          store(finish.relu + finish.offset(c, r * kWidth), relu(acc[r][c]));
        }
      break;
    case Finish::keep_if_positive:
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
#pragma GCC unroll 8
        for (int r = 0; r < RV; ++r) {
          const Vec sign = load(finish.sign + finish.offset(c, r * kWidth));
          store(y + c * ldy + r * kWidth, select(sign > zero(), acc[r][c], zero()));
        }
      break;
  }
}

// All M rows of NC columns: blocks of kRowVectors vectors, then pairs and single vectors,
// then the rows left over one at a time. Never inlined: its register allocation is the
// one the blocks were tuned for (inlined into a caller with more live values, GCC 12 kept
// the accumulators on the stack and a greedy request of 1000 candidates took ~30% longer).
template <int NC, bool ReluX>
AGE_NOINLINE void columns(long m, long k_size, const float* a, long lda, const float* x, long ldx, float* y, long ldy,
                    Start start, const Finish& finish) noexcept {
  long i = 0;
  for (; i + kRowVectors * kWidth <= m; i += kRowVectors * kWidth)
    block<kRowVectors, NC, ReluX>(k_size, a + i, lda, x, ldx, y + i, ldy, start, i, finish.at(i, 0));
  if constexpr (kRowVectors > 2) {
    // Two vectors at a time (e.g. the DGU's 32 hidden units with AVX-512): half the loads
    // per multiply-add of single vectors.
    for (; i + 2 * kWidth <= m; i += 2 * kWidth)
      block<2, NC, ReluX>(k_size, a + i, lda, x, ldx, y + i, ldy, start, i, finish.at(i, 0));
  }
  for (; i + kWidth <= m; i += kWidth)
    block<1, NC, ReluX>(k_size, a + i, lda, x, ldx, y + i, ldy, start, i, finish.at(i, 0));
  for (; i < m; ++i)
    for (int c = 0; c < NC; ++c) {
      float s = start.kind == Start::accumulate ? y[c * ldy + i]
                : start.kind == Start::column   ? start.column_values[i]
                                                : 0.0f;
      for (long k = 0; k < k_size; ++k) {
        float b = x[c * ldx + k];
        if constexpr (ReluX) b = b < 0.0f ? 0.0f : b;
        s += a[k * lda + i] * b;
      }
      y[c * ldy + i] = finish_scalar(s, finish, c, i);
    }
}

// The last n < kCols columns.
template <bool ReluX, int NC = kCols - 1>
inline void tail(long n, long m, long k_size, const float* a, long lda, const float* x, long ldx, float* y, long ldy,
                 Start start, const Finish& finish) noexcept {
  if constexpr (NC > 0) {
    if (n == NC)
      columns<NC, ReluX>(m, k_size, a, lda, x, ldx, y, ldy, start, finish);
    else
      tail<ReluX, NC - 1>(n, m, k_size, a, lda, x, ldx, y, ldy, start, finish);
  }
}

template <bool ReluX>
inline void multiply_columns(long m, long n, long k_size, const float* a, long lda, const float* x, long ldx,
                             float* y, long ldy, Start start, const Finish& finish) noexcept {
  long j = 0;
  for (; j + kCols <= n; j += kCols) {
    columns<kCols, ReluX>(m, k_size, a, lda, x + j * ldx, ldx, y + j * ldy, ldy, start, finish.at(0, j));
    if (finish.panel.run) finish.panel.run(finish.panel.context, m, kCols, j, x + j * ldx, ldx, y + j * ldy, ldy);
  }
  tail<ReluX>(n - j, m, k_size, a, lda, x + j * ldx, ldx, y + j * ldy, ldy, start, finish.at(0, j));
  if (finish.panel.run && j < n)
    finish.panel.run(finish.panel.context, m, n - j, j, x + j * ldx, ldx, y + j * ldy, ldy);
}

// relu_x: X is read through its ReLU (Y = A max(X, 0)), one max per broadcast of X (on
// ports the multiply-adds do not use), so that the layer below need not store its ReLU.
inline void multiply(long m, long n, long k_size, const float* a, long lda, const float* x, long ldx, float* y,
                     long ldy, Start start, const Finish& finish = {}, bool relu_x = false) noexcept {
  if (relu_x)
    multiply_columns<true>(m, n, k_size, a, lda, x, ldx, y, ldy, start, finish);
  else
    multiply_columns<false>(m, n, k_size, a, lda, x, ldx, y, ldy, start, finish);
}

}  // namespace gemm_kernel

// What to do with y in registers after the product (gemm_kernel::Finish): nothing, also
// write r = max(y, 0) (r of y's shape), or zero y where s <= 0 (s with y's rows: its
// first columns, or the columns `columns` lists, one per column of y).
inline gemm_kernel::Finish also_relu(MatrixRef r) noexcept {
  return {gemm_kernel::Finish::relu_copy, r.data(), nullptr, r.outerStride(), nullptr, {}};
}
inline gemm_kernel::Finish keep_if_positive(const ConstMatrixRef& s, const Index* columns = nullptr) noexcept {
  return {gemm_kernel::Finish::keep_if_positive, nullptr, s.data(), s.outerStride(), columns, {}};
}

// y = a x (a: M x K, x: K x N, y: M x N). No aliasing between y and a or x, like
// Eigen's noalias(). Every operand is a column-major block with unit inner stride (a
// Matrix or a range of its columns, which Ref takes without copying). `finish`
// (also_relu, keep_if_positive) runs on each block while it is in registers.
inline void gemm_assign(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& x,
                        const gemm_kernel::Finish& finish = {}) noexcept {
  assert(a.rows() == y.rows() && a.cols() == x.rows() && x.cols() == y.cols());
  gemm_kernel::multiply(y.rows(), y.cols(), a.cols(), a.data(), a.outerStride(), x.data(), x.outerStride(),
                        y.data(), y.outerStride(), {}, finish);
}

// y += a x.
inline void gemm_add(MatrixRef y, const ConstMatrixRef& a, const ConstMatrixRef& x,
                     const gemm_kernel::Finish& finish = {}) noexcept {
  assert(a.rows() == y.rows() && a.cols() == x.rows() && x.cols() == y.cols());
  gemm_kernel::multiply(y.rows(), y.cols(), a.cols(), a.data(), a.outerStride(), x.data(), x.outerStride(),
                        y.data(), y.outerStride(), {gemm_kernel::Start::accumulate, nullptr}, finish);
}

// y = c 1^T + a x: every column of y starts from the column c (M), e.g. a layer's bias.
// relu_x: y = c 1^T + a max(x, 0) (x a pre-activation whose ReLU was not stored).
inline void gemm_from_column(MatrixRef y, const ConstVectorRef& c, const ConstMatrixRef& a, const ConstMatrixRef& x,
                             const gemm_kernel::Finish& finish = {}, bool relu_x = false) noexcept {
  assert(a.rows() == y.rows() && a.cols() == x.rows() && x.cols() == y.cols() && c.size() == y.rows());
  gemm_kernel::multiply(y.rows(), y.cols(), a.cols(), a.data(), a.outerStride(), x.data(), x.outerStride(),
                        y.data(), y.outerStride(), {gemm_kernel::Start::column, c.data()}, finish, relu_x);
}

}  // namespace age::detail
