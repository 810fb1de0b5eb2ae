// The MC-Dropout rank update (M26) of a request's masked passes (the Uncertainty step of
// the method: delta_y from f(h | theta (.) M), (M10) and (M11), with dropout masks M on the
// hidden units), and
// the output logits read from the top hidden layer's product panel by panel.
//
// A dropout mask acts on the hidden units, so the first layer's pre-activation is the
// same under every mask. With a mask m on hidden layer 0 shared by the request's
// candidates, s its largest value (the kept units' scale 1 / (1 - p)) and J the units where
// m_j != s (the dropped ones: p H0 ~ 2.6 of 256 at p = 0.01), the next layer under the
// mask differs from the cached no-dropout pre1 = W1 a0 + b1 (a0 = ReLU(pre0)) by a
// rank-|J| update:
//   W1 (m .* a0) + b1 = s pre1 + (1 - s) b1 + sum_{j in J} (m_j - s) W1[:, j] a0[j, :]
// exact up to float rounding, about 64 x (|J| + 2) multiply-adds per candidate instead of
// 64 x 256 for the reference tower. Used when m is shared and |J| <= H0 / 4.
#pragma once

#include <cstddef>

#include "age/core/simd.hpp"
#include "age/core/types.hpp"
#include "age/model/dropout.hpp"
#include "age/model/gemm.hpp"
#include "age/model/tower_layers.hpp"
#include "age/model/tower_workspace.hpp"

namespace age::detail {

namespace gemm_kernel {

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
// the rank-|J| update below, without reading the cached pass again.
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

// OutputLogits of the nc <= kCols columns of Y (m rows) starting at column j, as the
// product kernel's panel hook (gemm_kernel::PanelHook: called out of line).
inline void output_logits(const void* context, long m, long nc, long j, const float* x, long ldx, const float* y,
                          long ldy) noexcept {
  const OutputLogits& o = *static_cast<const OutputLogits*>(context);
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


// The kernel's panel hook that writes `o`'s logits (o must outlive the product).
inline PanelHook output_logits_hook(const OutputLogits& o) noexcept { return PanelHook{&output_logits, &o}; }

}  // namespace gemm_kernel

// J, s and each changed unit's column W1[:, j] and factor m_j - s of mask m0 (hidden layer
// 0) into rq; false (use the dense product) for a per-candidate mask or when more than a
// quarter of the units changed. The same for every candidate of the request.
inline bool changed_units(const TowerLayers& t, const Matrix& m0, TowerRequestScratch& rq, Scalar& s) {
  if (m0.cols() != 1) return false;
  const auto m = m0.col(0);
  const Index h0 = m.size();
  s = m.maxCoeff();
  rq.changed.clear();
  rq.changed_column.clear();
  rq.changed_factor.clear();
  for (Index j = 0; j < h0; ++j) {
    if (m[j] == s) continue;
    if (static_cast<Index>(rq.changed.size()) * 4 >= h0) return false;
    rq.changed.push_back(j);
    rq.changed_column.push_back(t.weights[1].col(j).data());
    rq.changed_factor.push_back(m[j] - s);
  }
  return true;
}

// Layer 1's pre-activation under the mask, for the candidate in column c of the cached
// pass (pre0, pre1), into `col` (after changed_units()).
inline void sparse_column(const TowerLayers& t, const TowerRequestScratch& rq, Scalar s, const Matrix& pre0,
                          const Matrix& pre1, Index c, Eigen::Ref<Vector> col) {
  col = s * pre1.col(c) + (Scalar(1) - s) * t.biases[1];
  for (std::size_t q = 0; q < rq.changed.size(); ++q) {
    const Scalar a = pre0(rq.changed[q], c);
    if (a > Scalar(0)) col += (rq.changed_factor[q] * a) * t.weights[1].col(rq.changed[q]);
  }
}

// The masked logit of a tower of TWO hidden layers in one go (the named specialisation of
// this update: layer 1 is then the top hidden layer, and each candidate's masked logit is
// the update and the output layer in one vectorised, branch-free loop, pre1' never
// stored): the OutputLogits of changed_units()'s J and s, with the top layer's shared mask
// folded into rq.output_weights by the caller, masked logits into `out`. Read from each
// panel of layer 1's product by a request's first pass, or from the cached pass.
inline gemm_kernel::OutputLogits two_layer_masked_logits(const TowerLayers& t, Scalar s, TowerRequestScratch& rq,
                                                         Scalar* out) {
  rq.changed_scale.resize(rq.changed.size() * gemm_kernel::kCols);
  gemm_kernel::OutputLogits o;
  o.weights = t.weights[2].data();  // 1 x H1: contiguous
  o.out_bias = t.biases[2][0];
  o.masked_weights = rq.output_weights.data();
  o.bias = t.biases[1].data();
  o.scale = s;
  o.changed = rq.changed.size();
  o.changed_rows = rq.changed.data();
  o.changed_columns = rq.changed_column.data();
  o.changed_factor = rq.changed_factor.data();
  o.factor_scratch = rq.changed_scale.data();
  o.masked_out = out;
  return o;
}

}  // namespace age::detail
