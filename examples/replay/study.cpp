// The study's machinery (worlds, jobs, agents, the thread pool and its progress bar) and
// the study job itself: print what runs, run every policy on every seed, hand the results
// to the report.
#include "study.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <utility>

#include "age/sim/r6b.hpp"
#include "report.hpp"

namespace study {

namespace fs = std::filesystem;

StudySetup make_setup(const Options& o) {
  StudySetup setup;
  setup.online = o.mode == "online";
  setup.visits = o.visits;
  setup.threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  setup.quiet = o.quiet;
  setup.learning = o.learning;
  setup.online_warmup = online_warmup(o.visits);
  setup.replay_warmup = replay_warmup(o);
  return setup;
}

std::uint64_t online_warmup(std::uint64_t visits) { return std::min<std::uint64_t>(20000, visits / 10); }
std::uint64_t replay_warmup(const Options& o) {
  return o.log.empty() ? std::min<std::uint64_t>(80000, 2 * o.visits / 5) : 80000;
}

double policy_cost(const PolicySpec& s) {
  if (s.ensemble) return 6;
  if (s.name.find("nogate") != std::string::npos) return 9;
  if (s.name.rfind("age-", 0) == 0) return 5;
  if (s.name.rfind("gradient", 0) == 0) return 3;
  return 1;
}

std::unique_ptr<Agent> make_agent(const StudySetup& s, const Job& job, std::size_t warm_epochs) {
  const std::size_t models = job.spec.ensemble ? s.learning.ensemble_size : 1;
  // The model's initialisation depends on the seed only (a shared warm start); the
  // policy's exploration stream also on its name.
  const std::uint64_t policy_seed = age::detail::mix64(job.seed ^ age::detail::name_salt(job.spec.name));
  LearningSettings learning = s.learning;
  learning.warm_epochs = warm_epochs;
  return std::make_unique<ModelAgent>(learning, models, job.spec.dgu, job.seed, job.spec.make, job.knobs,
                                      policy_seed);
}

std::vector<Impression> warm_start_data(const StudySetup& s, const World& w) {
  if (s.online) return w.warm;
  std::vector<Impression> out;
  R6bEvent e;
  auto take = [&](auto& source) {
    while (out.size() < s.replay_warmup && source.next(e)) out.push_back(Impression{e.user, e.displayed, e.click});
  };
  if (w.env) {
    EnvironmentLog log(*w.env);
    take(log);
  } else {
    R6bReader reader(w.log);
    take(reader);
  }
  return out;
}

std::size_t converged_epochs(const StudySetup& s, std::uint64_t seed, const std::vector<Impression>& warm,
                             std::vector<double>* held_out_loss) {
  std::vector<Impression> train, held_out;
  for (std::size_t i = 0; i < warm.size(); ++i) (i % 10 == 9 ? held_out : train).push_back(warm[i]);
  LearningSettings learning = s.learning;
  const Knobs none;
  ModelAgent agent(learning, 1, true, seed, find_policy("vanilla").make, none, 0);
  double best = agent.log_loss(held_out);
  if (held_out_loss) held_out_loss->assign(1, best);
  constexpr std::size_t kMaxEpochs = 10;
  std::size_t epochs = 0;
  while (epochs < kMaxEpochs) {
    agent.train_epochs(train, 1);
    ++epochs;
    const double loss = agent.log_loss(held_out);
    if (held_out_loss) held_out_loss->push_back(loss);
    if (!(loss < best * (1.0 - 1e-3))) break;
    best = loss;
  }
  // The epoch that stopped improving is not kept: the agents train one epoch fewer.
  return std::max<std::size_t>(1, epochs - (epochs < kMaxEpochs ? 1 : 0));
}

namespace {

RunResult run_job(const StudySetup& s, const Job& job, const World& w, std::atomic<std::uint64_t>& progress) {
  auto agent = make_agent(s, job, w.warm_epochs);
  RunResult r;
  if (s.online) {
    OnlineOptions o;
    o.warmup = s.online_warmup;
    o.curve_every = std::max<std::uint64_t>(1, w.env->visits() / 200);
    o.progress = &progress;
    r = run_online(*w.env, w.warm, *agent, o);
  } else {
    ReplayOptions o;
    o.warmup = s.replay_warmup;
    o.curve_every = std::max<std::uint64_t>(1, s.visits / 200);
    o.progress = &progress;
    if (w.env) {
      EnvironmentLog log(*w.env);
      r = run_replay(log, *agent, o);
    } else {
      R6bReader reader(w.log);
      r = run_replay(reader, *agent, o);
    }
  }
  r.policy = job.group.empty() ? job.spec.name : job.group;
  r.seed = job.seed;
  return r;
}

}  // namespace

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

std::vector<World> make_worlds(const Options& o, const StudySetup& setup, const std::vector<std::uint64_t>& seeds) {
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
        if (!o.log.empty())
          w.log = o.log;
        else
          w.env = std::make_unique<Environment>(seeds[i], o.visits);
        if (setup.online) w.warm = online_warm_start(*w.env, setup.online_warmup);
        w.warm_epochs = setup.learning.warm_epochs;
        if (w.warm_epochs == 0) w.warm_epochs = converged_epochs(setup, w.seed, warm_start_data(setup, w));
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!error) error = std::current_exception();
      }
    }
  };
  const std::size_t n = std::max<std::size_t>(1, std::min<std::size_t>(setup.threads, seeds.size()));
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

std::string format_duration(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, (s / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  return buf;
}

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

void run_study(const Options& o, const StudySetup& setup, const std::vector<std::string>& names,
               std::size_t n_seeds) {
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
  const auto worlds = make_worlds(o, setup, seeds);
  auto results = run_jobs(setup, make_jobs(names, seeds, tuned), worlds, work_per_job(o, setup.online), "study");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_report(o, setup, names, n_seeds, secs, std::move(results));
}

}  // namespace study
