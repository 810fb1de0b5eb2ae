// age-replay: the offline study of AGE-METHOD.md ("Offline experiment"), rerunnable by
// anyone. Runs every exploration policy of the library on the synthetic R6B-like world
// (age/sim/environment.hpp) online or by replay of its uniformly-random log, or by replay
// of a real Yahoo! R6B file (Webscope licence), and reports cumulative clicks as in the
// paper's Table 1 (and Tables 2 and 3 with --study ablation / full).
//
//   age-replay [--mode online|replay] [--log FILE] [--generate-log FILE] [--visits N]
//              [--seeds K] [--policies a,b,...] [--study core|full|ablation|all] [--threads N]
//              [--out DIR] [--tune] [--params FILE] [--diagnose] [--quiet]
//
// Writes DIR/results.csv (policy,seed,visits,events,clicks,expected_clicks), DIR/curves.csv,
// DIR/summary.md and DIR/curves.png (through examples/plot_curves.py and matplotlib).
// Knobs of each policy come from examples/tuned_params.txt, written by --tune.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "age/sim/environment.hpp"
#include "age/sim/r6b.hpp"
#include "age/sim/replay.hpp"
#include "age/sim/results.hpp"
#include "replay/model_agent.hpp"
#include "replay/policies.hpp"
#include "replay/report.hpp"

#ifndef AGE_EXAMPLES_DIR
#define AGE_EXAMPLES_DIR "examples"
#endif
#ifndef AGE_PYTHON
#define AGE_PYTHON "/usr/bin/python3"
#endif

namespace fs = std::filesystem;
using namespace age;
using namespace age::sim;
using namespace study;

namespace {

constexpr std::uint64_t kValidationSeedBase = 1000;  // tuning uses seeds 1001.., never reported

struct Options {
  std::string mode = "online";
  bool mode_given = false;
  std::string log, generate_log, out = "age-replay-out", study = "core", params;
  std::uint64_t visits = 200000;
  std::size_t seeds = 0;  // 0: the study's default
  std::uint64_t seed_base = 0;  // seeds are seed_base + 1 .. seed_base + K
  std::vector<std::string> policies;
  std::size_t threads = 0;
  bool tune = false, diagnose = false, quiet = false;
  LearningSettings learning;
};

const std::vector<std::string> kFlags{"--mode", "--log", "--generate-log", "--visits", "--seeds", "--policies",
                                      "--study", "--threads", "--out", "--tune", "--params", "--diagnose",
                                      "--quiet", "--seed-base", "--lr", "--batch", "--warm-epochs", "--help"};

std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += sep;
    s += x;
  }
  return s;
}

void usage(std::ostream& o) {
  o << "usage: age-replay [--mode online|replay] [--log FILE] [--generate-log FILE] [--visits N]\n"
       "                  [--seeds K] [--policies a,b,...] [--study core|full|ablation|all] [--threads N]\n"
       "                  [--out DIR] [--tune] [--params FILE] [--diagnose] [--quiet]\n"
       "policies: "
    << policy_names() << "\n";
}

std::uint64_t parse_count(const std::string& flag, const std::string& v) {
  std::size_t pos = 0;
  unsigned long long x = 0;
  try {
    x = std::stoull(v, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos != v.size() || v.empty() || v[0] == '-')
    throw ConfigError(flag + ": expected a non-negative integer, got '" + v + "'");
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ConfigError(a + ": expected a value, got end of arguments");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(std::cout);
      std::exit(0);
    } else if (a == "--mode") {
      o.mode = value();
      o.mode_given = true;
      if (o.mode != "online" && o.mode != "replay")
        throw ConfigError("--mode: expected online or replay, got '" + o.mode + "'");
    } else if (a == "--log") {
      o.log = value();
    } else if (a == "--generate-log") {
      o.generate_log = value();
    } else if (a == "--visits") {
      o.visits = parse_count(a, value());
      if (o.visits == 0) throw ConfigError("--visits: expected >= 1, got 0");
    } else if (a == "--seeds") {
      o.seeds = parse_count(a, value());
      if (o.seeds == 0) throw ConfigError("--seeds: expected >= 1, got 0");
    } else if (a == "--policies") {
      std::stringstream ss(value());
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) o.policies.push_back(p);
      for (const auto& p : o.policies) (void)find_policy(p);  // unknown name -> error with the list
    } else if (a == "--study") {
      o.study = value();
      if (o.study != "core" && o.study != "full" && o.study != "ablation" && o.study != "all")
        throw ConfigError("--study: expected core, full, ablation or all, got '" + o.study + "'");
    } else if (a == "--threads") {
      o.threads = parse_count(a, value());
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--params") {
      o.params = value();
    } else if (a == "--tune") {
      o.tune = true;
    } else if (a == "--diagnose") {
      o.diagnose = true;
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--seed-base") {
      o.seed_base = parse_count(a, value());
    } else if (a == "--lr") {
      const std::string v = value();
      try {
        o.learning.lr = std::stod(v);
      } catch (const std::exception&) {
        throw ConfigError("--lr: expected a number > 0, got '" + v + "'");
      }
      if (!(o.learning.lr > 0)) throw ConfigError("--lr: expected a number > 0, got '" + v + "'");
    } else if (a == "--batch") {
      o.learning.batch = parse_count(a, value());
      if (o.learning.batch == 0) throw ConfigError("--batch: expected >= 1, got 0");
    } else if (a == "--warm-epochs") {
      o.learning.warm_epochs = parse_count(a, value());
    } else {
      throw ConfigError("unknown flag '" + a + "': expected one of " + join(kFlags));
    }
  }
  if (!o.log.empty()) {
    if (o.mode_given && o.mode == "online") throw ConfigError("--log: replays a file, expected --mode replay, got online");
    o.mode = "replay";
  }
  if (o.params.empty()) o.params = std::string(AGE_EXAMPLES_DIR) + "/tuned_params.txt";
  return o;
}

std::vector<std::string> study_set(const std::string& study) {
  if (study == "core") return {"vanilla", "random", "egreedy", "gradient-ts", "age-ts", "age-ucb"};
  if (study == "full")
    return {"vanilla",     "random",       "egreedy", "ensemble-ts", "ensemble-ucb",
            "gradient-ts", "gradient-ucb", "age-ts",  "age-ucb",     "age-ts-fgm"};
  const std::vector<std::string> ablation{"vanilla",           "age-ts",           "age-ts-nodelta",
                                          "age-ts-nodir",      "age-ts-nogate",    "age-ts-fixed0.005",
                                          "age-ts-fixed0.01",  "age-ts-fixed0.02", "age-ucb",
                                          "age-ucb-nogate"};
  if (study == "ablation") return ablation;
  // all: the full study and the ablation in one run (shared rows are run once).
  std::vector<std::string> all = study_set("full");
  for (const auto& p : ablation)
    if (std::find(all.begin(), all.end(), p) == all.end()) all.push_back(p);
  return all;
}

std::size_t default_seeds(const std::string& study) { return study == "core" ? 3 : 5; }

// Warm starts of the issue: W = 20,000 uniformly served visits online, the first 80,000
// lines in replay. Scaled down only for worlds smaller than the default V = 200,000 (so
// that a short run still evaluates something): W = V / 10, 2 V / 5 lines.
std::uint64_t online_warmup(std::uint64_t visits) { return std::min<std::uint64_t>(20000, visits / 10); }
std::uint64_t replay_warmup(const Options& o) {
  return o.log.empty() ? std::min<std::uint64_t>(80000, 2 * o.visits / 5) : 80000;
}

// ---- tuned knobs file ------------------------------------------------------------------
// Lines "policy knob value"; '#' starts a comment.
std::map<std::string, Knobs> read_params(const std::string& path) {
  std::map<std::string, Knobs> out;
  std::ifstream f(path);
  if (!f) return out;
  std::string line;
  for (std::size_t n = 1; std::getline(f, line); ++n) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ss(line);
    std::string policy, name;
    double value = 0;
    if (!(ss >> policy)) continue;
    if (!(ss >> name >> value))
      throw FormatError(path + ":" + std::to_string(n) + ": expected 'policy knob value', got '" + line + "'");
    out[policy][name] = value;
  }
  return out;
}

Knobs knobs_for(const PolicySpec& spec, const std::map<std::string, Knobs>& tuned) {
  const std::string source = spec.tuned_as.empty() ? spec.name : spec.tuned_as;
  Knobs k = spec.tuned_as.empty() ? spec.defaults : find_policy(spec.tuned_as).defaults;
  if (const auto it = tuned.find(source); it != tuned.end())
    for (const auto& [n, v] : it->second) k[n] = v;
  return k;
}

std::string knobs_text(const Knobs& k) {
  std::string s;
  for (const auto& [n, v] : k) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s=%g", n.c_str(), v);
    if (!s.empty()) s += ' ';
    s += buf;
  }
  return s.empty() ? "-" : s;
}

// ---- runs ------------------------------------------------------------------------------
struct Job {
  PolicySpec spec;
  Knobs knobs;
  std::uint64_t seed = 0;
  std::size_t world = 0;  // index into the worlds of the run set
  double cost = 1;
  std::string group;  // name reported for the run (tuning: "policy#grid point")
};

struct World {
  std::uint64_t seed = 0;
  std::unique_ptr<Environment> env;        // synthetic worlds
  std::vector<Impression> warm;            // online warm start
  std::string log;                         // replay: file to read
};

double policy_cost(const PolicySpec& s) {
  if (s.ensemble) return 6;
  if (s.name.find("nogate") != std::string::npos) return 9;
  if (s.name.rfind("age-", 0) == 0) return 5;
  if (s.name.rfind("gradient", 0) == 0) return 3;
  return 1;
}

struct StudySetup {
  LearningSettings learning;
  bool online = true;
  std::uint64_t visits = 0;
  std::size_t threads = 1;
  bool quiet = false;
  std::uint64_t online_warmup = 20000, replay_warmup = 80000;
};

std::unique_ptr<Agent> make_agent(const StudySetup& s, const Job& job) {
  const std::size_t models = job.spec.ensemble ? s.learning.ensemble_size : 1;
  // The model's initialisation depends on the seed only (a shared warm start); the
  // policy's exploration stream also on its name.
  const std::uint64_t policy_seed = age::detail::mix64(job.seed ^ age::detail::name_salt(job.spec.name));
  return std::make_unique<ModelAgent>(s.learning, models, job.spec.dgu, job.seed, job.spec.make, job.knobs,
                                      policy_seed);
}

RunResult run_job(const StudySetup& s, const Job& job, const World& w, std::atomic<std::uint64_t>& progress) {
  auto agent = make_agent(s, job);
  RunResult r;
  if (s.online) {
    OnlineOptions o;
    o.warmup = s.online_warmup;
    o.curve_every = std::max<std::uint64_t>(1, w.env->visits() / 200);
    o.progress = &progress;
    r = run_online(*w.env, w.warm, *agent, o);
  } else {
    R6bReader reader(w.log);
    ReplayOptions o;
    o.warmup = s.replay_warmup;
    o.curve_every = std::max<std::uint64_t>(1, s.visits / 200);
    o.progress = &progress;
    r = run_replay(reader, *agent, o);
  }
  r.policy = job.group.empty() ? job.spec.name : job.group;
  r.seed = job.seed;
  return r;
}

std::string format_duration(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, (s / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  return buf;
}

// Runs every job on `threads` threads (longest first), with a progress bar on stderr.
std::vector<RunResult> run_jobs(const StudySetup& s, std::vector<Job> jobs, const std::vector<World>& worlds,
                                std::uint64_t work_per_job, const std::string& title) {
  std::stable_sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) { return a.cost > b.cost; });
  std::vector<RunResult> results(jobs.size());
  std::atomic<std::size_t> next{0}, done{0};
  std::atomic<std::uint64_t> progress{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= jobs.size()) return;
      try {
        results[i] = run_job(s, jobs[i], worlds[jobs[i].world], progress);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = jobs.size();
      }
      ++done;
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  const std::size_t n_threads = std::max<std::size_t>(1, std::min(s.threads, jobs.size()));
  for (std::size_t t = 0; t < n_threads; ++t) pool.emplace_back(worker);
  // Total work in visits/lines; 0 when unknown (a real log is not counted beforehand).
  const double total = static_cast<double>(work_per_job * jobs.size());
  const bool tty = isatty(fileno(stderr));
  int last_decile = -1;
  while (done.load() < jobs.size() && !s.quiet) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const double frac = total > 0 ? std::min(1.0, static_cast<double>(progress.load()) / total)
                                  : static_cast<double>(done.load()) / static_cast<double>(jobs.size());
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::string eta = frac > 0.01 ? format_duration(elapsed * (1 - frac) / frac) : "?";
    if (tty) {
      const int width = 30, filled = static_cast<int>(frac * width);
      std::fprintf(stderr, "\r%s [%s%s] %5.1f%%  %zu/%zu runs  %s elapsed  eta %s   ", title.c_str(),
                   std::string(static_cast<std::size_t>(filled), '#').c_str(),
                   std::string(static_cast<std::size_t>(width - filled), '.').c_str(), 100 * frac, done.load(),
                   jobs.size(), format_duration(elapsed).c_str(), eta.c_str());
    } else if (static_cast<int>(frac * 10) > last_decile) {
      last_decile = static_cast<int>(frac * 10);
      std::fprintf(stderr, "%s %3d%%  %zu/%zu runs  %s elapsed\n", title.c_str(), last_decile * 10, done.load(),
                   jobs.size(), format_duration(elapsed).c_str());
    }
  }
  for (auto& t : pool) t.join();
  if (tty && !s.quiet) std::fprintf(stderr, "\n");
  if (error) std::rethrow_exception(error);
  return results;
}

// Worlds for the given seeds: the environment (synthetic), its warm start (online) or its
// log file (replay; generated into out/logs unless --log names a real file).
std::vector<World> make_worlds(const Options& o, const std::vector<std::uint64_t>& seeds, bool online) {
  std::vector<World> worlds(seeds.size());
  std::vector<std::thread> pool;
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex m;
  auto worker = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < seeds.size();) {
      try {
        World& w = worlds[i];
        w.seed = seeds[i];
        if (!o.log.empty()) {
          w.log = o.log;
          continue;
        }
        w.env = std::make_unique<Environment>(seeds[i], o.visits);
        if (online) {
          w.warm = online_warm_start(*w.env, online_warmup(o.visits));
        } else {
          fs::create_directories(fs::path(o.out) / "logs");
          w.log = (fs::path(o.out) / "logs" / ("world-" + std::to_string(seeds[i]) + "-" + std::to_string(o.visits) + ".txt.gz")).string();
          if (!fs::exists(w.log)) {
            const std::string tmp = w.log + ".partial.gz";
            w.env->write_log(tmp);
            fs::rename(tmp, w.log);
          }
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!error) error = std::current_exception();
      }
    }
  };
  const std::size_t n = std::max<std::size_t>(1, std::min<std::size_t>(o.threads ? o.threads : 2, seeds.size()));
  for (std::size_t t = 0; t < n; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return worlds;
}

std::uint64_t work_per_job(const Options& o, bool online) {
  // Online: visits after the warm start; replay: every line (real logs: unknown, guessed).
  if (!o.log.empty()) return 0;
  return online ? o.visits - online_warmup(o.visits) : o.visits;
}

// ---- --diagnose: how far the AGE move goes, at which lambda' it changes rankings ----------
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
  StudyModel model(vanilla->model());
  StudyModel::Workspace ws;
  McDropoutTs ts;
  McDropoutUcb ucb;
  McDropoutTs::Workspace<StudyModel> ts_ws;
  McDropoutUcb::Workspace<StudyModel> ucb_ws;
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
      predict_probabilities(model, u, it, nullptr, ws, p);
      Rng r1(7, i);
      ts.compute(model, u, it, p, r1, ws, ts_ws, d);
      for (Index c = 0; c < n; ++c) d_ts.push_back(std::abs(d[c]));
      Rng r2(8, i);
      ucb.compute(model, u, it, p, r2, ws, ucb_ws, d);
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

void plot(const Options& o) {
  const std::string script = std::string(AGE_EXAMPLES_DIR) + "/plot_curves.py";
  const std::string py = AGE_PYTHON;
  const std::string check = py + " -c 'import matplotlib' >/dev/null 2>&1";
  if (std::system(check.c_str()) != 0) {
    std::printf("picture skipped: %s cannot import matplotlib (Debian: apt-get install python3-matplotlib)\n", py.c_str());
    return;
  }
  const std::string png = (fs::path(o.out) / "curves.png").string();
  const std::string cmd = py + " '" + script + "' '" + (fs::path(o.out) / "curves.csv").string() + "' '" + png + "'";
  if (std::system(cmd.c_str()) != 0)
    std::printf("picture skipped: '%s' failed\n", cmd.c_str());
  else
    std::printf("picture: %s\n", png.c_str());
}

std::vector<Job> make_jobs(const std::vector<std::string>& names, const std::vector<std::uint64_t>& seeds,
                           const std::map<std::string, Knobs>& tuned) {
  std::vector<Job> jobs;
  for (const auto& name : names) {
    const PolicySpec spec = find_policy(name);
    for (std::size_t w = 0; w < seeds.size(); ++w)
      jobs.push_back(Job{spec, knobs_for(spec, tuned), seeds[w], w, policy_cost(spec), ""});
  }
  return jobs;
}

// --tune: every policy of the set that has knobs, on validation seeds, the same grid
// budget for each; the best mean score (expected clicks online, clicks in replay) wins.
void tune(const Options& o, const StudySetup& setup, const std::vector<std::string>& names, std::size_t n_seeds) {
  std::vector<std::uint64_t> seeds;
  for (std::size_t k = 1; k <= n_seeds; ++k) seeds.push_back(kValidationSeedBase + k);
  const auto worlds = make_worlds(o, seeds, setup.online);
  std::vector<Job> jobs;
  std::vector<std::string> tuned_names;
  for (const auto& name : names) {
    const PolicySpec spec = find_policy(name);
    if (spec.grid.empty()) continue;
    tuned_names.push_back(name);
    for (std::size_t g = 0; g < spec.grid.size(); ++g)
      for (std::size_t w = 0; w < seeds.size(); ++w) {
        jobs.push_back(Job{spec, spec.grid[g], seeds[w], w, policy_cost(spec), name + "#" + std::to_string(g)});
      }
  }
  if (jobs.empty()) {
    std::printf("--tune: none of the policies has knobs to tune\n");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto results = run_jobs(setup, jobs, worlds, work_per_job(o, setup.online), "tuning");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto existing = read_params(o.params);
  std::ostringstream report;
  for (const auto& name : tuned_names) {
    const PolicySpec spec = find_policy(name);
    double best = -1;
    std::size_t best_g = 0;
    for (std::size_t g = 0; g < spec.grid.size(); ++g) {
      std::vector<double> score;
      for (const auto& r : results)
        if (r.policy == name + "#" + std::to_string(g)) score.push_back(setup.online ? r.expected_clicks : r.clicks);
      const double m = mean_std(score).mean;
      report << "#   " << name << " " << knobs_text(spec.grid[g]) << " -> " << format_fixed(m, 1) << "\n";
      if (m > best) {
        best = m;
        best_g = g;
      }
    }
    existing[name] = spec.grid[best_g];
    std::printf("tuned %-14s %s\n", name.c_str(), knobs_text(spec.grid[best_g]).c_str());
  }
  std::ofstream f(o.params);
  if (!f) throw IoError("cannot write tuned parameters to '" + o.params + "'");
  f << "# Knobs chosen by `age-replay --tune` (mode " << o.mode << ", V = " << o.visits << ", validation seeds "
    << kValidationSeedBase + 1 << ".." << kValidationSeedBase + n_seeds
    << ", never reported), one grid of " << study::detail::kGridSize << " points per policy, selected by mean "
    << (setup.online ? "expected clicks" : "clicks") << "; " << format_duration(secs) << " on " << setup.threads
    << " threads.\n# Grid scores of the last tuning run:\n"
    << report.str() << "# policy knob value\n";
  for (const auto& [policy, knobs] : existing)
    for (const auto& [n, v] : knobs) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.6g", v);
      f << policy << ' ' << n << ' ' << buf << '\n';
    }
  std::printf("tuned knobs written to %s (%s)\n", o.params.c_str(), format_duration(secs).c_str());
}

int run(const Options& o) {
  StudySetup setup;
  setup.online = o.mode == "online";
  setup.visits = o.visits;
  setup.threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  setup.quiet = o.quiet;
  setup.learning = o.learning;
  setup.online_warmup = online_warmup(o.visits);
  setup.replay_warmup = replay_warmup(o);

  if (!o.generate_log.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    Environment env(o.seed_base + 1, o.visits);
    env.write_log(o.generate_log);
    std::printf("wrote %llu R6B lines of the synthetic world (seed %llu) to %s in %.1f s\n",
                static_cast<unsigned long long>(o.visits), static_cast<unsigned long long>(o.seed_base + 1),
                o.generate_log.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }
  if (o.diagnose) {
    diagnose(o, setup);
    return 0;
  }

  const std::vector<std::string> names = o.policies.empty() ? study_set(o.study) : o.policies;
  const std::size_t n_seeds = o.seeds ? o.seeds : default_seeds(o.study);
  if (o.tune) {
    tune(o, setup, names, o.seeds ? o.seeds : 2);
    return 0;
  }

  const auto tuned = read_params(o.params);
  std::vector<std::uint64_t> seeds;
  for (std::size_t k = 1; k <= n_seeds; ++k) seeds.push_back(o.seed_base + k);

  const LearningSettings& ls = setup.learning;
  std::printf("age-replay: study %s, mode %s, %s, V = %llu, %zu seed(s), %zu thread(s)\n", o.study.c_str(),
              o.mode.c_str(), o.log.empty() ? "synthetic world" : ("log " + o.log).c_str(),
              static_cast<unsigned long long>(o.visits), n_seeds, setup.threads);
  std::printf("model: user features multi-hot (mean, %zu x %zu) + article id (%zu x %zu), tower %zu-%zu, DGU %zu; "
              "Adam lr %g, batch %zu, dropout %g, embedding std %g, warm start %s\n",
              ls.feature_rows, ls.user_dim, ls.article_rows, ls.item_dim, ls.hidden[0], ls.hidden[1], ls.dgu_hidden,
              ls.lr, ls.batch, ls.dropout, ls.embedding_std,
              (std::to_string(setup.online ? setup.online_warmup : setup.replay_warmup) +
               (setup.online ? " uniform visits" : " log lines")).c_str());
  std::printf("knobs (%s):\n", fs::exists(o.params) ? o.params.c_str() : "defaults; no tuned file");
  for (const auto& name : names) std::printf("  %-18s %s\n", name.c_str(), knobs_text(knobs_for(find_policy(name), tuned)).c_str());
  std::fflush(stdout);

  const auto t0 = std::chrono::steady_clock::now();
  const auto worlds = make_worlds(o, seeds, setup.online);
  auto results = run_jobs(setup, make_jobs(names, seeds, tuned), worlds, work_per_job(o, setup.online), "study");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Order: policies as requested, then seed.
  std::stable_sort(results.begin(), results.end(), [&](const RunResult& a, const RunResult& b) {
    const auto ia = std::find(names.begin(), names.end(), a.policy) - names.begin();
    const auto ib = std::find(names.begin(), names.end(), b.policy) - names.begin();
    return ia != ib ? ia < ib : a.seed < b.seed;
  });

  fs::create_directories(o.out);
  write_results_csv((fs::path(o.out) / "results.csv").string(), results);
  write_curves_csv((fs::path(o.out) / "curves.csv").string(), results);

  std::map<std::string, std::string> labels;
  for (const auto& name : names) labels[name] = find_policy(name).label;
  const auto summary = summarize(results);
  std::ostringstream md;
  md << "Cumulative clicks over "
     << (setup.online ? "visits " + std::to_string(setup.online_warmup) + ".." + std::to_string(o.visits - 1)
                      : "the replayed lines after the first " + std::to_string(setup.replay_warmup))
     << ", mean +- std over " << n_seeds << " seed(s); " << format_duration(secs) << " on " << setup.threads
     << " thread(s).\n\n";
  const std::string reference = std::find(names.begin(), names.end(), "vanilla") != names.end() ? "vanilla" : names[0];
  md << summary_table(summary, reference, labels);
  if (std::find(names.begin(), names.end(), "age-ts-nodelta") != names.end()) {
    std::vector<PolicySummary> ts_rows, ucb_rows;
    for (const auto& s : summary) {
      if (s.policy.rfind("age-ts", 0) == 0 && s.policy != "age-ts-fgm") ts_rows.push_back(s);
      if (s.policy.rfind("age-ucb", 0) == 0) ucb_rows.push_back(s);
    }
    if (!ts_rows.empty()) md << "\nAblation (Table 2), change vs AGE-TS:\n\n" << summary_table(ts_rows, "age-ts", labels);
    if (ucb_rows.size() > 1) md << "\nAblation, change vs AGE-UCB:\n\n" << summary_table(ucb_rows, "age-ucb", labels);
  }
  if (std::find(names.begin(), names.end(), "age-ts-fgm") != names.end() &&
      std::find(names.begin(), names.end(), "age-ts") != names.end()) {
    std::vector<PolicySummary> rows;
    for (const auto& s : summary)
      if (s.policy == "age-ts-fgm" || s.policy == "age-ts") rows.push_back(s);
    md << "\nFGM vs PGD (Table 3), change vs AGE-TS (FGM):\n\n" << summary_table(rows, "age-ts-fgm", labels);
  }
  std::printf("\n%s\n", md.str().c_str());
  {
    std::ofstream f = open_output((fs::path(o.out) / "summary.md").string());
    f << md.str();
  }
  std::printf("wrote %s/results.csv, curves.csv, summary.md\n", o.out.c_str());
  plot(o);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const age::ConfigError& e) {  // a bad command line: show the valid flags and names
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    usage(std::cerr);
    return 2;
  } catch (const age::Error& e) {
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "age-replay: %s\n", e.what());
    return 1;
  }
}
