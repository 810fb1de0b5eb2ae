// Gradient-TS and Gradient-UCB of the paper's Table 1 ((M22), METHOD.md "Baselines"):
// NeuralTS / NeuralUCB in their diagonal form, with the uncertainty of a
// candidate measured by the gradient g of the model output with respect to the NETWORK
// WEIGHTS (every weight and bias of the tower; not the embeddings):
//
//   sigma^2 = lambda * nu^2 * sum_k g_k^2 / U_k            (diagonal g^T U^-1 g)
//   U_k     = lambda + sum over shown candidates of g_k^2  (observe())
//
// This is NeuralTS's posterior variance lambda * nu^2 * g^T U^-1 g / m with U kept diagonal
// and the width factor 1/m folded into nu. The form is also written lambda * nu * sum(g^2/U);
// with nu squared here, nu is the scale of sigma itself (NeuralTS's nu, NeuralUCB's gamma).
// Before any observation U = lambda, so sigma = nu * ||g||_2: the "L2 norm of the gradient"
// of the paper's baseline.
//
// Batched closed form. For layer l with input activations a_{l-1} (a_{-1} = [user; item])
// and d_l = d f / d pre_l, candidate n's gradient is the outer product d_l[:,n] a_{l-1}[:,n]^T
// for W_l and d_l[:,n] for b_l, so
//   sum_k g_k^2 / U_k = sum_l 1^T ( d_l^2 .* ( (1/U_W_l) a_{l-1}^2 + 1/U_b_l ) )
// (squares and 1/U elementwise), one matrix product per layer for all N candidates, the
// cost of a forward pass; no per-candidate gradient is ever materialised. The d_l come
// from one batched backward pass with d f / d logit as its seed.
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "age/core/rng.hpp"
#include "age/explore/baselines/common.hpp"
#include "age/model/tower.hpp"

namespace age {

namespace detail::baseline {
inline const Tower& tower_of(const Tower& tower) noexcept { return tower; }

template <class M>
  requires requires(const M& m) {
    { m.tower() } -> std::convertible_to<const Tower&>;
  }
const Tower& tower_of(const M& model) {
  return model.tower();
}
}  // namespace detail::baseline

// A CtrModel whose network is an age::Tower the gradient policies can read: a Tower itself,
// or a model with `const Tower& tower() const` whose logits are that tower's over the same
// [user | item] input (as EmbeddingCtrModel). The gradient policies score with the tower.
template <class M>
concept TowerCtrModel = CtrModel<M> && requires(const M& m) {
  { detail::baseline::tower_of(m) } -> std::same_as<const Tower&>;
};

// Which output f the weight gradient g is taken of.
//   probability: f = sigmoid(z); sigma is in probability units and the explored score is
//                base + shift (the paper's f is the probability; default).
//   logit:       f = z; sigma is in logit units and the explored score is sigmoid(z + shift).
enum class GradientOutput { probability, logit };

struct GradientConfig {
  double lambda = 1.0;  // > 0: NeuralTS's regulariser; U starts at lambda for every weight
  double nu = 1.0;      // > 0: exploration scale (Greedy is the policy without exploration) (sigma = nu * ||g|| before any observation)
  GradientOutput output = GradientOutput::probability;
  std::uint64_t seed = 0;  // with the request id, seeds Gradient-TS's normal draws
};

// Per-thread scratch space of the gradient policies; sized on first use, reused after.
struct GradientWorkspace {
  TowerWorkspace tower;
  std::vector<Matrix> d_pre;  // per layer: d f / d pre_l (out_l x N)
  std::vector<Matrix> bound;  // per layer: (1/U_W_l) a_{l-1}^2 + 1/U_b_l (out_l x N)
  std::vector<Matrix> sq_in;  // per layer: a_{l-1}^2 (layer 0: the items part only)
  Matrix sq_user;             // user^2 (user_dim x 1 or user_dim x N)
  Matrix user_term;           // (1/U_W_0,user) user^2 when the user column is shared (out_0 x 1)
  RowVector quad;             // sum_k g_k^2 / U_k per candidate
  RowVector sigma;            // sigma per candidate
  detail::WorkspaceMark in_use;  // debug builds: one call at a time
};

namespace detail::baseline {

// The state both gradient policies share: the model pointer, the configuration and the
// diagonal U (shaped like the tower's parameters), with its elementwise inverse cached
// so that scoring is products only.
template <TowerCtrModel Model>
class GradientState : public CandidateLimit {
 public:
  GradientState(const Model& model, GradientConfig config, const char* name)
      : model_(&model), config_(config), name_(name) {
    require_usable_model(model, name_);
    check_scale(name_ + ".lambda", config_.lambda, /*positive=*/true);
    check_scale(name_ + ".nu", config_.nu, /*positive=*/true);
    reset();
  }

  // U = lambda for every weight and bias of the model's current tower; forgets every
  // observation (also the way to adopt a tower whose shape changed).
  void reset() {
    const Tower& t = tower();
    const std::size_t layers = t.num_layers();
    const auto lambda = static_cast<Scalar>(config_.lambda);
    u_.weights.resize(layers);
    u_.biases.resize(layers);
    inv_u_.weights.resize(layers);
    inv_u_.biases.resize(layers);
    for (std::size_t l = 0; l < layers; ++l) {
      const auto rows = static_cast<Index>(t.out_size(l)), cols = static_cast<Index>(t.in_size(l));
      u_.weights[l].setConstant(rows, cols, lambda);
      u_.biases[l].setConstant(rows, lambda);
      inv_u_.weights[l].setConstant(rows, cols, Scalar(1) / lambda);
      inv_u_.biases[l].setConstant(rows, Scalar(1) / lambda);
    }
    sq_.resize(layers);
    observations_ = 0;
  }

  // U += g^2 for the candidate that was shown (NeuralTS's design-matrix update, diagonal),
  // with g taken at the model's current weights. `clicked` does not enter U: the reward
  // trains the model, which is done elsewhere. Not safe concurrently with score().
  void observe(const Request& request, Index shown, bool clicked) {
    (void)clicked;
    if (shown < 0 || shown >= request.size())
      throw InputError(name_ + ".observe: shown candidate index: expected in [0, " + std::to_string(request.size()) +
                       "), got " + std::to_string(shown));
    require_usable_model(*model_, name_);
    const Tower& t = tower();
    check_shape(t);
    // A non-finite embedding would poison U for good.
    detail::require_request(request, static_cast<Index>(t.user_dim()), static_cast<Index>(t.item_dim()),
                            this->max_candidates());
    const ConstMatrixRef user = request.user.col(request.user.cols() == 1 ? 0 : shown);
    const ConstMatrixRef item = request.items.col(shown);
    t.forward(user, item, nullptr, obs_.tower);
    seed_output_gradient(obs_);
    const Index di = static_cast<Index>(t.item_dim()), du = static_cast<Index>(t.user_dim());
    backward_layers(t, obs_, [&](std::size_t l, const Matrix& d) {
      Vector& d2 = sq_[l];
      d2 = d.col(0).array().square().matrix();
      u_.biases[l] += d2;
      Matrix& uw = u_.weights[l];
      // Outer product d2 a^2^T, one column (input unit) at a time.
      if (l > 0) {
        const auto a = obs_.tower.act[l - 1].col(0);
        for (Index j = 0; j < uw.cols(); ++j) uw.col(j) += (a[j] * a[j]) * d2;
      } else {
        for (Index j = 0; j < di; ++j) uw.col(du + j) += (item(j, 0) * item(j, 0)) * d2;
        for (Index j = 0; j < du; ++j) uw.col(j) += (user(j, 0) * user(j, 0)) * d2;
      }
      inv_u_.weights[l] = uw.cwiseInverse();
      inv_u_.biases[l] = u_.biases[l].cwiseInverse();
    });
    ++observations_;
  }

  // sigma of every candidate of the request (N), in the units of the configured output.
  void uncertainty(const Request& request, GradientWorkspace& ws, Eigen::Ref<RowVector> sigma) const {
    if (sigma.size() != request.size())
      detail::require_dim(name_ + ".uncertainty: output length", static_cast<std::size_t>(request.size()),
                          static_cast<std::size_t>(sigma.size()));
    compute_sigma(request, ws);
    sigma = ws.sigma;
  }

  const Model& model() const noexcept { return *model_; }
  const Tower& tower() const { return tower_of(*model_); }
  const GradientConfig& config() const noexcept { return config_; }
  // The diagonal U, shaped like the tower's weights and biases.
  const TowerGradients& precision() const noexcept { return u_; }
  std::uint64_t observations() const noexcept { return observations_; }

 protected:
  // Forward pass into ws.tower (logits), then ws.quad = sum(g^2 / U) and
  // ws.sigma = nu * sqrt(lambda * quad) for every candidate.
  void compute_sigma(const Request& request, GradientWorkspace& ws) const {
    require_usable_model(*model_, name_);  // moved from since it was built?
    const Tower& t = tower();
    check_shape(t);
    detail::require_request(request, static_cast<Index>(t.user_dim()), static_cast<Index>(t.item_dim()),
                            this->max_candidates());
    t.forward(request.user, request.items, nullptr, ws.tower);
    const Index n = request.size();
    const Index di = static_cast<Index>(t.item_dim()), du = static_cast<Index>(t.user_dim());
    const bool shared_user = request.user.cols() == 1;
    seed_output_gradient(ws);
    ws.quad.setZero(n);
    ws.bound.resize(t.num_layers());
    ws.sq_in.resize(t.num_layers());
    backward_layers(t, ws, [&](std::size_t l, const Matrix& d) {
      Matrix& bound = ws.bound[l];
      Matrix& sq = ws.sq_in[l];
      const Matrix& inv_w = inv_u_.weights[l];
      if (l > 0) {
        sq = ws.tower.act[l - 1].array().square().matrix();
        bound.noalias() = inv_w * sq;
      } else {
        sq = request.items.array().square().matrix();
        bound.noalias() = inv_w.rightCols(di) * sq;
        if (du > 0) {
          ws.sq_user = request.user.array().square().matrix();
          if (shared_user) {
            ws.user_term.noalias() = inv_w.leftCols(du) * ws.sq_user;  // once per request
            bound.colwise() += ws.user_term.col(0);
          } else {
            bound.noalias() += inv_w.leftCols(du) * ws.sq_user;
          }
        }
      }
      bound.colwise() += inv_u_.biases[l];
      ws.quad += (d.array().square() * bound.array()).colwise().sum().matrix();
    });
    const auto scale2 = static_cast<Scalar>(config_.lambda * config_.nu * config_.nu);
    ws.sigma = (scale2 * ws.quad.array()).max(Scalar(0)).sqrt().matrix();
  }

 private:
  // Per-layer scratch of observe() (single candidate, single writer).
  struct ObserveScratch {
    TowerWorkspace tower;
    std::vector<Matrix> d_pre;
  };

  // d f / d logit for every column of the last forward pass, into d_pre[L - 1].
  template <class Ws>
  void seed_output_gradient(Ws& ws) const {
    const auto layers = tower().num_layers();
    ws.d_pre.resize(layers);
    const auto z = ws.tower.logits();
    Matrix& top = ws.d_pre[layers - 1];
    top.resize(1, z.size());
    for (Index i = 0; i < z.size(); ++i) {
      if (config_.output == GradientOutput::logit) {
        top(0, i) = Scalar(1);
      } else {
        const Scalar p = sigmoid(z[i]);
        top(0, i) = p * (Scalar(1) - p);
      }
    }
  }

  // Walks d_pre from the output layer down (no dropout: ReLU gates only), calling
  // visit(l, d_pre_l) on each layer. Same recursion as Tower::backward, but every layer's
  // d_pre is kept for the visitor.
  template <class Ws, class Visit>
  static void backward_layers(const Tower& t, Ws& ws, Visit&& visit) {
    for (std::size_t l = t.num_layers(); l-- > 0;) {
      visit(l, ws.d_pre[l]);
      if (l == 0) break;
      Matrix& below = ws.d_pre[l - 1];
      below.noalias() = t.weight(l).transpose() * ws.d_pre[l];
      below = (ws.tower.pre[l - 1].array() > Scalar(0)).select(below, Scalar(0));
    }
  }

  // The tower still has the shape U was sized for (messages are built only on a mismatch,
  // so the check costs no allocation on the scoring path).
  void check_shape(const Tower& t) const {
    bool same = u_.weights.size() == t.num_layers();
    for (std::size_t l = 0; same && l < t.num_layers(); ++l)
      same = static_cast<std::size_t>(u_.weights[l].rows()) == t.out_size(l) &&
             static_cast<std::size_t>(u_.weights[l].cols()) == t.in_size(l);
    if (same) return;
    detail::require_dim(name_ + ": tower layers (U was sized for; call reset())", u_.weights.size(), t.num_layers());
    for (std::size_t l = 0; l < t.num_layers(); ++l) {
      detail::require_dim(name_ + ": tower layer " + std::to_string(l) + " outputs (U was sized for; call reset())",
                          static_cast<std::size_t>(u_.weights[l].rows()), t.out_size(l));
      detail::require_dim(name_ + ": tower layer " + std::to_string(l) + " inputs (U was sized for; call reset())",
                          static_cast<std::size_t>(u_.weights[l].cols()), t.in_size(l));
    }
  }

  const Model* model_;
  GradientConfig config_;
  std::string name_;
  TowerGradients u_, inv_u_;
  std::vector<Vector> sq_;
  ObserveScratch obs_;
  std::uint64_t observations_ = 0;
};

}  // namespace detail::baseline

// Gradient-TS (diagonal NeuralTS over the tower's weights), a LearningExplorer:
//   explored = f + sigma * xi,  xi ~ N(0, 1) per candidate from Rng(seed, request id),
//   base = sigmoid(z), delta = sigma * xi (signed, in the units of f), gate = 1,
// with f and the form of `explored` as GradientOutput describes (logit: sigmoid(z + sigma xi)).
// Call observe(request, shown, clicked) for every shown candidate (U += g^2); observe() is
// not thread-safe and must not run while other threads score.
// Defaults: lambda = 1, nu = 1 (tune nu to the data), output = probability, seed = 0.
// Requires: Model satisfies TowerCtrModel; the model must outlive the policy. Throws
// ConfigError for lambda <= 0 or nu <= 0 (or non-finite).
template <TowerCtrModel Model>
class GradientTs : public detail::baseline::GradientState<Model> {
  using State = detail::baseline::GradientState<Model>;

 public:
  using Workspace = GradientWorkspace;

  explicit GradientTs(const Model& model, GradientConfig config = {}) : State(model, config, "GradientTs") {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const detail::WorkspaceUse use(ws.in_use, "GradientTs::score");
    this->compute_sigma(request, ws);
    out.resize(request.size());
    Rng rng(this->config().seed, request.id);
    const auto z = ws.tower.logits();
    const bool logit = this->config().output == GradientOutput::logit;
    for (Index i = 0; i < request.size(); ++i) {
      const Scalar shift = ws.sigma[i] * static_cast<Scalar>(rng.normal());
      out.base[i] = sigmoid(z[i]);
      out.delta[i] = shift;
      out.explored[i] = logit ? sigmoid(z[i] + shift) : out.base[i] + shift;
    }
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    out.rank();
    detail::baseline::finish(out);
  }
};

// Gradient-UCB (diagonal NeuralUCB over the tower's weights), a LearningExplorer:
//   explored = f + sigma,  base = sigmoid(z), delta = sigma (>= 0), gate = 1,
// (logit output: sigmoid(z + sigma)). No randomness. observe() as for GradientTs.
// Defaults and requirements as GradientTs (the seed is unused).
template <TowerCtrModel Model>
class GradientUcb : public detail::baseline::GradientState<Model> {
  using State = detail::baseline::GradientState<Model>;

 public:
  using Workspace = GradientWorkspace;

  explicit GradientUcb(const Model& model, GradientConfig config = {}) : State(model, config, "GradientUcb") {}

  void score(const Request& request, ScoredRequest& out, Workspace& ws) const {
    const detail::WorkspaceUse use(ws.in_use, "GradientUcb::score");
    this->compute_sigma(request, ws);
    out.resize(request.size());
    const auto z = ws.tower.logits();
    const bool logit = this->config().output == GradientOutput::logit;
    for (Index i = 0; i < request.size(); ++i) {
      out.base[i] = sigmoid(z[i]);
      out.delta[i] = ws.sigma[i];
      out.explored[i] = logit ? sigmoid(z[i] + ws.sigma[i]) : out.base[i] + ws.sigma[i];
    }
    std::fill(out.gate.begin(), out.gate.end(), std::uint8_t{1});
    out.rank();
    detail::baseline::finish(out);
  }
};

}  // namespace age
