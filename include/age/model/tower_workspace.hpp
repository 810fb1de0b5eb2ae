// The caller-owned scratch space of one thread's tower passes: the buffers of the plain
// and training passes (age/model/plain_passes.hpp) and the cached state of a request
// (age/model/request_passes.hpp). Sized on first use; the request passes' buffers only
// grow, so a warmed-up workspace serves any request up to the largest seen, and any
// subset of its candidates, without allocating.
#pragma once

#include <cstdint>
#include <vector>

#include "age/core/types.hpp"
#include "age/core/workspace_use.hpp"
#include "age/model/dropout.hpp"

namespace age {

// What a workspace holds of a request, one stage at a time. Each request_* pass requires
// a stage and leaves one (request_passes.hpp):
//   none        no request: none was begun, or a plain pass (forward) ended it
//   cached      begin_request(): the no-dropout pass of the request's candidates (after
//               request_select(): of the kept ones); request_logits() keeps this stage
//   moved       and a moved pass computed in full (request_moved_logits)
//   gradient    cached, and the logit's input gradient with the certified radii at h
//               (request_item_gradient)
//   gradient_moved   gradient, and a moved pass computed in full
//   gradient_linear  gradient, and a moved pass whose certified candidates stayed in one
//               linear piece; the others' passes are gathered in `pre` (full_moves)
// request_select() and request_logits() fall back to `cached` or `gradient` (the moved
// pass's buffers are reused); request_moved_item_gradient() needs one of the moved stages.
enum class RequestStage : std::uint8_t { none, cached, moved, gradient, gradient_moved, gradient_linear };

namespace detail {
constexpr bool has_gradient(RequestStage s) noexcept {
  return s == RequestStage::gradient || s == RequestStage::gradient_moved || s == RequestStage::gradient_linear;
}
constexpr bool has_moved_pass(RequestStage s) noexcept {
  return s == RequestStage::moved || s == RequestStage::gradient_moved || s == RequestStage::gradient_linear;
}
// The stage once the moved pass's buffers are reused for something else.
constexpr RequestStage without_moved_pass(RequestStage s) noexcept {
  return s == RequestStage::none ? s : has_gradient(s) ? RequestStage::gradient : RequestStage::cached;
}
}  // namespace detail

// The request's cached state beyond the first pass's own buffers (TowerWorkspace::pre).
struct TowerRequestScratch {
  RequestStage stage = RequestStage::none;
  Index columns = 0;         // candidates in the request (after request_select)
  // After request_select(): the cached pass's column of each request candidate, read in
  // place by the passes (empty: candidate j is column j).
  std::vector<Index> kept;
  RowVector logits;          // the no-dropout logits of the request's candidates
  std::vector<Matrix> pre;   // per layer: pre-activations of the last masked or moved pass
  std::vector<Matrix> act;   // per hidden layer: activations, then backward scratch
  // The MC-Dropout rank update (age/model/masked_update.hpp).
  std::vector<Index> changed;                 // hidden-0 units whose mask value is not the common scale
  std::vector<const Scalar*> changed_column;  // ... their columns W1[:, j]
  std::vector<Scalar> changed_factor;         // ... m_j - s
  std::vector<Scalar> changed_scale;          // ... per candidate: (m_j - s) ReLU(a0_j), kCols at a time
  Vector output_weights;     // w_out with a shared mask of the top hidden layer folded in
  // Certified linear moves (age/model/certified_moves.hpp).
  Matrix unit_gradient;            // d logit / d items at h, item_dim x columns
  RowVector radius;                // each candidate's certified radius at h
  std::vector<Index> full_moves;   // the candidates of the last moved pass computed in full
  Matrix gathered;                 // item_dim x |full_moves|: their moves, then their gradients
  RowVector gathered_logit, ones;
};

// Scratch of one thread's passes. Holds the pre-activations and activations of the last
// forward pass, which backward() reads.
struct TowerWorkspace {
  Vector user_pre;             // W_user * user + b0, when the user column is shared
  std::vector<Matrix> pre;     // pre-activation of each layer (last: 1 x N logits)
  std::vector<Matrix> act;     // ReLU(pre) (.* mask) of each hidden layer; a request's
                               // first pass writes none (backward() writes them then)
  std::vector<Matrix> d_pre;   // backward: d(objective)/d(pre-activation) of each layer
  RowVector d_logit;           // upstream gradient scratch of probability_gradient()
  Matrix transposed;           // backward: an activation transposed for a weight gradient
  const DropoutMask* mask = nullptr;  // mask of the last forward pass
  bool shared_user = true;
  bool acts_written = true;    // act holds ReLU(pre) of the last forward pass
  Index batch = 0;
  TowerRequestScratch request;
  detail::WorkspaceMark in_use;  // debug builds: one pass at a time (workspace_use.hpp)

  // Logits of the last forward pass (N), as a row.
  auto logits() const { return pre.back().row(0); }
};

}  // namespace age
