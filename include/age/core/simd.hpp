// The one seam between age and the processor's vector instructions: the kernels (product,
// sign table, sigmoid, request checks) write their vector code with what is below, and
// this is the only header with instruction-set conditionals, GNU vector extensions,
// intrinsics and compiler attributes.
//
// Compilers: GCC >= 12 and Clang >= 14 get GNU vector extensions (__builtin_shufflevector
// came with GCC 12). Any other C++20 compiler, or a translation unit that defines
// AGE_SIMD_PORTABLE before including age headers, gets the portable fallback: a struct of
// 4 floats and plain loops in the vector code's lane order, whose results equal a 4-float
// vector build's (SSE2) bit for bit.
//
// Instruction sets, as the translation unit is compiled:
//   AVX-512F  16 floats a vector, 32 vector registers
//   AVX       8 floats, 16 registers
//   otherwise (SSE2, other processors, the fallback): 4 floats, 16 registers
// All translation units of a program must make the same choice (the kernels are inline).
//
// age::simd:
//   kWidth, kRegisters       floats per vector, vector registers
//   Vec, IntVec              kWidth floats; kWidth int32 lanes, also the masks that Vec
//                            comparisons give (all bits set where true)
//   Vec operators            + - * / and compound forms (a Vec or a float on either side),
//                            unary -, == != < <= > >= (-> IntVec), v[i] to read a lane
//   IntVec operators         IntVec - IntVec, + int, << int (the sigmoid's exponent)
//   load, store              unaligned
//   zero, broadcast, select(mask, a, b), relu, min, abs, as_ints, as_floats
//   sum_lanes, min_lanes     pairwise folds in a fixed order
//   broadcast_relu(p), positive_bits(p), mask_of_bits(bits), prefetch(p)
// and the macros AGE_ALWAYS_INLINE and AGE_NOINLINE.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#if !defined(AGE_SIMD_PORTABLE) && defined(__GNUC__) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define AGE_SIMD_GNU_VECTORS 1
#endif
#endif

#if defined(AGE_SIMD_GNU_VECTORS) && defined(__SSE2__)
#include <immintrin.h>
#endif

// AGE_ALWAYS_INLINE (includes `inline`): inlined whatever the including translation
// unit's inlining budget; GCC kept small kernel helpers out of line in a program built on
// these headers, and the calls cost ~8% of a forward pass.
#if defined(__GNUC__)
#define AGE_ALWAYS_INLINE inline __attribute__((always_inline))
#define AGE_NOINLINE __attribute__((noinline))
#else
#define AGE_ALWAYS_INLINE inline
#define AGE_NOINLINE
#endif

namespace age::simd {

#if defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX512F__)
inline constexpr int kWidth = 16;  // floats per vector
inline constexpr int kRegisters = 32;
#elif defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX__)
inline constexpr int kWidth = 8;
inline constexpr int kRegisters = 16;
#else
inline constexpr int kWidth = 4;
inline constexpr int kRegisters = 16;
#endif

#if defined(AGE_SIMD_GNU_VECTORS)

// The compiler's own vectors: the operators are built in.
typedef float Vec __attribute__((vector_size(kWidth * sizeof(float))));
typedef std::int32_t IntVec __attribute__((vector_size(kWidth * sizeof(std::int32_t))));

namespace detail {
template <class V, class T, std::size_t... I>
AGE_ALWAYS_INLINE V splat(T x, std::index_sequence<I...>) noexcept {
  return V{((void)I, x)...};
}
template <int W>
struct Lanes {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};
// op(lower half, upper half) until one lane is left, in registers.
template <int W, class Op, std::size_t... I>
AGE_ALWAYS_INLINE float fold(typename Lanes<W>::type v, Op op, std::index_sequence<I...>) noexcept {
  if constexpr (W == 1) {
    return v[0];
  } else {
    const typename Lanes<W / 2>::type low = __builtin_shufflevector(v, v, static_cast<int>(I)...);
    const typename Lanes<W / 2>::type high = __builtin_shufflevector(v, v, static_cast<int>(I + W / 2)...);
    return fold<W / 2>(op(low, high), op, std::make_index_sequence<W / 4>{});
  }
}
}  // namespace detail

AGE_ALWAYS_INLINE Vec zero() noexcept { return Vec{}; }
// Every lane x (not 0 + x, which would turn -0 into +0 and cost an add).
AGE_ALWAYS_INLINE Vec broadcast(float x) noexcept { return detail::splat<Vec>(x, std::make_index_sequence<kWidth>{}); }
// a where the mask's lane is set, else b.
AGE_ALWAYS_INLINE Vec select(IntVec mask, Vec a, Vec b) noexcept { return mask ? a : b; }
// The lanes' bits, unchanged.
AGE_ALWAYS_INLINE IntVec as_ints(Vec v) noexcept { return reinterpret_cast<IntVec>(v); }
AGE_ALWAYS_INLINE Vec as_floats(IntVec v) noexcept { return reinterpret_cast<Vec>(v); }
// |v| by clearing the sign bits (NaN included).
AGE_ALWAYS_INLINE Vec abs(Vec v) noexcept { return as_floats(as_ints(v) & 0x7fffffff); }

// Lanes folded pairwise, each step combining the lower and the upper half: the sum's
// rounding is the same for every implementation of a width.
AGE_ALWAYS_INLINE float sum_lanes(Vec v) noexcept {
  return detail::fold<kWidth>(v, [](auto a, auto b) { return a + b; }, std::make_index_sequence<kWidth / 2>{});
}
AGE_ALWAYS_INLINE float min_lanes(Vec v) noexcept {
  return detail::fold<kWidth>(v, [](auto a, auto b) { return b < a ? b : a; }, std::make_index_sequence<kWidth / 2>{});
}

// Lane i set where bit i of `bits` is (higher bits ignored): positive_bits' inverse.
AGE_ALWAYS_INLINE IntVec mask_of_bits(unsigned bits) noexcept {
  const IntVec lane_bit = [] {
    IntVec v;
    for (int i = 0; i < kWidth; ++i) v[i] = std::int32_t{1} << i;
    return v;
  }();
  const auto low = static_cast<std::int32_t>(bits & ((1u << kWidth) - 1));
  return (detail::splat<IntVec>(low, std::make_index_sequence<kWidth>{}) & lane_bit) != IntVec{};
}

#else  // the portable fallback: the same operations lane by lane, in the same order

struct Vec {
  float lane[kWidth];
  AGE_ALWAYS_INLINE float operator[](int i) const noexcept { return lane[i]; }
};
struct IntVec {
  std::int32_t lane[kWidth];
  AGE_ALWAYS_INLINE std::int32_t operator[](int i) const noexcept { return lane[i]; }
};

namespace detail {
template <class R, class A, class B, class Op>
AGE_ALWAYS_INLINE R lanewise(const A& a, const B& b, Op op) noexcept {
  R r;
  for (int i = 0; i < kWidth; ++i) r.lane[i] = op(a.lane[i], b.lane[i]);
  return r;
}
// Integer lanes wrap around as the vector instructions' do, without signed overflow.
AGE_ALWAYS_INLINE std::int32_t wrap(std::uint32_t x) noexcept { return static_cast<std::int32_t>(x); }
AGE_ALWAYS_INLINE std::uint32_t bits(std::int32_t x) noexcept { return static_cast<std::uint32_t>(x); }
}  // namespace detail

AGE_ALWAYS_INLINE Vec zero() noexcept { return Vec{}; }
AGE_ALWAYS_INLINE Vec broadcast(float x) noexcept {
  Vec r;
  for (float& lane : r.lane) lane = x;
  return r;
}
AGE_ALWAYS_INLINE Vec select(IntVec mask, Vec a, Vec b) noexcept {
  Vec r;
  for (int i = 0; i < kWidth; ++i) r.lane[i] = mask.lane[i] ? a.lane[i] : b.lane[i];
  return r;
}
AGE_ALWAYS_INLINE IntVec as_ints(Vec v) noexcept { return std::bit_cast<IntVec>(v); }
AGE_ALWAYS_INLINE Vec as_floats(IntVec v) noexcept { return std::bit_cast<Vec>(v); }
AGE_ALWAYS_INLINE Vec abs(Vec v) noexcept {
  for (float& lane : v.lane) lane = std::bit_cast<float>(std::bit_cast<std::uint32_t>(lane) & 0x7fffffffu);
  return v;
}

AGE_ALWAYS_INLINE Vec operator-(Vec a) noexcept {
  for (float& lane : a.lane) lane = -lane;
  return a;
}
#define AGE_SIMD_ARITHMETIC(op)                                                                      \
  AGE_ALWAYS_INLINE Vec operator op(Vec a, Vec b) noexcept {                                         \
    return detail::lanewise<Vec>(a, b, [](float x, float y) { return x op y; });                     \
  }                                                                                                  \
  AGE_ALWAYS_INLINE Vec operator op(Vec a, float b) noexcept { return a op broadcast(b); }           \
  AGE_ALWAYS_INLINE Vec operator op(float a, Vec b) noexcept { return broadcast(a) op b; }           \
  AGE_ALWAYS_INLINE Vec& operator op##=(Vec& a, Vec b) noexcept { return a = a op b; }               \
  AGE_ALWAYS_INLINE Vec& operator op##=(Vec& a, float b) noexcept { return a = a op broadcast(b); }
AGE_SIMD_ARITHMETIC(+)
AGE_SIMD_ARITHMETIC(-)
AGE_SIMD_ARITHMETIC(*)
AGE_SIMD_ARITHMETIC(/)
#undef AGE_SIMD_ARITHMETIC

#define AGE_SIMD_COMPARISON(op)                                                                            \
  AGE_ALWAYS_INLINE IntVec operator op(Vec a, Vec b) noexcept {                                            \
    return detail::lanewise<IntVec>(a, b, [](float x, float y) { return x op y ? std::int32_t{-1} : 0; }); \
  }                                                                                                        \
  AGE_ALWAYS_INLINE IntVec operator op(Vec a, float b) noexcept { return a op broadcast(b); }              \
  AGE_ALWAYS_INLINE IntVec operator op(float a, Vec b) noexcept { return broadcast(a) op b; }
AGE_SIMD_COMPARISON(==)
AGE_SIMD_COMPARISON(!=)
AGE_SIMD_COMPARISON(<)
AGE_SIMD_COMPARISON(<=)
AGE_SIMD_COMPARISON(>)
AGE_SIMD_COMPARISON(>=)
#undef AGE_SIMD_COMPARISON

AGE_ALWAYS_INLINE IntVec operator-(IntVec a, IntVec b) noexcept {
  return detail::lanewise<IntVec>(
      a, b, [](std::int32_t x, std::int32_t y) { return detail::wrap(detail::bits(x) - detail::bits(y)); });
}
AGE_ALWAYS_INLINE IntVec operator+(IntVec a, std::int32_t b) noexcept {
  for (std::int32_t& lane : a.lane) lane = detail::wrap(detail::bits(lane) + detail::bits(b));
  return a;
}
AGE_ALWAYS_INLINE IntVec operator<<(IntVec a, int shift) noexcept {
  for (std::int32_t& lane : a.lane) lane = detail::wrap(detail::bits(lane) << shift);
  return a;
}

AGE_ALWAYS_INLINE float sum_lanes(Vec v) noexcept {
  for (int half = kWidth / 2; half >= 1; half /= 2)
    for (int i = 0; i < half; ++i) v.lane[i] = v.lane[i] + v.lane[i + half];
  return v.lane[0];
}
AGE_ALWAYS_INLINE float min_lanes(Vec v) noexcept {
  for (int half = kWidth / 2; half >= 1; half /= 2)
    for (int i = 0; i < half; ++i) v.lane[i] = v.lane[i + half] < v.lane[i] ? v.lane[i + half] : v.lane[i];
  return v.lane[0];
}

AGE_ALWAYS_INLINE IntVec mask_of_bits(unsigned bits) noexcept {
  IntVec m;
  for (int i = 0; i < kWidth; ++i) m.lane[i] = (bits >> i) & 1u ? -1 : 0;
  return m;
}

#endif

static_assert(sizeof(Vec) == kWidth * sizeof(float) && sizeof(IntVec) == sizeof(Vec));

// Through memcpy: nothing in age aligns its matrices' columns to vectors.
AGE_ALWAYS_INLINE Vec load(const float* p) noexcept {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
AGE_ALWAYS_INLINE void store(float* p, Vec v) noexcept { std::memcpy(p, &v, sizeof v); }

// max(v, 0) as v < 0 ? 0 : v: NaN stays NaN and -0 stays -0, like Eigen's cwiseMax(0).
AGE_ALWAYS_INLINE Vec relu(Vec v) noexcept { return select(v < zero(), zero(), v); }
// b < a ? b : a, lane by lane: a where either is NaN or both are equal.
AGE_ALWAYS_INLINE Vec min(Vec a, Vec b) noexcept { return select(b < a, b, a); }

// relu(*p) in every lane, as one broadcast and one max: the operand of a product that
// reads its X through a ReLU. max(0, v) keeps NaN and -0 as relu does.
AGE_ALWAYS_INLINE Vec broadcast_relu(const float* p) noexcept {
#if defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX512F__)
  return _mm512_max_ps(_mm512_setzero_ps(), _mm512_set1_ps(*p));
#elif defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX__)
  return _mm256_max_ps(_mm256_setzero_ps(), _mm256_set1_ps(*p));
#elif defined(AGE_SIMD_GNU_VECTORS) && defined(__SSE2__)
  return _mm_max_ps(_mm_setzero_ps(), _mm_set1_ps(*p));
#else
  return broadcast(*p < 0.0f ? 0.0f : *p);
#endif
}

// Bit i set where p[i] > 0 (not for NaN), i < kWidth.
AGE_ALWAYS_INLINE unsigned positive_bits(const float* p) noexcept {
#if defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX512F__)
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_setzero_ps(), _CMP_GT_OQ);
#elif defined(AGE_SIMD_GNU_VECTORS) && defined(__AVX__)
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_GT_OQ)));
#elif defined(AGE_SIMD_GNU_VECTORS) && defined(__SSE2__)
  return static_cast<unsigned>(_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(p), _mm_setzero_ps())));
#else
  unsigned bits = 0;
  for (int i = 0; i < kWidth; ++i) bits |= static_cast<unsigned>(p[i] > 0.0f) << i;
  return bits;
#endif
}

// A hint to bring p's cache line in ahead of its use.
AGE_ALWAYS_INLINE void prefetch(const void* p) noexcept {
#if defined(__GNUC__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

}  // namespace age::simd
