// FiniteDifferenceModel: gives a CtrModel's probability_gradient to a model that only
// computes logits (a black-box scorer, an inference engine without autodiff), so that it
// can be explored with AGE.
//
// The wrapped model (concept LogitModel) offers user_dim(), item_dim() and EITHER
//   (a) typename Workspace, typename Mask, logits(user, items, const Mask*, Workspace&, out)
//       and, unless Mask is NoDropout, sample_mask(p, columns, rng, mask)  -- the CtrModel
//       forward; masks are passed through, so MC-Dropout works on it;
//   (b) logits(user, items, out) only -- a model without dropout. The adapter's Mask is
//       then NoDropout: MC-Dropout uncertainty refuses it at compile time (DropoutCtrModel)
//       rather than silently giving delta_y = 0; use an uncertainty that needs no masks,
//       e.g. GaussianNoise with a fixed scale, or give the model a mask hook.
// Candidates must be independent (column n of the output depends only on column n of the
// input), as for every CtrModel.
//
// Gradient: central differences of the LOGIT, one input coordinate at a time for all N
// candidates at once (2 batched logit calls per coordinate), then dy/dh = y (1 - y) dz/dh:
//   dz/dh_j ~ (z(h + s e_j) - z(h - s e_j)) / (2 s)
// Error: O(s^2 * z''') truncation plus about eps_float * |z| / s rounding (Scalar is float,
// eps ~ 6e-8): with the default s = 1e-3 and |z| ~ 1 about 1e-4 absolute on dz/dh. Choose s
// near 1e-3 to 1e-2 of your embedding scale; the direction g~ AGE needs tolerates this.
// Cost: 2 * (item_dim [+ user_dim]) logit calls per gradient.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>

#include "age/core/error.hpp"
#include "age/core/limits.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/model/ctr_model.hpp"
#include "age/model/tower.hpp"

namespace age {

namespace detail {
template <class Inner>
concept MaskedLogitModel =
    requires {
      typename Inner::Workspace;
      typename Inner::Mask;
    } &&
    requires(const Inner& m, ConstMatrixRef user, ConstMatrixRef items, const typename Inner::Mask* mask,
             typename Inner::Workspace& ws, Eigen::Ref<RowVector> out) { m.logits(user, items, mask, ws, out); };

template <class Inner>
concept PlainLogitModel = requires(const Inner& m, ConstMatrixRef user, ConstMatrixRef items, Eigen::Ref<RowVector> out) {
  m.logits(user, items, out);
};

struct NoWorkspace {};

template <class Inner>
struct LogitModelTypes {
  using Mask = NoDropout;
  using Workspace = NoWorkspace;
};
template <MaskedLogitModel Inner>
struct LogitModelTypes<Inner> {
  using Mask = typename Inner::Mask;
  using Workspace = typename Inner::Workspace;
};
}  // namespace detail

namespace detail {
template <class Inner>
concept MaskSampler = std::same_as<typename Inner::Mask, NoDropout> ||
                      requires(const Inner& m, double p, Index columns, Rng& rng, typename Inner::Mask& mask) {
                        m.sample_mask(p, columns, rng, mask);
                      };
}  // namespace detail

// What FiniteDifferenceModel needs from the model it wraps: form (a) or (b) above.
template <class Inner>
concept LogitModel =
    requires(const Inner& m) {
      { m.user_dim() } -> std::convertible_to<std::size_t>;
      { m.item_dim() } -> std::convertible_to<std::size_t>;
    } &&
    ((detail::MaskedLogitModel<Inner> && std::default_initializable<typename Inner::Workspace> &&
      std::default_initializable<typename Inner::Mask> && detail::MaskSampler<Inner>) ||
     detail::PlainLogitModel<Inner>);

template <LogitModel Inner>
class FiniteDifferenceModel {
 public:
  using Mask = typename detail::LogitModelTypes<Inner>::Mask;
  struct Workspace {
    typename detail::LogitModelTypes<Inner>::Workspace inner;
    Matrix probe_items, probe_user;
    RowVector plus, minus, width;
  };

  // Keeps a pointer to `inner`, which must outlive the adapter. `step` is s above.
  explicit FiniteDifferenceModel(const Inner& inner, double step = 1e-3) : inner_(&inner), step_(step) {
    detail::check_scale("FiniteDifferenceModel.step", step, /*positive=*/true);
  }
  FiniteDifferenceModel(const Inner&&, double = 1e-3) = delete;

  std::size_t user_dim() const { return static_cast<std::size_t>(inner_->user_dim()); }
  std::size_t item_dim() const { return static_cast<std::size_t>(inner_->item_dim()); }
  double step() const noexcept { return step_; }
  const Inner& inner() const noexcept { return *inner_; }

  void logits(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
              Eigen::Ref<RowVector> out) const {
    if constexpr (detail::MaskedLogitModel<Inner>) {
      inner_->logits(user, items, mask, ws.inner, out);
    } else {
      (void)mask;
      (void)ws;
      inner_->logits(user, items, out);
    }
  }

  void probability_gradient(ConstMatrixRef user, ConstMatrixRef items, const Mask* mask, Workspace& ws,
                            Eigen::Ref<RowVector> prob, Matrix* d_items, Matrix* d_user = nullptr) const {
    const Index n = items.cols();
    detail::require_dim("probability output length", static_cast<std::size_t>(n), static_cast<std::size_t>(prob.size()));
    logits(user, items, mask, ws, prob);
    sigmoid_in_place(prob);
    ws.plus.resize(n);
    ws.minus.resize(n);
    const Scalar s = static_cast<Scalar>(step_);
    if (d_items) {
      d_items->resize(items.rows(), n);
      ws.probe_items = items;
      for (Index j = 0; j < items.rows(); ++j) {
        ws.probe_items.row(j).array() += s;
        logits(user, ws.probe_items, mask, ws, ws.plus);
        ws.probe_items.row(j) = items.row(j);
        ws.probe_items.row(j).array() -= s;
        logits(user, ws.probe_items, mask, ws, ws.minus);
        // The float step actually taken, (x + s) - (x - s), not 2 s.
        ws.width = (items.row(j).array() + s) - (items.row(j).array() - s);
        ws.probe_items.row(j) = items.row(j);
        d_items->row(j) = (ws.plus - ws.minus).cwiseQuotient(ws.width);
      }
      scale_rows(prob, *d_items);
    }
    if (d_user) {
      // A shared user column moves for every candidate at once; each candidate's logit
      // depends on its own input only, so the per-candidate partials come out together.
      d_user->resize(user.rows(), n);
      ws.probe_user = user;
      for (Index j = 0; j < user.rows(); ++j) {
        ws.probe_user.row(j).array() += s;
        logits(ws.probe_user, items, mask, ws, ws.plus);
        ws.probe_user.row(j) = user.row(j);
        ws.probe_user.row(j).array() -= s;
        logits(ws.probe_user, items, mask, ws, ws.minus);
        ws.width = (user.row(j).array() + s) - (user.row(j).array() - s);
        ws.probe_user.row(j) = user.row(j);
        if (user.cols() == 1)
          d_user->row(j) = (ws.plus - ws.minus) / ws.width[0];
        else
          d_user->row(j) = (ws.plus - ws.minus).cwiseQuotient(ws.width);
      }
      scale_rows(prob, *d_user);
    }
  }

  void sample_mask(double p, Index columns, Rng& rng, Mask& mask) const
    requires(!std::same_as<Mask, NoDropout>)
  {
    inner_->sample_mask(p, columns, rng, mask);
  }

 private:
  // dy/dh = y (1 - y) * dz/dh, per candidate column.
  static void scale_rows(Eigen::Ref<const RowVector> prob, Matrix& d) {
    for (Index i = 0; i < d.cols(); ++i) d.col(i) *= prob[i] * (Scalar(1) - prob[i]);
  }

  const Inner* inner_;
  double step_;
};

}  // namespace age
