// The reference workload of the scoring benchmarks, fixed so that figures compare over
// time and between engines (age_bench and the libtorch peer build it from this header,
// so both score the very same weights and inputs):
//   h = [user | item]: user 128 floats (8 fields x 16), item 64 floats (4 fields x 16)
//   tower 192-256-64-1, ReLU, one output logit; MC-Dropout p = 0.01 on the hidden units
//   DGU 64-32-1 on the item part; perturbation of the item part; lambda' = 1e-3
//   AGE-UCB with 20 mask samples, PGD with T = 3 steps
// Requests are defined on the embedding level (the random user vector and item matrix of
// a request stand for the embedding lookup, which is not what is measured here).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/explore/gate.hpp"
#include "age/model/tower.hpp"

namespace age::bench {

inline constexpr std::size_t kUserDim = 8 * 16;
inline constexpr std::size_t kItemDim = 4 * 16;
inline constexpr std::size_t kHidden0 = 256;
inline constexpr std::size_t kHidden1 = 64;
inline constexpr std::size_t kDguHidden = 32;
inline constexpr double kDropout = 0.01;
inline constexpr double kLambda = 1e-3;
inline constexpr std::size_t kUcbSamples = 20;
inline constexpr std::size_t kPgdSteps = 3;

// Candidates per request.
inline constexpr std::array<Index, 4> kSizes{1, 10, 100, 1000};
// Distinct requests per size that a benchmark cycles through (so that the gates, and so
// the number of explored candidates, vary from request to request as they do in service).
inline constexpr std::size_t kRequestsPerSize = 8;

enum class Policy { greedy, age_ts_fgm, age_ts_pgd3, age_ucb20_fgm };
inline constexpr std::array<Policy, 4> kPolicies{Policy::greedy, Policy::age_ts_fgm, Policy::age_ts_pgd3,
                                                 Policy::age_ucb20_fgm};

constexpr std::string_view name(Policy p) {
  switch (p) {
    case Policy::greedy: return "greedy";
    case Policy::age_ts_fgm: return "age_ts_fgm";
    case Policy::age_ts_pgd3: return "age_ts_pgd3";
    case Policy::age_ucb20_fgm: return "age_ucb20_fgm";
  }
  return "?";
}

struct Workload {
  Tower tower{kUserDim, kItemDim, {kHidden0, kHidden1}};
  Tower dgu = make_dgu_tower(kItemDim, kDguHidden);
  // requests[s][r]: user vector (user_dim x 1) and items (item_dim x kSizes[s]).
  std::vector<std::vector<Matrix>> users, items;

  Workload() {
    Rng rng(2022, 5);
    tower.initialize(rng);
    dgu.initialize(rng);
    // Embedding entries of unit scale; the tower's PyTorch-style initialisation then gives
    // logits of order 1.
    auto fill = [&rng](Matrix& m) {
      for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(rng.normal());
    };
    users.resize(kSizes.size());
    items.resize(kSizes.size());
    for (std::size_t s = 0; s < kSizes.size(); ++s) {
      for (std::size_t r = 0; r < kRequestsPerSize; ++r) {
        Matrix u(static_cast<Index>(kUserDim), 1), x(static_cast<Index>(kItemDim), kSizes[s]);
        fill(u);
        fill(x);
        users[s].push_back(std::move(u));
        items[s].push_back(std::move(x));
      }
    }
    calibrate_dgu(fill);
  }

 private:
  // A trained DGU estimates the item's average CTR over users, so that about half of a
  // user's candidates score above it. Random weights do not; shift the DGU's output bias
  // so that its mean logit equals the tower's over a calibration sample.
  template <class Fill>
  void calibrate_dgu(Fill& fill) {
    const Index n = 4096;
    Matrix u(static_cast<Index>(kUserDim), n), x(static_cast<Index>(kItemDim), n);
    fill(u);
    fill(x);
    TowerWorkspace ws;
    RowVector z(n), zd(n);
    tower.logits(u, x, nullptr, ws, z);
    const Matrix none(0, 1);
    dgu.logits(none, x, nullptr, ws, zd);
    dgu.edit().bias(1)[0] += z.mean() - zd.mean();
  }
};

// Useful floating-point operations (multiply-adds count 2) of one request, per policy;
// matrix products only (bias, ReLU, masks, sigmoid and the certified linear moves' dot
// products are O(H) per candidate and left out). N candidates, k of them with an open gate
// (explored), m of those moved by the full pass (not certified linear, see
// Tower::set_linear_moves; m = k without the shortcut), H0 = 256, H1 = 64, du = 128,
// di = 64, Hd = 32:
//   user part of layer 0, once per request        U  = 2 du H0
//   no-dropout pass per candidate                 F  = 2 di H0 + 2 H0 H1 + 2 H1
//   DGU per candidate                             G  = 2 di Hd + 2 Hd
//   one MC-Dropout pass per candidate             D  = 2 H1 (p H0) + 2 H1
//     (a mask on the hidden units leaves layer 0's pre-activation unchanged; with the mask
//      shared by the candidates, layer 1 differs from the no-dropout pass only through
//      the ~p H0 dropped units: a rank-(p H0) update)
//   input gradient per explored candidate         B  = H0 H1 / 4 + 2 di H0 + 2 H1
//     (its first product, W1^T times the 0/1 ReLU pattern of layer 1 scaled by w_out, by
//      the tower's sign table: H1 / 4 table vectors added per output element, see
//      Tower::set_gradient_tables; as a product it would be 2 H0 H1)
//   pass at h + dh per fully moved candidate      M  = 2 di H0 + 2 H0 H1 + 2 H1
//     (only the item part moves: pre0 + W_item dh; a certified move is logit + grad . dh,
//      and its gradient at h + dh is the one at h)
//   greedy           U + N F
//   AGE-TS + FGM     U + N (F + G + D) + k B + m M
//   AGE-TS + PGD-3   U + N (F + G + D) + k B + m (2 (M + B) + M)
//   AGE-UCB-20 + FGM U + N (F + G + 20 D) + k B + m M
inline double useful_flops(Policy policy, double n, double k, double m) {
  const double du = kUserDim, di = kItemDim, h0 = kHidden0, h1 = kHidden1, hd = kDguHidden;
  const double u = 2 * du * h0;
  const double f = 2 * di * h0 + 2 * h0 * h1 + 2 * h1;
  const double g = 2 * di * hd + 2 * hd;
  const double d = 2 * h1 * (kDropout * h0) + 2 * h1;
  const double b = h0 * h1 / 4 + 2 * di * h0 + 2 * h1;
  const double mv = 2 * di * h0 + 2 * h0 * h1 + 2 * h1;
  switch (policy) {
    case Policy::greedy: return u + n * f;
    case Policy::age_ts_fgm: return u + n * (f + g + d) + k * b + m * mv;
    case Policy::age_ts_pgd3:
      return u + n * (f + g + d) + k * b + m * (static_cast<double>(kPgdSteps - 1) * (mv + b) + mv);
    case Policy::age_ucb20_fgm: return u + n * (f + g + static_cast<double>(kUcbSamples) * d) + k * b + m * mv;
  }
  return 0;
}

// The ceiling's product: a plain float GEMM of 1000 x 192 x 256 (candidates x full input
// x first hidden layer), i.e. the unsplit first layer for 1000 candidates.
inline constexpr Index kCeilingN = 1000;
inline constexpr double kCeilingFlops = 2.0 * 1000 * 192 * 256;

}  // namespace age::bench
