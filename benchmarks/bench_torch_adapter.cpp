// The price of not porting a model: per-candidate cost of AGE-TS + FGM over the TorchScript
// adapter (age/torch/torch_model.hpp) against the same policy over the native Tower, on the
// reference workload (benchmarks/workload.hpp: tower 192-256-64-1, DGU 64-32-1, MC-Dropout
// p = 0.01, lambda' = 1e-3), one thread, in one binary so that the ratio comes from one run.
//
//   BM_AgeTsFgm/native/<N>   AgeTsFgm<Tower>, the library's request-pass engine
//   BM_AgeTsFgm/torch/<N>    AgeTsFgm<TorchCtrModel> over a TorchScript module with the
//                            Tower's weights (explicit-mask mode, so both draw the same
//                            masks), on the plain engine: one forward for the base, one
//                            for the MC-Dropout sample, forward + backward for the
//                            gradient, one forward at the move
//   BM_Logits/<native|torch>/<N>   the forward pass alone, for scale
// Counters: ns_per_candidate and items_per_second. The module is built here with
// torch::jit::Module::define (TorchScript source, no Python needed), the same function a
// PyTorch user would script; start-up checks that both sides give the same scores.
// libtorch runs on one intra-op thread (at::set_num_threads(1)) and OpenBLAS on one thread,
// like the native engine.
#include <benchmark/benchmark.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "age/explore/scorer.hpp"
#include "age/torch/torch_model.hpp"
#include "openblas.hpp"
#include "workload.hpp"

namespace {

using namespace age;
using namespace age::bench;

// The Tower as a TorchScript module: W0 = [W_user | W_item] on cat(user, items), ReLU
// hidden layers, the mask of dropout site l after hidden ReLU l, one logit.
torch::jit::Module scripted_tower(const Tower& tower) {
  torch::jit::Module m("ReferenceTower");
  auto tensor = [](const auto& eigen, std::int64_t rows, std::int64_t cols) {
    // Eigen column-major rows x cols -> torch [rows, cols] (a copy the module owns).
    return torch::from_blob(const_cast<float*>(eigen.data()), {cols, rows}).t().contiguous();
  };
  const char* const weight_names[] = {"w0", "w1", "w2"};
  const char* const bias_names[] = {"b0", "b1", "b2"};
  if (tower.num_layers() != 3) std::abort();  // the source below is written for 192-256-64-1
  for (std::size_t l = 0; l < tower.num_layers(); ++l) {
    const Matrix& w = tower.weight(l);
    m.register_parameter(weight_names[l], tensor(w, w.rows(), w.cols()), false);
    const Vector& b = tower.bias(l);
    m.register_parameter(bias_names[l], tensor(b, 1, b.size()).squeeze(0), false);
  }
  m.register_attribute("user_dim", c10::IntType::get(), static_cast<std::int64_t>(tower.user_dim()));
  m.register_attribute("item_dim", c10::IntType::get(), static_cast<std::int64_t>(tower.item_dim()));
  c10::List<std::int64_t> sizes;
  for (const std::size_t h : tower.hidden()) sizes.push_back(static_cast<std::int64_t>(h));
  m.register_attribute("dropout_sizes", c10::ListType::ofInts(), sizes);
  m.define(R"(
    def forward(self, user: Tensor, items: Tensor) -> Tensor:
        h = torch.cat([user.expand(items.size(0), -1), items], 1)
        h = torch.relu(torch.addmm(self.b0, h, self.w0.t()))
        h = torch.relu(torch.addmm(self.b1, h, self.w1.t()))
        return torch.addmm(self.b2, h, self.w2.t()).squeeze(1)

    def forward_masked(self, user: Tensor, items: Tensor, masks: List[Tensor]) -> Tensor:
        h = torch.cat([user.expand(items.size(0), -1), items], 1)
        h = torch.relu(torch.addmm(self.b0, h, self.w0.t())) * masks[0]
        h = torch.relu(torch.addmm(self.b1, h, self.w1.t())) * masks[1]
        return torch.addmm(self.b2, h, self.w2.t()).squeeze(1)
  )");
  return m;
}

struct Setup {
  Workload w;
  std::unique_ptr<TorchCtrModel> model;
  Setup() {
    model = std::make_unique<TorchCtrModel>(scripted_tower(w.tower), TorchModelOptions{}, "reference tower");
    // Both sides must score alike, or the comparison would be of different work.
    const std::size_t s = 2;  // N = 100
    const Request request{w.users[s][0], w.items[s][0], 1};
    const ScoredRequest a = native(w.dgu).score(request);
    const ScoredRequest b = torch(w.dgu).score(request);
    const float diff = (a.explored - b.explored).cwiseAbs().maxCoeff();
    if (!(diff <= 1e-5f) || a.gate != b.gate) {
      std::fprintf(stderr, "bench_torch_adapter: the adapter's scores differ from the native ones by %g\n", diff);
      std::exit(1);
    }
  }
  AgeTsFgm<Tower> native(const Tower& dgu) const {
    return AgeTsFgm<Tower>(w.tower, DguGate(dgu), McDropoutTs{.rate = kDropout}, Fgm{.lambda = kLambda}, 7);
  }
  AgeTsFgm<TorchCtrModel> torch(const Tower& dgu) const {
    return AgeTsFgm<TorchCtrModel>(*model, DguGate(dgu), McDropoutTs{.rate = kDropout}, Fgm{.lambda = kLambda}, 7);
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

std::size_t size_index(Index n) {
  for (std::size_t s = 0; s < kSizes.size(); ++s)
    if (kSizes[s] == n) return s;
  std::abort();
}

void counters(benchmark::State& state, Index n) {
  const double candidates = static_cast<double>(state.iterations()) * static_cast<double>(n);
  state.counters["ns_per_candidate"] =
      benchmark::Counter(candidates * 1e-9, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.SetItemsProcessed(static_cast<std::int64_t>(candidates));
}

template <class Scorer>
void score_loop(benchmark::State& state, const Scorer& scorer) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = setup().w;
  typename Scorer::Workspace ws;
  ScoredRequest out;
  std::uint64_t id = 1;
  for (std::size_t r = 0; r < kRequestsPerSize; ++r) scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
  std::size_t r = 0;
  for (auto _ : state) {
    scorer.score(Request{w.users[s][r], w.items[s][r], id++}, out, ws);
    benchmark::DoNotOptimize(out.ranking.data());
    r = r + 1 == kRequestsPerSize ? 0 : r + 1;
  }
  counters(state, n);
}

void BM_AgeTsFgm_native(benchmark::State& state) { score_loop(state, setup().native(setup().w.dgu)); }
void BM_AgeTsFgm_torch(benchmark::State& state) { score_loop(state, setup().torch(setup().w.dgu)); }

template <class Model>
void logits_loop(benchmark::State& state, const Model& model) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const Workload& w = setup().w;
  typename Model::Workspace ws;
  RowVector z(n);
  std::size_t r = 0;
  for (auto _ : state) {
    model.logits(w.users[s][r], w.items[s][r], nullptr, ws, z);
    benchmark::DoNotOptimize(z.data());
    r = r + 1 == kRequestsPerSize ? 0 : r + 1;
  }
  counters(state, n);
}

void BM_Logits_native(benchmark::State& state) { logits_loop(state, setup().w.tower); }
void BM_Logits_torch(benchmark::State& state) { logits_loop(state, *setup().model); }

void sizes(benchmark::internal::Benchmark* b) {
  for (const Index n : kSizes) b->Arg(n);
}

}  // namespace

// Process CPU time, as age_bench (robust to other processes taking the core for a while).
BENCHMARK(BM_AgeTsFgm_native)->Name("BM_AgeTsFgm/native")->Apply(sizes)->MeasureProcessCPUTime();
BENCHMARK(BM_AgeTsFgm_torch)->Name("BM_AgeTsFgm/torch")->Apply(sizes)->MeasureProcessCPUTime();
BENCHMARK(BM_Logits_native)->Name("BM_Logits/native")->Apply(sizes)->MeasureProcessCPUTime();
BENCHMARK(BM_Logits_torch)->Name("BM_Logits/torch")->Apply(sizes)->MeasureProcessCPUTime();

int main(int argc, char** argv) {
  // libtorch's products go to the system BLAS: one thread per caller, like the native side.
  const std::string blas = openblas_one_thread();
  benchmark::AddCustomContext("blas", blas.empty() ? "not OpenBLAS (expect libtorch to be slow)" : blas);
  benchmark::AddCustomContext("torch_threads", "1");
  at::set_num_threads(1);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
