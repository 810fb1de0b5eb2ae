// The model's probability y = sigmoid(z) = 1 / (1 + exp(-z)) of (M1), METHOD.md, one
// implementation for a single value and for a whole request.
//
// A request of N candidates takes ~3.5 N sigmoids (the base score, the MC-Dropout sample,
// the DGU's average CTR, the explored score): with std::exp they were ~3 ns each, ~10 ns
// per candidate of an AGE-TS request (~1.5%). sigmoid_in_place() runs one vector of
// candidates at a time (~0.3 ns a value with 16-float vectors), and
// sigmoid() of one value runs the same vector code on one lane, so that both give the
// same float bit for bit (a score computed on the request passes equals the same score
// computed one by one).
//
// exp(x) for x = -|z| <= 0: x = n ln2 + r with |r| <= ln2 / 2, ln2 split in two parts so
// that r is exact, exp(r) = 1 + r + r^2 P(r) with the degree-5 minimax polynomial of
// Cephes' expf, times 2^n from the exponent bits. Then sigmoid(z) = 1 / (1 + e) for z >= 0
// and e / (1 + e) for z < 0, e = exp(-|z|), which never overflows: within 2 ulp of the
// correctly rounded value (tests/unit/test_gemm.cpp), like std::exp's form not monotone
// to the last ulp. Below exp(-87.3) (about FLT_MIN) e is taken as 0: sigmoid(z) is 0 for
// z < -87.3 (std::exp would give a subnormal under 1e-38) and 1 for z > 87.3; NaN stays
// NaN, +-inf give 1 and 0.
#pragma once

#include "age/core/simd.hpp"
#include "age/core/types.hpp"

namespace age {
namespace detail {

// sigmoid() of every lane of z (see the top of this file).
inline simd::Vec sigmoid_lanes(simd::Vec z) noexcept {
  using simd::broadcast;
  using simd::IntVec;
  using simd::Vec;
  constexpr float kLowest = -87.3f;                 // exp(kLowest) ~ 1.2e-38 >= FLT_MIN
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;          // ln 2 = kLn2High + kLn2Low, kLn2High
  constexpr float kLn2Low = -2.12194440e-4f;        // with few mantissa bits: n kLn2High is exact
  constexpr float kRound = 12582912.0f;             // 1.5 * 2^23: t + kRound rounds t to an integer
  const Vec x_raw = -simd::abs(z);
  const Vec x = simd::select(x_raw < kLowest, broadcast(kLowest), x_raw);
  // n = round(x / ln2) in [-126, 0], as a float and in the low bits of t.
  const Vec t = x * kLog2e + kRound;
  const Vec n = t - kRound;
  const Vec r = (x - n * kLn2High) - n * kLn2Low;
  Vec p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec exp_r = p * (r * r) + r + 1.0f;
  // 2^n: n + 127 (>= 1) in the exponent field.
  const IntVec exponent = (simd::as_ints(t) - simd::as_ints(broadcast(kRound)) + 127) << 23;
  Vec e = exp_r * simd::as_floats(exponent);
  e = simd::select(x_raw < kLowest, simd::zero(), e);  // also -inf; NaN compares false and stays NaN
  const Vec numerator = simd::select(z >= 0.0f, broadcast(1.0f), e);
  return numerator / (1.0f + e);
}

// p[i] = sigmoid(p[i]) for i < n.
inline void sigmoid_in_place_n(Scalar* p, Index n) noexcept {
  Index i = 0;
  for (; i + simd::kWidth <= n; i += simd::kWidth) simd::store(p + i, sigmoid_lanes(simd::load(p + i)));
  if (i < n) {
    // The tail through one vector, so that every value takes the same instructions.
    Scalar tail[simd::kWidth] = {};
    for (Index j = i; j < n; ++j) tail[j - i] = p[j];
    simd::store(tail, sigmoid_lanes(simd::load(tail)));
    for (Index j = i; j < n; ++j) p[j] = tail[j - i];
  }
}

}  // namespace detail

inline Scalar sigmoid(Scalar z) noexcept { return detail::sigmoid_lanes(simd::broadcast(z))[0]; }

// In place over a contiguous row of probabilities-to-be (e.g. a request's logits).
inline void sigmoid_in_place(Eigen::Ref<RowVector> z) noexcept { detail::sigmoid_in_place_n(z.data(), z.size()); }

}  // namespace age
