// ModelAgent, the study's learner: the replay model (user features as a multi-hot bag, the
// article id as a categorical field, tower 256-64 with one output logit, optionally a DGU
// and an ensemble of M models), trained online with the same LearningSettings for every
// policy, and an exploration policy (any age Explorer, boxed as an age::AnyExplorer) that
// turns the model's scores into a pick. It implements age::sim::Agent, so the library's
// replay evaluator and online runner drive it. Study code, not library code: its settings
// are the study's specification (README, "The model and its learning settings").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/core/types.hpp"
#include "age/explore/any_explorer.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/request.hpp"
#include "age/features/layout.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/sim/agent.hpp"
#include "age/model/stacked_member.hpp"
#include "age/train/optimizer.hpp"
#include "age/train/trainer.hpp"

namespace study {

// The study is written in the library's terms (it lived in age::sim before it moved out
// of the installed headers); the directives keep it in those terms.
using namespace age;
using namespace age::sim;

// The learning settings of the replay model: one value, the same for every policy.
struct LearningSettings {
  std::size_t feature_rows = 4096;    // hash rows of the user feature bag (136 ids)
  std::size_t article_rows = 65536;   // hash rows of the article id (652 ids, few collisions)
  std::size_t user_dim = 16;          // embedding width of a user feature (mean-pooled bag)
  std::size_t item_dim = 16;          // embedding width of an article id
  // Narrower than the paper's 256-64 (--hidden 256,64 runs it): 20 seeds of 2,000,000
  // replayed visits for every policy of the study are ~2.5x faster, and the world's
  // clicks depend on 8 latent dimensions (age/sim/environment.hpp).
  std::vector<std::size_t> hidden{64, 32};
  std::size_t dgu_hidden = 32;        // DGU: item embedding -> 32 (ReLU) -> 1
  double embedding_std = 0.01;        // new ids start near the model's average prediction
  double lr = 3e-3;                   // Adam, PyTorch defaults otherwise
  std::size_t batch = 16;             // online mini-batch (events per step)
  std::size_t warm_epochs = 0;        // passes over the warm-start impressions; 0: as many as
                                      // lower the held-out loss (warm_start_epochs(), per world)
  double dropout = 0.01;              // training dropout = MC-Dropout rate p
  std::size_t ensemble_size = 5;      // M models of the ensemble baselines

  FeatureLayout layout() const {
    FeatureLayout l;
    l.add_multi_hot("user_features", Side::User, feature_rows, user_dim, Pooling::Mean)
        .add_categorical("article", Side::Item, article_rows, item_dim);
    return l;
  }
};

// Knob values of a policy by name ("epsilon", "lambda", "pgd_steps", "nu", "scale").
using Knobs = std::map<std::string, double>;

inline double knob(const Knobs& k, const std::string& name, double fallback) {
  const auto it = k.find(name);
  return it == k.end() ? fallback : it->second;
}

// What a policy factory gets: the model (the first of M for an ensemble), the M members as
// views of the stacked embeddings (ensembles), the DGU tower and the policy's knobs and
// seed. Single-model policies score with the library's EmbeddingCtrModel itself, so the
// study runs the engine the benchmarks measure.
struct PolicyInputs {
  const EmbeddingCtrModel& model;
  const std::vector<StackedMember<EmbeddingCtrModel>>& members;
  const Tower& dgu;
  const Knobs& knobs;
  std::uint64_t seed;
};

using PolicyFactory = std::function<std::unique_ptr<AnyExplorer>(const PolicyInputs&)>;

// The study's agent: model(s) + trainer(s) + optional DGU + an exploration policy.
class ModelAgent final : public Agent {
 public:
  // `models`: 1, or M for an ensemble (member m gets its own initialisation). `init_seed`
  // seeds the models (member m: stream m) and their training dropout; agents built with
  // the same init_seed and settings start from identical models.
  ModelAgent(const LearningSettings& settings, std::size_t models, bool with_dgu, std::uint64_t init_seed,
             const PolicyFactory& factory, const Knobs& knobs, std::uint64_t policy_seed)
      : settings_(settings), with_dgu_(with_dgu) {
    if (models == 0) throw ConfigError("ModelAgent: models: expected >= 1, got 0");
    if (settings_.batch == 0) throw ConfigError("LearningSettings.batch: expected >= 1, got 0");
    const FeatureLayout layout = settings_.layout();
    models_.reserve(models);
    for (std::size_t m = 0; m < models; ++m) {
      models_.push_back(std::make_unique<EmbeddingCtrModel>(layout, settings_.hidden));
      Rng init(age::detail::mix64(init_seed ^ 0x4D4F44454CULL), m);
      models_.back()->initialize(init, settings_.embedding_std);
    }
    du_ = models_[0]->user_dim();
    di_ = models_[0]->item_dim();
    dgu_ = make_dgu_tower(di_, settings_.dgu_hidden);
    Rng dgu_init(age::detail::mix64(init_seed ^ 0x444755ULL), 0);
    dgu_.initialize(dgu_init);
    trainers_.reserve(models);
    for (std::size_t m = 0; m < models; ++m) {
      TrainerOptions opt{.dropout = settings_.dropout, .item_tower_dropout = 0.0,
                         .seed = age::detail::mix64(init_seed ^ 0x545241494EULL) + m};
      trainers_.emplace_back(*models_[m], Adam{.lr = settings_.lr}, opt);
    }
    if (with_dgu_) trainers_[0].attach_item_tower(dgu_);
    for (std::size_t m = 0; m < models; ++m)
      members_.push_back(StackedMember<EmbeddingCtrModel>::of(*models_[m], m, models));
    explorer_ = factory(PolicyInputs{*models_[0], members_, dgu_, knobs, policy_seed});
    user_input_.resize(1);
    batch_.resize(settings_.batch);
  }
  // The explorer, trainers and gate hold pointers into the agent: it stays where it is.
  ModelAgent(const ModelAgent&) = delete;
  ModelAgent& operator=(const ModelAgent&) = delete;

  // Trains settings.warm_epochs passes over the warm-start impressions (at least one).
  // Each impression counts once towards its article's impressions.
  void warm_start(std::span<const Impression> data) override {
    for (const Impression& im : data) ++impressions_[im.article];
    train_epochs(data, std::max<std::size_t>(1, settings_.warm_epochs));
  }

  // Trains `epochs` passes over `data` without counting impressions (warm_start_epochs()).
  void train_epochs(std::span<const Impression> data, std::size_t epochs) {
    for (std::size_t epoch = 0; epoch < epochs; ++epoch)
      for (const Impression& im : data) push(im.user, im.article, im.click);
    flush();
  }

  // Mean binary cross-entropy of the main model on `data` (no dropout, no training).
  double log_loss(std::span<const Impression> data) {
    double total = 0;
    std::vector<std::uint64_t> one(1);
    for (const Impression& im : data) {
      one[0] = im.article;
      embed(Context{0, im.user, one});
      models_[0]->tower().logits(user_emb_.topRows(static_cast<Index>(du_)), items_emb_.topRows(static_cast<Index>(di_)),
                                 nullptr, tower_ws_, logit_);
      const double z = static_cast<double>(logit_[0]);
      // BCE on the logit: log(1 + e^z) - y z, computed without overflow.
      total += std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))) - (im.click ? z : 0.0);
    }
    return data.empty() ? 0.0 : total / static_cast<double>(data.size());
  }

  std::size_t choose(const Context& ctx) override {
    if (ctx.candidates.empty()) throw InputError("visit " + std::to_string(ctx.id) + ": no candidates");
    embed(ctx);
    counts_.resize(ctx.candidates.size());
    for (std::size_t i = 0; i < ctx.candidates.size(); ++i) {
      const auto it = impressions_.find(ctx.candidates[i]);
      counts_[i] = it == impressions_.end() ? 0 : it->second;
    }
    explorer_->score(request(ctx), scored_);
    return static_cast<std::size_t>(scored_.best());
  }

  void learn(const Context& ctx, std::size_t shown, bool clicked) override {
    if (shown >= ctx.candidates.size())
      throw InputError("learn: shown position: expected < " + std::to_string(ctx.candidates.size()) + ", got " +
                       std::to_string(shown));
    // The request of the last choose(), before the model moves.
    explorer_->observe(request(ctx), static_cast<Index>(shown), clicked);
    ++impressions_[ctx.candidates[shown]];
    push(ctx.user, ctx.candidates[shown], clicked);
  }

  const ScoredRequest& last_scores() const noexcept { return scored_; }
  // The request of the last choose(): its embeddings and the candidates' impressions.
  Request last_request(std::uint64_t id) const { return Request{user_emb_, items_emb_, id, counts_}; }
  // Impressions the agent has trained on per article (warm start and learned events).
  std::uint64_t impressions(std::uint64_t article) const {
    const auto it = impressions_.find(article);
    return it == impressions_.end() ? 0 : it->second;
  }
  const EmbeddingCtrModel& model(std::size_t m = 0) const { return *models_.at(m); }
  const Tower& dgu() const noexcept { return dgu_; }
  std::size_t training_steps() const noexcept { return trainers_[0].steps(); }

 private:
  void embed(const Context& ctx) {
    const Index n = static_cast<Index>(ctx.candidates.size());
    const std::size_t m_count = models_.size();
    user_input_[0].ids.assign(ctx.user.begin(), ctx.user.end());
    if (item_inputs_.size() < ctx.candidates.size()) item_inputs_.resize(ctx.candidates.size(), SideInput(1));
    for (std::size_t i = 0; i < ctx.candidates.size(); ++i) item_inputs_[i][0].ids.assign(1, ctx.candidates[i]);
    user_emb_.resize(static_cast<Index>(m_count * du_), 1);
    items_emb_.resize(static_cast<Index>(m_count * di_), n);
    for (std::size_t m = 0; m < m_count; ++m) {
      const EmbeddingTables& tables = models_[m]->tables();
      tables.embed(Side::User, user_input_, user_emb_.col(0).segment(static_cast<Index>(m * du_), static_cast<Index>(du_)));
      for (Index i = 0; i < n; ++i)
        tables.embed(Side::Item, item_inputs_[static_cast<std::size_t>(i)],
                     items_emb_.col(i).segment(static_cast<Index>(m * di_), static_cast<Index>(di_)));
    }
  }

  template <class Features>
  void push(const Features& user, std::uint64_t article, bool click) {
    Sample& s = batch_[filled_++];
    s.user.resize(1);
    s.user[0].ids.assign(user.begin(), user.end());
    s.item.resize(1);
    s.item[0].ids.assign(1, article);
    s.label = click ? 1.0f : 0.0f;
    if (filled_ == batch_.size()) flush();
  }

  void flush() {
    if (filled_ == 0) return;
    const std::span<const Sample> b(batch_.data(), filled_);
    for (auto& t : trainers_) t.step(b);
    filled_ = 0;
  }

  Request request(const Context& ctx) const { return Request{user_emb_, items_emb_, ctx.id, counts_}; }

  LearningSettings settings_;
  bool with_dgu_;
  std::size_t du_ = 0, di_ = 0;
  std::vector<std::unique_ptr<EmbeddingCtrModel>> models_;
  std::vector<OnlineTrainer<Adam>> trainers_;
  Tower dgu_;
  std::vector<StackedMember<EmbeddingCtrModel>> members_;
  std::unique_ptr<AnyExplorer> explorer_;
  SideInput user_input_;
  std::vector<SideInput> item_inputs_;
  Matrix user_emb_, items_emb_;
  ScoredRequest scored_;
  std::unordered_map<std::uint64_t, std::uint64_t> impressions_;  // per article
  std::vector<std::uint64_t> counts_;                             // per candidate of the last choose()
  TowerWorkspace tower_ws_;
  RowVector logit_{1};
  std::vector<Sample> batch_;
  std::size_t filled_ = 0;
};

}  // namespace study
