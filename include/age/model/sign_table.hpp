// The first product of the tower's input gradient by table lookups instead of
// multiply-adds ("Four Russians").
//
// Through the top hidden layer t the gradient of the logit is
//   y = d * A^T (1[pre_t > 0] .* w_out)          (A^T: the transposed weights below the
//                                                  output, rows x units; d: d_logit)
// a fixed matrix B = A^T diag(w_out) times a 0/1 vector, the ReLU pattern of layer t: a
// sum of the columns of B where pre_t > 0. With the units split into groups of 4, each
// group's contribution is one of only 16 sums, tabulated once per weight commit: the
// product becomes units / 4 vector loads and adds per output vector instead of `units`
// multiply-adds (16 instead of 64 in the reference workload). The table holds 4 x
// rows x units floats (256 kB for 256 x 64), laid out slice by slice (one vector of
// output rows at a time), so that the slice being summed, units / 4 x 16 vectors (16 kB
// at 64 units with 16-float vectors), stays in the first-level cache while a block of
// candidates is summed.
//
// The values equal the product's up to float rounding (the same terms, summed in another
// order); a NaN pre-activation counts as not positive, as in the multiply-add path.
//
// Each candidate's pre-activations are read once, column by column, before the sums: the
// top layer's pattern, the gate of the layer below as bits (the sums are gated from
// registers, not from the candidates' columns, 4 x rows bytes apart, slice by slice),
// and, for the certified radius of linear moves, the smallest |pre| / bound of both
// layers (no second pass over them). Against the gate read per slice and a separate
// radius pass: FGM's step on the workload's 1000-candidate request ~207 -> ~183 ns per
// candidate.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "age/core/simd.hpp"
#include "age/core/types.hpp"

namespace age::detail {

class SignTable {
 public:
  // Units (columns of A^T) per table group, and entries per group.
  static constexpr int kGroupBits = 4;
  static constexpr int kEntries = 1 << kGroupBits;
  // The table is built for at most this many units, so that a slice (units / 4 x 16
  // vectors) fits the first-level cache, and only when the output rows fill whole vectors.
  static constexpr Index kMaxUnits = 128;
  // Candidates per block (their patterns are kept while the slices pass), and the gate
  // bits kept for a block: kGateWords 64-bit words, so at most kMaxRows rows (blocks of 8).
  static constexpr Index kBlock = 128;
  static constexpr Index kGateWords = 1024;
  static constexpr Index kMaxRows = kGateWords * 64 / 8;
  static constexpr bool applies(Index rows, Index units) noexcept {
    return units >= 1 && units <= kMaxUnits && rows >= simd::kWidth && rows % simd::kWidth == 0 &&
           rows <= kMaxRows;
  }

  // Tabulates B = at diag(w) (at: rows x units, w: units). Empties the table when the
  // shape does not apply.
  void build(const ConstMatrixRef& at, const Eigen::Ref<const RowVector>& w) {
    constexpr int width = simd::kWidth;
    rows_ = at.rows();
    units_ = at.cols();
    if (!applies(rows_, units_)) {
      clear();
      return;
    }
    groups_ = static_cast<int>((units_ + kGroupBits - 1) / kGroupBits);
    const Index slices = rows_ / width;
    table_.resize(width, slices * groups_ * kEntries);
    // Entry e of a group = entry e without its lowest set bit + that bit's column of B
    // (units past the last one add nothing), one vector of rows at a time, written in
    // table order. This runs on every commit, i.e. after every optimizer step: plain
    // vector code (Eigen expressions on blocks of one vector cost more than their
    // arithmetic, and a slice-strided order thrashes a cache set).
    Scalar* out = table_.data();
    for (Index s = 0; s < slices; ++s)
      for (int g = 0; g < groups_; ++g) {
        simd::Vec column[kGroupBits];
        for (int b = 0; b < kGroupBits; ++b) {
          const Index unit = static_cast<Index>(g) * kGroupBits + b;
          column[b] = unit < units_ ? simd::load(at.col(unit).data() + s * width) * w[unit] : simd::zero();
        }
        simd::Vec entry[kEntries];
        entry[0] = simd::zero();
        for (int e = 1; e < kEntries; ++e)
          entry[e] = entry[e & (e - 1)] + column[std::countr_zero(static_cast<unsigned>(e))];
        for (int e = 0; e < kEntries; ++e, out += width) simd::store(out, entry[e]);
      }
  }
  void clear() noexcept {
    table_.resize(0, 0);
    groups_ = 0;
  }
  bool empty() const noexcept { return groups_ == 0; }
  Index rows() const noexcept { return rows_; }
  std::size_t bytes() const noexcept { return static_cast<std::size_t>(table_.size()) * sizeof(Scalar); }

  // The smallest |pre| * inverse_bound over the units of `top` and the rows of `below`,
  // per candidate, found while multiply() reads those pre-activations anyway: the
  // certified radius of a linear move (Tower::set_linear_moves) then costs no second
  // pass over them. inverse_top: top's rows, inverse_below: below's rows; smallest: k.
  struct SmallestRatio {
    const Scalar* inverse_top;
    const Scalar* inverse_below;
    Scalar* smallest;
  };

  // y(:, n) = 1[below(:, c_n) > 0] .* (d[n] B 1[top(:, c_n) > 0]) for the k = y.cols()
  // candidates, c_n = columns[n] (nullptr: n); without `below`, no gate. top: units rows,
  // below: y's rows. With `ratio`, also its smallest ratios (see SmallestRatio; without
  // `below`, over top only). Requires !empty() and y.rows() == rows().
  void multiply(const Matrix& top, const Index* columns, const Eigen::Ref<const RowVector>& d, const Matrix* below,
                MatrixRef y, const SmallestRatio* ratio = nullptr) const noexcept {
    constexpr int width = simd::kWidth;
    constexpr int lanes = 4;  // candidates summed together
    const Index k = y.cols();
    const Index slices = rows_ / width;
    const Index slice_size = static_cast<Index>(groups_) * kEntries * width;
    // Per block of candidates, read once, column by column: each one's pattern and, with
    // `below`, its gate bits (1[below > 0], 64 rows a word; the sums are then gated from
    // registers instead of from `below`'s columns, which sit 4 x rows bytes apart) and
    // smallest ratios. A block is as many candidates as fit kGateWords, at most kBlock.
    const Index gate_words = below ? (rows_ + 63) / 64 : 0;
    const Index block = below ? std::min(kBlock, kGateWords / gate_words) : kBlock;
    std::array<Pattern, kBlock> patterns;
    std::array<std::uint64_t, kGateWords> gates;
    for (Index n0 = 0; n0 < k; n0 += block) {
      const Index m = std::min(block, k - n0);
      for (Index c = 0; c < m; ++c) {
        const Index col = column(columns, n0 + c);
        const Scalar* p = top.col(col).data();
        patterns[static_cast<std::size_t>(c)] = pattern(p);
        Scalar smallest = ratio ? smallest_ratio(p, ratio->inverse_top, units_) : Scalar(0);
        if (below)
          smallest = std::min(smallest, gate_bits(below->col(col).data(), ratio ? ratio->inverse_below : nullptr,
                                                  gates.data() + c * gate_words));
        if (ratio) ratio->smallest[n0 + c] = smallest;
      }
      for (Index s = 0; s < slices; ++s) {
        const Scalar* slice = table_.data() + s * slice_size;
        // This slice's rows in the gate words: kWidth bits from bit `shift` of word `word`.
        const Index word = s * width / 64, shift = s * width % 64;
        const auto gate = [&](simd::Vec acc, Index c) {
          acc *= d[n0 + c];
          if (below) {
            const auto bits = static_cast<unsigned>(gates[static_cast<std::size_t>(c * gate_words + word)] >> shift);
            acc = simd::select(simd::mask_of_bits(bits), acc, simd::zero());
          }
          simd::store(y.col(n0 + c).data() + s * width, acc);
        };
        Index c = 0;
        for (; c + lanes <= m; c += lanes) {
          simd::Vec acc[lanes] = {};
          // A group's entry is read from the pattern in a register (shift and mask): no
          // offsets are loaded from memory, as loads and address arithmetic bound this loop.
          for (int w = 0; w * kGroupsPerWord < groups_; ++w) {
            std::uint64_t bits[lanes];
            for (int q = 0; q < lanes; ++q) bits[q] = patterns[static_cast<std::size_t>(c + q)][w];
            const Scalar* group = slice + w * kGroupsPerWord * kEntries * width;
            const int end = std::min(kGroupsPerWord, groups_ - w * kGroupsPerWord);
            if (end == kGroupsPerWord) {
              // A whole word, unrolled: each group's shift is a constant, so its entry's
              // byte offset is one shift and one mask.
              add_word(acc, bits, group, std::make_integer_sequence<int, kGroupsPerWord>{});
              continue;
            }
            for (int g = 0; g < end; ++g, group += kEntries * width)
              for (int q = 0; q < lanes; ++q) acc[q] += simd::load(group + entry_of(bits[q], g) * width);
          }
          for (int q = 0; q < lanes; ++q) gate(acc[q], c + q);
        }
        for (; c < m; ++c) {
          simd::Vec acc = simd::zero();
          const Pattern& bits = patterns[static_cast<std::size_t>(c)];
          for (int g = 0; g < groups_; ++g)
            acc += simd::load(slice +
                              (g * kEntries + entry_of(bits[g / kGroupsPerWord], g % kGroupsPerWord)) * width);
          gate(acc, c);
        }
      }
    }
  }

 private:
  static constexpr int kGroupsPerWord = 64 / kGroupBits;
  // A top layer column's pattern, 1[pre > 0]: bit i % 64 of word i / 64 for unit i.
  using Pattern = std::array<std::uint64_t, kMaxUnits / 64>;

  static Index column(const Index* columns, Index n) noexcept { return columns ? columns[n] : n; }
  // acc[q] += the entries of the groups G... of pattern word bits[q], `group` at group 0.
  // Inlined whatever the caller's inlining budget: out of line, the accumulators go
  // through memory (the table pass ran 1.6-2x slower in a build where GCC made add_word
  // a call).
  template <int Lanes, int... G>
  AGE_ALWAYS_INLINE static void add_word(simd::Vec (&acc)[Lanes], const std::uint64_t (&bits)[Lanes],
                                         const Scalar* group, std::integer_sequence<int, G...>) noexcept {
    (add_group<G>(acc, bits, group + G * kEntries * simd::kWidth), ...);
  }
  template <int G, int Lanes>
  AGE_ALWAYS_INLINE static void add_group(simd::Vec (&acc)[Lanes], const std::uint64_t (&bits)[Lanes],
                                          const Scalar* group) noexcept {
    constexpr int kEntryBytesLog2 = std::countr_zero(static_cast<unsigned>(simd::kWidth * sizeof(Scalar)));
    constexpr int shift = kGroupBits * G - kEntryBytesLog2;  // the group's bits to the entry's byte offset
    constexpr std::uint64_t mask = std::uint64_t{kEntries - 1} << kEntryBytesLog2;
    const char* base = reinterpret_cast<const char*>(group);
    for (int q = 0; q < Lanes; ++q) {
      std::uint64_t offset;
      if constexpr (shift >= 0)
        offset = (bits[q] >> shift) & mask;
      else
        offset = (bits[q] << -shift) & mask;
      acc[q] += simd::load(reinterpret_cast<const Scalar*>(base + offset));
    }
  }

  // The entry of group g of a pattern word: its 4 bits.
  static Index entry_of(std::uint64_t word, int g) noexcept {
    return static_cast<Index>((word >> (kGroupBits * g)) & (kEntries - 1));
  }

  Pattern pattern(const Scalar* p) const noexcept {
    constexpr int width = simd::kWidth;
    Pattern bits{};
    const Index full = units_ / width * width;
    for (Index i = 0; i < full; i += width)
      bits[static_cast<std::size_t>(i / 64)] |= static_cast<std::uint64_t>(simd::positive_bits(p + i)) << (i % 64);
    for (Index i = full; i < units_; ++i)
      bits[static_cast<std::size_t>(i / 64)] |= static_cast<std::uint64_t>(p[i] > Scalar(0)) << (i % 64);
    return bits;
  }

  // min over i < count of |p[i]| * inverse[i].
  static Scalar smallest_ratio(const Scalar* p, const Scalar* inverse, Index count) noexcept {
    simd::Vec smallest = simd::broadcast(std::numeric_limits<Scalar>::infinity());
    Index i = 0;
    for (; i + simd::kWidth <= count; i += simd::kWidth) {
      const simd::Vec v = simd::abs(simd::load(p + i)) * simd::load(inverse + i);
      smallest = simd::min(smallest, v);
    }
    Scalar tail = simd::min_lanes(smallest);
    for (; i < count; ++i) tail = std::min(tail, std::abs(p[i]) * inverse[i]);
    return tail;
  }

  // Bits i of `words` (64 a word) set where p[i] > 0, for i < rows(); returns the smallest
  // |p[i]| * inverse[i] (0 without `inverse`).
  Scalar gate_bits(const Scalar* p, const Scalar* inverse, std::uint64_t* words) const noexcept {
    constexpr int width = simd::kWidth;
    simd::Vec smallest = simd::broadcast(std::numeric_limits<Scalar>::infinity());
    std::fill(words, words + (rows_ + 63) / 64, std::uint64_t{0});
    for (Index i = 0; i < rows_; i += width) {  // rows() is a whole number of vectors
      words[i / 64] |= static_cast<std::uint64_t>(simd::positive_bits(p + i)) << (i % 64);
      if (inverse) {
        const simd::Vec v = simd::abs(simd::load(p + i)) * simd::load(inverse + i);
        smallest = simd::min(smallest, v);
      }
    }
    return inverse ? simd::min_lanes(smallest) : Scalar(0);
  }

  Matrix table_;  // kWidth x (slices x groups x 16): entry (s, g, e) is one column
  Index rows_ = 0, units_ = 0;
  int groups_ = 0;
};

}  // namespace age::detail
