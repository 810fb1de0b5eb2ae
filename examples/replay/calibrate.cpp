// --calibrate: lambda' of the AGE policies measured on a warm-started model, with the
// library's calibrate_lambda() (age/explore/calibration.hpp), on the first validation seed
// (never reported). For every named policy that has a lambda' knob: over a wide log grid,
// the move's length, the change of the explored scores and the share of requests whose top
// pick or top 5 change; the lambda' that meets each target; and how the move relates to
// the candidates' impressions (rank correlation), the question the count-aware variants
// answer. What the tuning grids of policies.hpp and the placebo's lambda' were chosen from.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "age/explore/calibration.hpp"
#include "age/train/optimizer.hpp"
#include "study.hpp"

namespace study {

namespace {

// Spearman's rank correlation of x and y (average ranks for ties); 0 for fewer than 3.
double rank_correlation(const std::vector<double>& x, const std::vector<double>& y) {
  const std::size_t n = x.size();
  if (n < 3) return 0.0;
  auto ranks = [n](const std::vector<double>& v) {
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
    std::vector<double> r(n);
    for (std::size_t i = 0; i < n;) {
      std::size_t j = i;
      while (j + 1 < n && v[order[j + 1]] == v[order[i]]) ++j;
      for (std::size_t k = i; k <= j; ++k) r[order[k]] = 0.5 * static_cast<double>(i + j);
      i = j + 1;
    }
    return r;
  };
  const auto rx = ranks(x), ry = ranks(y);
  const double mean = 0.5 * static_cast<double>(n - 1);
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < n; ++i) {
    sxy += (rx[i] - mean) * (ry[i] - mean);
    sxx += (rx[i] - mean) * (rx[i] - mean);
    syy += (ry[i] - mean) * (ry[i] - mean);
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

std::string lambda_text(const LambdaCalibration& c, double share) {
  try {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", c.lambda_for_top1_change(share));
    return buf;
  } catch (const age::Error&) {
    return "beyond the grid";
  }
}

}  // namespace

void calibrate(const Options& o, const StudySetup& setup, const std::vector<std::string>& names) {
  const std::uint64_t seed = kValidationSeedBase + 1;
  const auto worlds = make_worlds(o, setup, {seed});
  const World& w = worlds[0];
  const std::vector<Impression> warm = warm_start_data(setup, w);

  // One warm-started agent (with its DGU trained) provides the model every policy is
  // calibrated on, and the sample requests: the lines (visits) right after the warm start.
  const Job job{find_policy("age-ts"), {}, seed, 0, 1, ""};
  auto agent_base = make_agent(setup, job, w.warm_epochs);
  auto& agent = static_cast<ModelAgent&>(*agent_base);
  agent.warm_start(warm);
  constexpr std::size_t kRequests = 2000;
  std::vector<Vector> users;
  std::vector<Matrix> items;
  std::vector<std::vector<std::uint64_t>> counts;
  std::vector<std::uint64_t> ids;
  {
    R6bEvent e;
    Visit v;
    std::unique_ptr<EnvironmentLog> log;
    std::unique_ptr<R6bReader> reader;
    if (w.env && !setup.online) log = std::make_unique<EnvironmentLog>(*w.env);
    if (!w.env) reader = std::make_unique<R6bReader>(w.log);
    std::uint64_t line = 0;
    const std::uint64_t first = setup.online ? setup.online_warmup : setup.replay_warmup;
    while (users.size() < kRequests) {
      if (setup.online) {
        if (first + line >= w.env->visits()) break;
        w.env->visit(first + line, v);
        Environment::to_event(v, e);
      } else if (!(log ? log->next(e) : reader->next(e))) {
        break;
      }
      const std::uint64_t index = setup.online ? first + line : line;
      ++line;
      if (!setup.online && index < first) continue;
      const Context ctx{index, e.user, e.candidates};
      agent.choose(ctx);
      const Request r = agent.last_request(index);
      users.emplace_back(r.user.col(0));
      items.emplace_back(r.items);
      counts.emplace_back(r.impressions.begin(), r.impressions.end());
      ids.push_back(index);
    }
  }
  std::vector<Request> requests;
  for (std::size_t i = 0; i < users.size(); ++i) requests.push_back(Request{users[i], items[i], ids[i], counts[i]});

  const double update = new_row_update_length(Adam{.lr = setup.learning.lr}, setup.learning.item_dim);
  std::printf("calibrate: validation seed %llu (never reported), %s, %zu requests after the warm start "
              "(%zu epochs over %zu impressions)\n",
              static_cast<unsigned long long>(seed), setup.online ? "online" : "replay", requests.size(),
              w.warm_epochs, warm.size());
  if (setup.learning.warm_epochs == 0) {
    std::vector<double> losses;
    converged_epochs(setup, seed, warm, &losses);
    std::printf("warm start to convergence: held-out log loss after 0, 1, ... epochs:");
    for (double l : losses) std::printf(" %.5f", l);
    std::printf("\n");
  }
  std::printf("one Adam update of a new item's embedding row: lr * sqrt(item_dim) = %.3g\n\n", update);

  const auto tuned = read_params(o.params);
  const std::vector<StackedMember<EmbeddingCtrModel>> no_members;
  const std::vector<double> grid = log_grid(1e-5, 1e7, 25);
  for (const std::string& name : names) {
    const PolicySpec spec = find_policy(name);
    const Knobs base = knobs_for(spec, tuned);
    if (base.find("lambda") == base.end() || spec.ensemble) continue;
    auto make = [&](double lambda) {
      Knobs k = base;
      k["lambda"] = lambda;
      return spec.make(PolicyInputs{agent.model(), no_members, agent.dgu(), k, 7});
    };
    const LambdaCalibration c = calibrate_lambda(make, requests, grid);
    std::printf("%s (%s)\n", spec.label.c_str(), knobs_text(base).c_str());
    std::printf("| lambda' | median move | median |y_e - y| | explored | top-1 changed | top-5 changed |\n"
                "|---:|---:|---:|---:|---:|---:|\n");
    for (const LambdaPoint& p : c.points)
      std::printf("| %.3g | %.3g | %.3g | %.1f%% | %.2f%% | %.2f%% |\n", p.lambda, p.radius_median, p.change_median,
                  100 * p.explored_share, 100 * p.top1_changed, 100 * p.topk_changed);
    std::string for_update;
    try {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3g", c.lambda_for_radius(update));
      for_update = buf;
    } catch (const age::Error&) {
      for_update = "none (no move)";
    }
    std::printf("lambda' for: one update of a new row %s; top-1 changes on 0.1%% %s, 1%% %s, 5%% %s, 20%% %s\n",
                for_update.c_str(), lambda_text(c, 0.001).c_str(), lambda_text(c, 0.01).c_str(),
                lambda_text(c, 0.05).c_str(), lambda_text(c, 0.2).c_str());

    // How the move relates to what the model has seen: over the explored candidates at the
    // policy's own lambda', the rank correlation of log(1 + impressions) with the move's
    // length and with the change of the score.
    auto own = spec.make(PolicyInputs{agent.model(), no_members, agent.dgu(), base, 7});
    ScoredRequest out;
    std::vector<double> seen, move, change;
    const double lambda = base.at("lambda");
    for (const Request& r : requests) {
      own->score(r, out);
      for (Index i = 0; i < out.size(); ++i) {
        if (!out.gate[static_cast<std::size_t>(i)]) continue;
        seen.push_back(std::log1p(static_cast<double>(r.impressions[static_cast<std::size_t>(i)])));
        move.push_back(lambda * std::fabs(static_cast<double>(out.delta[i])));
        change.push_back(std::fabs(static_cast<double>(out.explored[i]) - static_cast<double>(out.base[i])));
      }
    }
    std::printf("at lambda' = %g: rank correlation with log(1 + impressions) over %zu explored candidates: "
                "move length %+.2f, |y_e - y| %+.2f\n\n",
                lambda, seen.size(), rank_correlation(seen, move), rank_correlation(seen, change));
  }
}

}  // namespace study
