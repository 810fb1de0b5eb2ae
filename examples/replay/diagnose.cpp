// --diagnose: on the warm-started model of seed 1, the scale of the quantities the AGE move
// is made of (delta_y, the item-embedding gradient, the gap between the two best
// candidates) and, at every grid point of the tunable policies, how often the pick changes
// from the greedy one. What the tuning grids of policies.hpp were chosen from.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "age/explore/uncertainty.hpp"
#include "age/sim/environment.hpp"
#include "age/explore/engine.hpp"
#include "age/model/embedding_model.hpp"
#include "study.hpp"

namespace study {

void diagnose(const Options& o, const StudySetup& setup) {
  Environment env(1, o.visits);
  const std::uint64_t w0 = online_warmup(o.visits);
  const auto warm = online_warm_start(env, w0);
  auto build = [&](const std::string& name, Knobs k) {
    Job j{find_policy(name), std::move(k), 1, 0, 1, ""};
    auto a = make_agent(setup, j);
    a->warm_start(warm);
    return a;
  };
  const std::uint64_t probes = 2000;
  Visit v;
  // Scale of delta_y (TS and UCB), of the item-embedding gradient and of the top-2 gap.
  auto base = build("vanilla", {});
  auto* vanilla = static_cast<ModelAgent*>(base.get());
  const EmbeddingCtrModel& model = vanilla->model();
  TowerWorkspace ws;
  McDropoutTs ts;
  McDropoutUcb ucb;
  McDropoutTs::Workspace<DefaultEngine<EmbeddingCtrModel>> ts_ws;
  McDropoutUcb::Workspace<DefaultEngine<EmbeddingCtrModel>> ucb_ws;
  std::vector<double> d_ts, d_ucb, grad, gap, emb, pbar;
  std::vector<std::size_t> vanilla_pick(probes);
  for (std::uint64_t i = 0; i < probes; ++i) {
    env.visit(w0 + i, v);
    const Context ctx{w0 + i, v.features, v.candidate_ids};
    vanilla_pick[i] = vanilla->choose(ctx);
    const ScoredRequest& sr = vanilla->last_scores();
    // Re-embed through the agent's last request: the base scores are in sr.
    std::vector<double> b(sr.base.data(), sr.base.data() + sr.base.size());
    std::sort(b.rbegin(), b.rend());
    if (b.size() > 1) gap.push_back(b[0] - b[1]);
    for (double x : b) pbar.push_back(x);
  }
  // delta and gradient scales on the embedded requests of the same visits.
  {
    SideInput user(1);
    std::vector<SideInput> items;
    Vector u;
    Matrix it;
    RowVector p, d;
    Matrix g;
    for (std::uint64_t i = 0; i < probes; i += 4) {
      env.visit(w0 + i, v);
      user[0].ids.assign(v.features.begin(), v.features.end());
      items.assign(v.candidate_ids.size(), SideInput(1));
      for (std::size_t c = 0; c < items.size(); ++c) items[c][0].ids = {v.candidate_ids[c]};
      vanilla->model().embed_request(user, items, u, it);
      const Index n = it.cols();
      p.resize(n);
      d.resize(n);
      RequestSession<EmbeddingCtrModel> session(model, Request{u, it});
      p = session.base();
      Rng r1(7, i);
      ts.compute(session.engine(), p, r1, ts_ws, d);
      for (Index c = 0; c < n; ++c) d_ts.push_back(std::abs(d[c]));
      Rng r2(8, i);
      ucb.compute(session.engine(), p, r2, ucb_ws, d);
      for (Index c = 0; c < n; ++c) d_ucb.push_back(d[c]);
      model.probability_gradient(u, it, nullptr, ws, p, &g);
      for (Index c = 0; c < n; ++c) {
        grad.push_back(g.col(c).norm());
        emb.push_back(it.col(c).norm());
      }
    }
  }
  auto median = [](std::vector<double> x) {
    if (x.empty()) return 0.0;
    std::nth_element(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(x.size() / 2), x.end());
    return x[x.size() / 2];
  };
  std::printf("diagnose (seed 1, V = %llu, after the warm start, %llu visits):\n",
              static_cast<unsigned long long>(o.visits), static_cast<unsigned long long>(probes));
  std::printf("  median candidate pCTR             %.3g\n", median(pbar));
  std::printf("  median top-1 minus top-2 pCTR     %.3g\n", median(gap));
  std::printf("  median |delta_y| TS (p = 0.01)    %.3g\n", median(d_ts));
  std::printf("  median delta_y UCB (variance)     %.3g\n", median(d_ucb));
  std::printf("  median ||d f / d h_item||         %.3g\n", median(grad));
  std::printf("  median ||h_item||                 %.3g\n", median(emb));
  std::printf("  => the FGM move changes f by about lambda' * |delta_y| * ||grad||:\n");
  for (double l : {1e-3, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5})
    std::printf("     lambda' = %-8g TS %.3g   UCB %.3g\n", l, l * median(d_ts) * median(grad),
                l * median(d_ucb) * median(grad));
  // Share of visits whose pick differs from the greedy pick, at every grid point of the
  // tunable policies (same warm model, no learning in between).
  for (const char* name : {"egreedy", "gradient-ts", "gradient-ucb", "age-ts", "age-ucb", "age-ts-fgm"}) {
    const PolicySpec spec = find_policy(name);
    for (const Knobs& k : spec.grid) {
      auto a = build(name, k);
      std::size_t changed = 0, open = 0, cands = 0;
      double move = 0;
      for (std::uint64_t i = 0; i < probes; ++i) {
        env.visit(w0 + i, v);
        const Context ctx{w0 + i, v.features, v.candidate_ids};
        changed += a->choose(ctx) != vanilla_pick[i];
        const ScoredRequest& sr = static_cast<ModelAgent*>(a.get())->last_scores();
        cands += static_cast<std::size_t>(sr.size());
        for (Index c = 0; c < sr.size(); ++c)
          if (sr.gate[static_cast<std::size_t>(c)]) {
            move += std::abs(sr.explored[c] - sr.base[c]);
            ++open;
          }
      }
      std::printf("  %-13s %-26s pick differs from greedy on %5.1f%% of visits; explored %5.1f%% of candidates, "
                  "mean |y_e - y| there %.3g\n",
                  name, knobs_text(k).c_str(), 100.0 * static_cast<double>(changed) / static_cast<double>(probes),
                  100.0 * static_cast<double>(open) / static_cast<double>(cands),
                  open ? move / static_cast<double>(open) : 0.0);
    }
  }
}

}  // namespace study
