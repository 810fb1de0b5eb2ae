// Per-candidate scoring latency of age on the reference workload (benchmarks/workload.hpp):
//
//   BM_GemmCeiling                 plain Eigen float GEMM 1000 x 192 x 256: the ceiling
//   BM_Product/<impl>/<product>/<N>
//                                  one product of the tower on the product kernel or on
//                                  Eigen's GEMM (impl = kernel | eigen); counter GFLOP/s
//   BM_Score/<policy>/<N>          one request of N candidates, one thread; counters
//                                  ns_per_candidate, GFLOP/s of the FLOPs the policy needs
//                                  (workload.hpp, useful_flops), ceiling_fraction,
//                                  open_fraction (candidates explored), full_move_fraction
//                                  (explored candidates whose move was not certified
//                                  linear and ran the pass in full), heap_growth_bytes
//                                  (in-use heap growth over the timed loop: 0 = no
//                                  allocation kept after warm-up)
//   BM_Throughput/<policy>/<N>/real_time/threads:T
//                                  requests per second of T threads scoring with one
//                                  shared scorer and model, each with its own workspace
//   BM_Workspace/<policy>/<N>      heap bytes of a warmed-up workspace, per request and
//                                  per candidate
//   BM_Propensity/<policy>/<N>/<K> the propensities of the top 3 positions of one request
//                                  already scored (age/explore/propensity.hpp): the closed
//                                  form (epsilon_greedy, K unused) or K Monte-Carlo draws
//                                  (age_ts_fgm: K scorings); counters ns_per_request and
//                                  ns_per_draw
// Times are process CPU time (robust to other processes taking the core for a while),
// except BM_Throughput, which is wall time. The ceiling is also measured once at start-up
// (median of repeated runs) so that every BM_Score reports its fraction of it.
// Built twice (benchmarks/CMakeLists.txt): age_bench with Eigen's own products, and
// age_bench_blas (AGE_BENCH_BLAS) with Eigen's products handed to the system BLAS.
#include <benchmark/benchmark.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "age/explore/baselines.hpp"
#include "age/explore/propensity.hpp"
#include "age/explore/scorer.hpp"
#include "age/model/gemm.hpp"
#include "openblas.hpp"
#include "workload.hpp"

namespace {

using namespace age;
using namespace age::bench;

using GreedyPolicy = Greedy<Tower>;
using TsFgm = AgeScorer<Tower, McDropoutTs, Fgm, DguGate>;
using TsPgd = AgeScorer<Tower, McDropoutTs, Pgd, DguGate>;
using UcbFgm = AgeScorer<Tower, McDropoutUcb, Fgm, DguGate>;

constexpr std::uint64_t kSeed = 7;

// Built once in main(), before any benchmark thread starts; read-only afterwards.
struct Engines {
  Workload w;
  GreedyPolicy greedy{w.tower};
  TsFgm ts_fgm{w.tower, DguGate(w.dgu), McDropoutTs{kDropout}, Fgm{.lambda = kLambda}, kSeed};
  TsPgd ts_pgd{w.tower, DguGate(w.dgu), McDropoutTs{kDropout}, Pgd{.lambda = kLambda, .steps = kPgdSteps}, kSeed};
  UcbFgm ucb_fgm{w.tower, DguGate(w.dgu), McDropoutUcb{.rate = kDropout, .samples = kUcbSamples},
                 Fgm{.lambda = kLambda}, kSeed};
  EpsilonGreedy<Tower> epsilon_greedy{w.tower, {.epsilon = 0.1, .seed = kSeed}};
};
const Engines* engines = nullptr;
double ceiling_gflops = 0;

std::size_t size_index(Index n) {
  return static_cast<std::size_t>(std::find(kSizes.begin(), kSizes.end(), n) - kSizes.begin());
}

std::size_t heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// Calls fn(policy object) for the policy.
template <class F>
void with_policy(Policy p, F&& fn) {
  switch (p) {
    case Policy::greedy: fn(engines->greedy); break;
    case Policy::age_ts_fgm: fn(engines->ts_fgm); break;
    case Policy::age_ts_pgd3: fn(engines->ts_pgd); break;
    case Policy::age_ucb20_fgm: fn(engines->ucb_fgm); break;
  }
}

// Open candidates of the last request whose move ran the pass in full (not certified
// linear; Tower::set_linear_moves), as the tower's request scratch records it after the
// last moved pass (PGD's final one). 0 for greedy and when nothing moved.
template <class Ws>
std::int64_t full_moves(const Ws& ws, std::int64_t open) {
  if constexpr (requires { ws.engine.model.request.full_moves; }) {
    const TowerRequestScratch& rq = ws.engine.model.request;
    if (!age::detail::has_moved_pass(rq.stage)) return 0;
    return rq.stage == RequestStage::gradient_linear ? static_cast<std::int64_t>(rq.full_moves.size()) : open;
  } else {
    return 0;
  }
}

std::int64_t open_count(const ScoredRequest& out) {
  std::int64_t k = 0;
  for (auto g : out.gate) k += g;
  return k;
}

// --- The ceiling -------------------------------------------------------------------------
struct Gemm {
  Matrix w = Matrix::Random(256, 192), x = Matrix::Random(192, kCeilingN), c = Matrix(256, kCeilingN);
  void run() { c.noalias() = w * x; }
};

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double measure_ceiling() {
  Gemm g;
  for (int i = 0; i < 20; ++i) g.run();
  std::vector<double> rates;
  for (int rep = 0; rep < 15; ++rep) {
    const double t0 = process_cpu_seconds();
    for (int i = 0; i < 10; ++i) g.run();
    rates.push_back(10 * kCeilingFlops / (process_cpu_seconds() - t0) * 1e-9);
  }
  benchmark::DoNotOptimize(g.c.data());
  std::nth_element(rates.begin(), rates.begin() + 7, rates.end());
  return rates[7];
}

void BM_GemmCeiling(benchmark::State& state) {
  Gemm g;
  for (auto _ : state) {
    g.run();
    benchmark::DoNotOptimize(g.c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * kCeilingFlops * 1e-9,
                                                 benchmark::Counter::kIsRate);
}

// --- The tower's products ----------------------------------------------------------------
// One product of the workload's tower for N candidates, on the product kernel
// (age/model/gemm.hpp, as the tower runs it) or on Eigen's GEMM (as before the kernel):
//   w_item    W_item (256 x 64) x items (64 x N)          layer 0, item part
//   w1        W_1 (64 x 256) x a_0 (256 x N)              layer 1
//   w1_t      W_1^T x d_1 (64 x N)                        input gradient, layer 1
//   w_item_t  W_item^T x d_0 (256 x N)                    input gradient, layer 0
// The kernel multiplies the transposed forms by the tower's committed transposed copies;
// Eigen by a transposed view (it transposes while packing, on every call).
enum class Product { w_item, w1, w1_t, w_item_t };

void BM_Product(benchmark::State& state, Product product, bool kernel) {
  const Index n = state.range(0);
  const Matrix w_item = Matrix::Random(kHidden0, kItemDim), w1 = Matrix::Random(kHidden1, kHidden0);
  const Matrix w_item_t = w_item.transpose(), w1_t = w1.transpose();
  const Matrix& a = product == Product::w_item ? w_item : product == Product::w1 ? w1 : product == Product::w1_t ? w1_t : w_item_t;
  const Matrix x = Matrix::Random(a.cols(), n);
  Matrix y(a.rows(), n);
  for (auto _ : state) {
    if (kernel)
      detail::gemm_assign(y, a, x);
    else if (product == Product::w1_t)
      y.noalias() = w1.transpose() * x;
    else if (product == Product::w_item_t)
      y.noalias() = w_item.transpose() * x;
    else
      y.noalias() = a * x;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(a.rows() * a.cols() * n);
  state.counters["GFLOP/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * flops * 1e-9, benchmark::Counter::kIsRate);
}

// --- Latency -----------------------------------------------------------------------------
void BM_Score(benchmark::State& state, Policy policy) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = engines->w;
  with_policy(policy, [&](const auto& scorer) {
    typename std::remove_cvref_t<decltype(scorer)>::Workspace ws;
    ScoredRequest out;
    std::uint64_t id = 1;
    for (std::size_t r = 0; r < kRequestsPerSize; ++r)  // warm-up: every request once
      scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
    std::int64_t open = 0, full = 0;
    double flops = 0;
    const std::size_t heap_before = heap_in_use();
    std::size_t r = 0;
    for (auto _ : state) {
      scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
      const std::int64_t k = open_count(out), m = full_moves(ws, k);
      open += k;
      full += m;
      flops += useful_flops(policy, static_cast<double>(n), static_cast<double>(k), static_cast<double>(m));
      benchmark::DoNotOptimize(out.ranking.data());
      benchmark::ClobberMemory();
      r = r + 1 == kRequestsPerSize ? 0 : r + 1;
    }
    const std::size_t heap_after = heap_in_use();
    const double iters = static_cast<double>(state.iterations());
    const double candidates = iters * static_cast<double>(n);
    state.counters["ns_per_candidate"] =
        benchmark::Counter(candidates * 1e-9, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
    state.counters["ceiling_fraction"] = benchmark::Counter(flops * 1e-9 / ceiling_gflops, benchmark::Counter::kIsRate);
    state.counters["open_fraction"] = static_cast<double>(open) / candidates;
    state.counters["full_move_fraction"] = open > 0 ? static_cast<double>(full) / static_cast<double>(open) : 0.0;
    state.counters["heap_growth_bytes"] =
        static_cast<double>(heap_after > heap_before ? heap_after - heap_before : 0);
  });
}

// --- Throughput --------------------------------------------------------------------------
void BM_Throughput(benchmark::State& state, Policy policy) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = engines->w;
  with_policy(policy, [&](const auto& scorer) {
    typename std::remove_cvref_t<decltype(scorer)>::Workspace ws;  // one per thread
    ScoredRequest out;
    // Request ids disjoint between threads; the same request mix in each.
    std::uint64_t id = 1 + (static_cast<std::uint64_t>(state.thread_index()) << 40);
    for (std::size_t r = 0; r < kRequestsPerSize; ++r)
      scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
    std::size_t r = 0;
    for (auto _ : state) {
      scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
      benchmark::DoNotOptimize(out.ranking.data());
      r = r + 1 == kRequestsPerSize ? 0 : r + 1;
    }
    // Summed over threads, per second of wall time: the throughput of all threads.
    state.counters["requests_per_second"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  });
}

// --- Memory ------------------------------------------------------------------------------
void BM_Workspace(benchmark::State& state, Policy policy) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = engines->w;
  double bytes = 0;
  with_policy(policy, [&](const auto& scorer) {
    using Ws = typename std::remove_cvref_t<decltype(scorer)>::Workspace;
    ScoredRequest out;
    {
      Ws warm;  // sizes `out`, so that only the workspace is counted below
      scorer.score(Request{w.users[s][0], w.items[s][0], 1}, out, warm);
    }
    const std::size_t before = heap_in_use();
    auto ws = std::make_unique<Ws>();
    std::uint64_t id = 1;
    for (int round = 0; round < 2; ++round)
      for (std::size_t r = 0; r < kRequestsPerSize; ++r)
        scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, *ws);
    bytes = static_cast<double>(heap_in_use() - before);
  });
  for (auto _ : state) benchmark::DoNotOptimize(bytes);
  state.counters["workspace_bytes_per_request"] = bytes;
  state.counters["workspace_bytes_per_candidate"] = bytes / static_cast<double>(n);
}

// --- Propensities ------------------------------------------------------------------------
// The cost a service adds per request when it logs propensities on the serving path: the
// request was scored (not timed), then its top-3 propensities are computed (timed).
template <class P>
void propensity_loop(benchmark::State& state, const P& policy, std::size_t draws) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = engines->w;
  typename P::Workspace ws;
  PropensityWorkspace pws;
  Propensities props;
  std::vector<ScoredRequest> served(kRequestsPerSize);
  for (std::size_t r = 0; r < kRequestsPerSize; ++r) {
    policy.score(Request{w.users[s][r], w.items[s][r], r + 1}, served[r], ws);
    compute_propensities(policy, Request{w.users[s][r], w.items[s][r], r + 1}, served[r],
                         {.positions = 3, .draws = draws}, ws, pws, props);  // warm-up
  }
  std::size_t r = 0;
  for (auto _ : state) {
    compute_propensities(policy, Request{w.users[s][r], w.items[s][r], r + 1}, served[r],
                         {.positions = 3, .draws = draws}, ws, pws, props);
    benchmark::DoNotOptimize(props.prob.data());
    benchmark::ClobberMemory();
    r = r + 1 == kRequestsPerSize ? 0 : r + 1;
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["ns_per_request"] =
      benchmark::Counter(iters * 1e-9, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["ns_per_draw"] = benchmark::Counter(iters * static_cast<double>(std::max<std::size_t>(draws, 1)) * 1e-9,
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_PropensityExact(benchmark::State& state) { propensity_loop(state, engines->epsilon_greedy, 1); }

void BM_PropensityMonteCarlo(benchmark::State& state) {
  propensity_loop(state, engines->ts_fgm, static_cast<std::size_t>(state.range(1)));
}

void register_all() {
  benchmark::RegisterBenchmark("BM_GemmCeiling", BM_GemmCeiling)->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
  const std::pair<const char*, Product> products[] = {
      {"w_item", Product::w_item}, {"w1", Product::w1}, {"w1_t", Product::w1_t}, {"w_item_t", Product::w_item_t}};
  for (const auto& [product_name, product] : products)
    for (const bool kernel : {true, false}) {
      const std::string name = std::string("BM_Product/") + (kernel ? "kernel/" : "eigen/") + product_name;
      auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_Product, product, kernel);
      for (Index n : kSizes) b->Arg(n);
      b->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
    }
  for (Policy p : kPolicies) {
    const std::string name(age::bench::name(p));
    auto* b = benchmark::RegisterBenchmark(("BM_Score/" + name).c_str(), BM_Score, p);
    for (Index n : kSizes) b->Arg(n);
    b->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
  }
  for (Policy p : {Policy::greedy, Policy::age_ts_fgm}) {
    const std::string name(age::bench::name(p));
    auto* b = benchmark::RegisterBenchmark(("BM_Throughput/" + name).c_str(), BM_Throughput, p);
    b->Arg(100)->Arg(1000)->Threads(1)->Threads(2)->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
  for (Policy p : kPolicies) {
    const std::string name(age::bench::name(p));
    auto* b = benchmark::RegisterBenchmark(("BM_Workspace/" + name).c_str(), BM_Workspace, p);
    for (Index n : kSizes) b->Arg(n);
    b->Iterations(1);
  }
  auto* exact = benchmark::RegisterBenchmark("BM_Propensity/epsilon_greedy", BM_PropensityExact);
  for (Index n : {Index{10}, Index{100}, Index{1000}}) exact->Args({n, 0});
  exact->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
  auto* mc = benchmark::RegisterBenchmark("BM_Propensity/age_ts_fgm", BM_PropensityMonteCarlo);
  for (Index n : {Index{10}, Index{100}})
    for (Index k : {Index{16}, Index{256}}) mc->Args({n, k});
  mc->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
}

#ifdef AGE_BENCH_BLAS
// OpenBLAS on one thread per caller (as the peer), and its name for the context.
std::string blas_description() {
  const std::string d = openblas_one_thread();
  return d.empty() ? "not OpenBLAS (the reference BLAS?)" : d;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
#ifdef AGE_BENCH_BLAS
  const std::string blas = blas_description();  // sets one BLAS thread before any product
#endif
  const auto built = std::make_unique<Engines>();
  engines = built.get();
  ceiling_gflops = measure_ceiling();
  benchmark::AddCustomContext("engine", "age (Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
                                            std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                            std::to_string(EIGEN_MINOR_VERSION) + ", " + Eigen::SimdInstructionSetsInUse() +
                                            ")");
  benchmark::AddCustomContext("gemm_ceiling_gflops", std::to_string(ceiling_gflops));
#ifdef AGE_BENCH_BLAS
  benchmark::AddCustomContext("blas", blas);
#endif
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
