// The libtorch peer: the reference workload (benchmarks/workload.hpp) written in libtorch
// as a careful engineer would, with the same weights and requests as age_bench and the
// same benchmark names (BM_Score/<policy>/<N>), so that benchmarks/compare.py pairs them.
//
// How it is written (what a team would otherwise ship):
//   - one thread: at::set_num_threads(1), and OpenBLAS told the same;
//   - candidates batched as rows ([N, d] tensors), nn.Linear-shaped weights ([out, in])
//     through at::linear / at::addmm (one BLAS GEMM per layer);
//   - the user part of the first layer computed once per request and broadcast;
//   - torch::NoGradGuard everywhere except the input-gradient passes;
//   - MC-Dropout by mask tensors: the masks ([S, 1, H], shared by the request's
//     candidates) multiply the weights' input columns (the same as multiplying the hidden
//     activations, on a smaller tensor); the no-dropout first-layer activations are reused
//     by every mask sample, and the S = 20 UCB samples run as one batched product;
//   - freed memory kept by the allocator (mallopt), as a service's caching allocator would,
//     so that large temporaries do not page-fault on every request;
//   - the DGU gate, then FGM / PGD only for the candidates whose gate is open (gathered
//     with index_select), the gradient of the output with respect to the item input by
//     autograd, per-candidate L2 normalisation and projection as tensor ops;
//   - a stable descending sort for the ranking.
// At start-up it checks that it computes what age computes: with age's own dropout masks
// it must reproduce age's base, delta, gate and explored scores.
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "../openblas.hpp"
#include "../workload.hpp"
#include "age/explore/baselines.hpp"
#include "age/explore/scorer.hpp"

namespace {

using age::Index;
using age::bench::Policy;
using torch::Tensor;

// age stores a batch as item_dim x N column-major, which is exactly an [N, item_dim]
// row-major tensor; weights are out x in column-major, i.e. [in, out] row-major.
Tensor batch_tensor(const age::Matrix& m) {
  return torch::from_blob(const_cast<float*>(m.data()), {m.cols(), m.rows()}, torch::kFloat32).clone();
}
Tensor linear_weight(const age::Matrix& w) {  // nn.Linear layout [out, in], contiguous
  return torch::from_blob(const_cast<float*>(w.data()), {w.cols(), w.rows()}, torch::kFloat32).t().contiguous();
}
Tensor vector_tensor(const age::Vector& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {v.size()}, torch::kFloat32).clone();
}

struct Net {
  Tensor w0u, w0i, b0, w1, b1, w2, b2;  // main tower, first layer split [W_user | W_item]
  Tensor wd1, bd1, wd2, bd2;            // DGU

  explicit Net(const age::bench::Workload& w) {
    const Tensor w0 = linear_weight(w.tower.weight(0));
    w0u = w0.narrow(1, 0, static_cast<std::int64_t>(age::bench::kUserDim)).contiguous();
    w0i = w0.narrow(1, static_cast<std::int64_t>(age::bench::kUserDim), static_cast<std::int64_t>(age::bench::kItemDim))
              .contiguous();
    b0 = vector_tensor(w.tower.bias(0));
    w1 = linear_weight(w.tower.weight(1));
    b1 = vector_tensor(w.tower.bias(1));
    w2 = linear_weight(w.tower.weight(2));
    b2 = vector_tensor(w.tower.bias(2));
    wd1 = linear_weight(w.dgu.weight(0));
    bd1 = vector_tensor(w.dgu.bias(0));
    wd2 = linear_weight(w.dgu.weight(1));
    bd2 = vector_tensor(w.dgu.bias(1));
  }
};

struct Masks {
  Tensor m0, m1;  // [S, 1, H0], [S, 1, H1]
};

struct Result {
  Tensor base, delta, open, explored, ranking;
};

class TorchScorer {
 public:
  TorchScorer(const Net& net, Policy policy) : net_(net), policy_(policy) {}

  // Masks drawn with torch's generator, entries 0 or 1 / (1 - p). Each its own contiguous
  // tensor: a broadcast multiply with a strided view of one [S, 1, H0 + H1] draw is some
  // 60 times slower in torch 1.13.
  Masks sample_masks() const {
    const auto s = static_cast<std::int64_t>(policy_ == Policy::age_ucb20_fgm ? age::bench::kUcbSamples : 1);
    const double keep = 1.0 - age::bench::kDropout;
    auto draw = [&](std::size_t h) {
      return torch::empty({s, 1, static_cast<std::int64_t>(h)}).bernoulli_(keep).div_(keep);
    };
    return {draw(age::bench::kHidden0), draw(age::bench::kHidden1)};
  }

  // user [1, du], items [N, di]; masks: given (parity check) or drawn here.
  Result score(const Tensor& user, const Tensor& items, const Masks* given = nullptr) const {
    torch::NoGradGuard no_grad;
    Result r;
    const Tensor u0 = at::linear(user, net_.w0u, net_.b0);  // once per request, [1, H0]
    const Tensor a0 = torch::relu(at::addmm(u0, items, net_.w0i.t()));
    r.base = torch::sigmoid(head_from_act(a0));
    if (policy_ == Policy::greedy) {
      r.explored = r.base;
      r.ranking = std::get<1>(r.base.sort(/*stable=*/true, 0, /*descending=*/true));
      return r;
    }
    // delta_y by MC-Dropout: the first layer's activations a0 are reused by every sample.
    // A mask shared by the candidates multiplies the weights' input columns instead of
    // the [S, N, H] activations: W (m .* a) = (W .* m^T) a, a smaller tensor to build.
    const Masks masks = given ? *given : sample_masks();
    const Tensor w1m = net_.w1.unsqueeze(0) * masks.m0;  // [S, H1, H0]
    const Tensor w2m = net_.w2.unsqueeze(0) * masks.m1;  // [S, 1, H1]
    const Tensor a1 = torch::relu(at::matmul(a0, w1m.transpose(1, 2)) + net_.b1);           // [S, N, H1]
    const Tensor ys = torch::sigmoid(at::matmul(a1, w2m.transpose(1, 2)) + net_.b2).squeeze(2);  // [S, N]
    if (policy_ == Policy::age_ucb20_fgm)
      r.delta = (ys - r.base).square().mean(0);
    else
      r.delta = ys[0] - r.base;
    // DGU gate, then the move for the open candidates only.
    const Tensor average = torch::sigmoid(
        at::linear(torch::relu(at::linear(items, net_.wd1, net_.bd1)), net_.wd2, net_.bd2).squeeze(1));
    r.open = r.base > average;
    const Tensor idx = r.open.nonzero().squeeze(1);
    if (idx.numel() == 0) {
      r.explored = r.base;
    } else {
      const Tensor x = items.index_select(0, idx);
      const Tensor delta = r.delta.index_select(0, idx);
      const Tensor dh = policy_ == Policy::age_ts_pgd3 ? pgd(u0, x, delta) : fgm(u0, x, delta);
      const Tensor ye = torch::sigmoid(logits_at(u0, x + dh));
      r.explored = r.base.index_copy(0, idx, ye);
    }
    r.ranking = std::get<1>(r.explored.sort(/*stable=*/true, 0, /*descending=*/true));
    return r;
  }

 private:
  Tensor head_from_act(const Tensor& a0) const {
    return at::linear(torch::relu(at::linear(a0, net_.w1, net_.b1)), net_.w2, net_.b2).squeeze(1);
  }
  Tensor logits_at(const Tensor& u0, const Tensor& x) const {
    return head_from_act(torch::relu(at::addmm(u0, x, net_.w0i.t())));
  }

  // d y / d x for every row of x, by autograd (rows are independent, so the gradient of
  // the sum is the per-candidate gradient).
  Tensor input_gradient(const Tensor& u0, const Tensor& x0) const {
    torch::AutoGradMode grad_on(true);
    const Tensor x = x0.detach().requires_grad_(true);
    const Tensor y = torch::sigmoid(logits_at(u0, x));
    return torch::autograd::grad({y.sum()}, {x})[0];
  }

  static Tensor row_norm(const Tensor& t) { return t.norm(2, {1}, /*keepdim=*/true); }

  // FGM: dh = lambda' delta_y g / ||g||.
  Tensor fgm(const Tensor& u0, const Tensor& x, const Tensor& delta) const {
    const Tensor g = input_gradient(u0, x);
    const Tensor norm = row_norm(g);
    const Tensor eps = (age::bench::kLambda * delta).unsqueeze(1);
    return g * torch::where(norm > 0, eps / norm, torch::zeros_like(norm));
  }

  // PGD on the L2 ball of radius lambda' |delta_y|, T steps of step_scale * eps / T, then
  // the sign of delta_y (age's Pgd defaults: start at h, step_scale 2.5).
  Tensor pgd(const Tensor& u0, const Tensor& x, const Tensor& delta) const {
    const auto steps = static_cast<double>(age::bench::kPgdSteps);
    const Tensor eps = (age::bench::kLambda * delta.abs()).unsqueeze(1);
    const Tensor alpha = 2.5 * eps / steps;
    Tensor r = torch::zeros_like(x);
    for (std::size_t t = 0; t < age::bench::kPgdSteps; ++t) {
      const Tensor g = input_gradient(u0, x + r);
      const Tensor norm = row_norm(g);
      r = r + g * torch::where((norm > 0) & (eps > 0), alpha / norm, torch::zeros_like(norm));
      const Tensor rn = row_norm(r);
      r = r * torch::where(rn > eps, eps / rn, torch::ones_like(rn));
    }
    return r * torch::sign(delta).unsqueeze(1);
  }

  const Net& net_;
  Policy policy_;
};

// --- Set-up shared by the benchmarks -------------------------------------------------------
struct Peer {
  age::bench::Workload w;
  Net net{w};
  std::vector<std::vector<Tensor>> users, items;  // the same requests as age_bench

  Peer() {
    for (std::size_t s = 0; s < age::bench::kSizes.size(); ++s) {
      users.emplace_back();
      items.emplace_back();
      for (std::size_t r = 0; r < age::bench::kRequestsPerSize; ++r) {
        users[s].push_back(batch_tensor(w.users[s][r]));
        items[s].push_back(batch_tensor(w.items[s][r]));
      }
    }
  }
};
const Peer* peer = nullptr;

std::size_t size_index(Index n) {
  return static_cast<std::size_t>(std::find(age::bench::kSizes.begin(), age::bench::kSizes.end(), n) -
                                  age::bench::kSizes.begin());
}

void BM_Score(benchmark::State& state, Policy policy) {
  const Index n = state.range(0);
  const std::size_t s = size_index(n);
  const TorchScorer scorer(peer->net, policy);
  for (std::size_t r = 0; r < age::bench::kRequestsPerSize; ++r) scorer.score(peer->users[s][r], peer->items[s][r]);
  std::int64_t open = 0;
  std::size_t r = 0;
  for (auto _ : state) {
    const Result res = scorer.score(peer->users[s][r], peer->items[s][r]);
    if (res.open.defined()) open += res.open.sum().item<std::int64_t>();
    benchmark::DoNotOptimize(res.ranking.data_ptr());
    r = r + 1 == age::bench::kRequestsPerSize ? 0 : r + 1;
  }
  const double candidates = static_cast<double>(state.iterations()) * static_cast<double>(n);
  state.counters["ns_per_candidate"] =
      benchmark::Counter(candidates * 1e-9, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["open_fraction"] = static_cast<double>(open) / candidates;
}

// OpenBLAS's GEMM on the ceiling's shape, for reference.
void BM_TorchGemm(benchmark::State& state) {
  const Tensor a = torch::rand({age::bench::kCeilingN, 192}), b = torch::rand({192, 256});
  Tensor c = torch::empty({age::bench::kCeilingN, 256});
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * age::bench::kCeilingFlops * 1e-9,
                                                 benchmark::Counter::kIsRate);
}

// --- Parity with age ------------------------------------------------------------------------
// age's scorer and this peer on the same requests, with age's dropout masks fed to the
// peer: the two must agree (float rounding apart).
template <class Scorer>
bool check_policy(Policy policy, const Scorer& age_scorer, std::size_t samples) {
  bool ok = true;
  const TorchScorer scorer(peer->net, policy);
  typename Scorer::Workspace ws;
  age::ScoredRequest out;
  for (std::size_t s = 0; s < age::bench::kSizes.size(); ++s) {
    for (std::size_t r = 0; r < 2; ++r) {
      const std::uint64_t id = 100 + r;
      age_scorer.score(age::Request{peer->w.users[s][r], peer->w.items[s][r], id}, out, ws);
      Masks masks;
      if constexpr (requires { age_scorer.uncertainty_rng(id); }) {
        age::Rng rng = age_scorer.uncertainty_rng(id);
        age::DropoutMask m;
        std::vector<Tensor> m0, m1;
        for (std::size_t k = 0; k < samples; ++k) {
          peer->w.tower.sample_mask(age::bench::kDropout, 1, rng, m);
          m0.push_back(batch_tensor(m.layers[0]).view({1, 1, -1}));
          m1.push_back(batch_tensor(m.layers[1]).view({1, 1, -1}));
        }
        masks = {torch::cat(m0, 0), torch::cat(m1, 0)};
      }
      const Result res = scorer.score(peer->users[s][r], peer->items[s][r], samples > 0 ? &masks : nullptr);
      auto diff = [](const Tensor& t, const age::RowVector& v) {
        const Tensor ref = torch::from_blob(const_cast<float*>(v.data()), {v.size()}, torch::kFloat32);
        return (t - ref).abs().max().item<double>();
      };
      const double d_base = diff(res.base, out.base);
      const double d_explored = diff(res.explored, out.explored);
      double d_delta = 0;
      std::int64_t gate_mismatch = 0;
      if (samples > 0) {
        d_delta = diff(res.delta, out.delta);
        const Tensor g = torch::from_blob(out.gate.data(), {static_cast<std::int64_t>(out.gate.size())}, torch::kUInt8)
                             .to(torch::kBool);
        gate_mismatch = (g != res.open).sum().item<std::int64_t>();
      }
      if (!(d_base < 1e-5 && d_delta < 1e-5 && d_explored < 1e-5 && gate_mismatch == 0)) {
        std::fprintf(stderr,
                     "parity: %s N=%ld request %zu: max |diff| base %.3g delta %.3g explored %.3g, %ld gate "
                     "mismatches\n",
                     std::string(age::bench::name(policy)).c_str(), static_cast<long>(age::bench::kSizes[s]), r,
                     d_base, d_delta, d_explored, static_cast<long>(gate_mismatch));
        ok = false;
      }
    }
  }
  return ok;
}

bool check_parity() {
  using namespace age;
  const bench::Workload& w = peer->w;
  const DguGate gate(w.dgu);
  const Greedy<Tower> greedy(w.tower);
  const AgeScorer<Tower, McDropoutTs, Fgm, DguGate> ts_fgm(w.tower, gate, McDropoutTs{bench::kDropout},
                                                           Fgm{.lambda = bench::kLambda}, 3);
  const AgeScorer<Tower, McDropoutTs, Pgd, DguGate> ts_pgd(w.tower, gate, McDropoutTs{bench::kDropout},
                                                           Pgd{.lambda = bench::kLambda, .steps = bench::kPgdSteps}, 3);
  const AgeScorer<Tower, McDropoutUcb, Fgm, DguGate> ucb(
      w.tower, gate, McDropoutUcb{.rate = bench::kDropout, .samples = bench::kUcbSamples}, Fgm{.lambda = bench::kLambda},
      3);
  bool ok = check_policy(Policy::greedy, greedy, 0);
  ok = check_policy(Policy::age_ts_fgm, ts_fgm, 1) && ok;
  ok = check_policy(Policy::age_ts_pgd3, ts_pgd, 1) && ok;
  ok = check_policy(Policy::age_ucb20_fgm, ucb, bench::kUcbSamples) && ok;
  return ok;
}

// --- BLAS -------------------------------------------------------------------------------------
// Debian's libtorch calls whatever libblas.so.3 the alternatives system points at. The
// reference BLAS would make the peer a strawman, so it must be OpenBLAS, on one thread.
std::string blas_description() { return age::bench::openblas_one_thread(); }

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  at::set_num_threads(1);
  at::set_num_interop_threads(1);
  // glibc returns large freed blocks to the kernel, and every request would then fault
  // its UCB temporaries (megabytes at N = 1000) back in: keep them, as tcmalloc/jemalloc
  // or torch's caching allocators do in a service.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  torch::manual_seed(7);
  const std::string blas = blas_description();
  if (blas.empty()) {
    const char* allow = std::getenv("AGE_PEER_ALLOW_ANY_BLAS");
    if (!allow || std::string(allow) != "1") {
      std::fprintf(stderr,
                   "age_torch_peer: libblas.so.3 is not OpenBLAS (the reference BLAS?): the peer would be a "
                   "strawman. Install OpenBLAS (Debian: libopenblas0) or set AGE_PEER_ALLOW_ANY_BLAS=1.\n");
      return 2;
    }
  }
  const auto built = std::make_unique<Peer>();
  peer = built.get();
  if (!check_parity()) {
    std::fprintf(stderr, "age_torch_peer: the peer does not compute what age computes\n");
    return 3;
  }
  benchmark::AddCustomContext("engine", "libtorch " + std::string(TORCH_VERSION) + ", " +
                                            std::to_string(at::get_num_threads()) + " intra-op thread");
  benchmark::AddCustomContext("blas", blas.empty() ? std::string("unknown (not OpenBLAS)") : blas);
  benchmark::AddCustomContext("parity_with_age", "ok");
  benchmark::RegisterBenchmark("BM_TorchGemm", BM_TorchGemm)->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
  for (Policy p : age::bench::kPolicies) {
    auto* b = benchmark::RegisterBenchmark(("BM_Score/" + std::string(age::bench::name(p))).c_str(), BM_Score, p);
    for (Index n : age::bench::kSizes) b->Arg(n);
    b->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
