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
// copies of the weights, which Tower::commit_weights() keeps: A^T's rows are A's columns,
// which this form cannot read in place.
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

// The output logit of a tower read from its top hidden layer's product Y = W X + b 1^T
// (X the layer below's ReLU, read through relu_x or stored, or the input) panel by panel,
// right after the product wrote each one, while it is in the first-level cache:
//   out[n]    = sum_i w_i ReLU(Y[i, n]) + out_bias
// (no second pass over Y and no stored ReLU(Y) for the output layer's product) and, with
// masked_weights, the logit under a dropout mask m shared by the columns (McDropoutTs's
// sample; m on the layer below: s its common value, J the units where m_j != s,
// X+ = max(X, 0); the mask of Y's layer folded into w'):
//   masked[n] = sum_i w'_i ReLU(s Y[i, n] + (1 - s) b_i + sum_{j in J} (m_j - s) X+[j, n] W[i, j])
//               + out_bias
// the rank-|J| update of Tower::request_logits, without reading the cached pass again.
struct OutputLogits {
  const float* weights = nullptr;  // w (Y's rows)
  float out_bias = 0.0f;
  float* out = nullptr;            // one logit per column of Y
  // The masked logit (none without masked_weights).
  const float* masked_weights = nullptr;          // w'
  const float* bias = nullptr;                    // b (Y's rows)
  float scale = 1.0f;                             // s
  std::size_t changed = 0;                        // |J|
  const Index* changed_rows = nullptr;            // j in J: rows of X
  const float* const* changed_columns = nullptr;  // W[:, j]
  const float* changed_factor = nullptr;          // m_j - s
  float* factor_scratch = nullptr;                // kCols x |J| floats: (m_j - s) X+[j, n]
  float* masked_out = nullptr;                    // one logit per column of Y
};

// OutputLogits of NC columns, y: Y's first, x: X's first (ldy, ldx apart), `rows` rows,
// into out[0..NC) and masked_out[0..NC). The columns go together, NC independent running
// sums: the weights and each changed unit's column of W are loaded once for all of them,
// and the sums' dependency chains overlap (one column at a time, the chain of
// multiply-adds per vector of rows bounded the masked logit at ~3x its arithmetic).
// Branch-free: a unit j with X+[j, n] = 0 is added with factor 0 (skipping those units,
// about half, mispredicted a branch per unit and column).
template <int NC, bool Masked>
AGE_ALWAYS_INLINE void output_logits_of(const OutputLogits& o, const float* y, long ldy, const float* x, long ldx,
                                        long rows, float* out, float* masked_out) noexcept {
  const float s = o.scale, t = 1.0f - s;
  const std::size_t count = Masked ? o.changed : 0;
  const float* const* column = o.changed_columns;
  float* factor = o.factor_scratch;  // factor[q * NC + c]
  for (std::size_t q = 0; q < count; ++q)
    for (int c = 0; c < NC; ++c) {
      const float a = x[c * ldx + o.changed_rows[q]];
      factor[q * NC + c] = o.changed_factor[q] * (a > 0.0f ? a : 0.0f);
    }
  Vec sum[NC], masked_sum[NC];
  for (int c = 0; c < NC; ++c) sum[c] = masked_sum[c] = zero();
  long i = 0;
  for (; i + kWidth <= rows; i += kWidth) {
    const Vec w = load(o.weights + i);
    Vec p[NC];
    for (int c = 0; c < NC; ++c) {
      p[c] = load(y + c * ldy + i);
      sum[c] += w * relu(p[c]);
    }
    if constexpr (Masked) {
      const Vec bias = load(o.bias + i) * t;
      for (int c = 0; c < NC; ++c) p[c] = p[c] * s + bias;
      for (std::size_t q = 0; q < count; ++q) {
        const Vec w_j = load(column[q] + i);
        for (int c = 0; c < NC; ++c) p[c] += w_j * factor[q * NC + c];
      }
      const Vec w_masked = load(o.masked_weights + i);
      for (int c = 0; c < NC; ++c) masked_sum[c] += w_masked * relu(p[c]);
    }
  }
  for (int c = 0; c < NC; ++c) {
    float logit = sum_lanes(sum[c]), masked = Masked ? sum_lanes(masked_sum[c]) : 0.0f;
    for (long r = i; r < rows; ++r) {
      const float p = y[c * ldy + r];
      logit += o.weights[r] * (p < 0.0f ? 0.0f : p);
      if constexpr (Masked) {
        float v = p * s + o.bias[r] * t;
        for (std::size_t q = 0; q < count; ++q) v += column[q][r] * factor[q * NC + c];
        masked += o.masked_weights[r] * (v < 0.0f ? 0.0f : v);
      }
    }
    out[c] = logit + o.out_bias;
    if constexpr (Masked) masked_out[c] = masked + o.out_bias;
  }
}

// OutputLogits of the nc <= kCols columns of Y (m rows) starting at column j. Kept out of
// line: inlined into the product, its pointers crowded the product's loop out of general
// registers (stride reloads from the stack in every step of k, ~1.5x slower in one
// program).
AGE_NOINLINE inline void output_logits(const OutputLogits& o, long m, long nc, long j, const float* x, long ldx,
                                       const float* y, long ldy) noexcept {
  float* out = o.out + j;
  float* masked_out = o.masked_out ? o.masked_out + j : nullptr;
  if (nc == kCols) {
    if (o.masked_weights)
      output_logits_of<kCols, true>(o, y, ldy, x, ldx, m, out, masked_out);
    else
      output_logits_of<kCols, false>(o, y, ldy, x, ldx, m, out, masked_out);
    return;
  }
  for (long c = 0; c < nc; ++c) {
    if (o.masked_weights)
      output_logits_of<1, true>(o, y + c * ldy, ldy, x + c * ldx, ldx, m, out + c, masked_out + c);
    else
      output_logits_of<1, false>(o, y + c * ldy, ldy, x + c * ldx, ldx, m, out + c, masked_out);
  }
}

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
  const OutputLogits* output = nullptr;  // optional, with any kind: also OutputLogits of Y

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
// then the rows left over one at a time.
template <int NC, bool ReluX>
inline void columns(long m, long k_size, const float* a, long lda, const float* x, long ldx, float* y, long ldy,
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
    if (finish.output) output_logits(*finish.output, m, kCols, j, x + j * ldx, ldx, y + j * ldy, ldy);
  }
  tail<ReluX>(n - j, m, k_size, a, lda, x + j * ldx, ldx, y + j * ldy, ldy, start, finish.at(0, j));
  if (finish.output && j < n) output_logits(*finish.output, m, n - j, j, x + j * ldx, ldx, y + j * ldy, ldy);
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
  return {gemm_kernel::Finish::relu_copy, r.data(), nullptr, r.outerStride()};
}
inline gemm_kernel::Finish keep_if_positive(const ConstMatrixRef& s, const Index* columns = nullptr) noexcept {
  return {gemm_kernel::Finish::keep_if_positive, nullptr, s.data(), s.outerStride(), columns};
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
