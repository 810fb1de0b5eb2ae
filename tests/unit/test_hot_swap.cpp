// Live model updates: ModelHolder<Bundle> under concurrent scoring and swapping.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "age/core/error.hpp"
#include "age/core/rng.hpp"
#include "age/explore/gate.hpp"
#include "age/explore/request.hpp"
#include "age/explore/scorer.hpp"
#include "age/features/layout.hpp"
#include "age/model/embedding_model.hpp"
#include "age/model/tower.hpp"
#include "age/serve/model_holder.hpp"

#ifdef AGE_HAVE_IO
#include "age/io/model_io.hpp"
#include "age/io/safetensors.hpp"
#endif

using namespace age;
using namespace std::chrono_literals;

namespace {

// What a service swaps as one unit: the CTR model, its DGU tower, and an object that
// points into the bundle (as AgeScorer points at its model), so the bundle can be neither
// copied nor moved and must be built in place.
struct Served {
  EmbeddingCtrModel model;
  Tower dgu;
  const EmbeddingCtrModel* scorer_model;
  int id;  // which version of the test's model sequence this is

  static inline std::atomic<int> live{0};

  Served(EmbeddingCtrModel m, Tower d, int version) : model(std::move(m)), dgu(std::move(d)), scorer_model(&model), id(version) {
    live.fetch_add(1);
  }
  Served(const Served&) = delete;
  Served& operator=(const Served&) = delete;
  ~Served();
};

// Which thread destroyed each version (to check retire() frees on the updating thread).
std::mutex freed_mutex;
std::map<int, std::thread::id> freed_by;

Served::~Served() {
  live.fetch_sub(1);
  std::lock_guard<std::mutex> lock(freed_mutex);
  freed_by[id] = std::this_thread::get_id();
}

FeatureLayout test_layout() {
  FeatureLayout layout;
  layout.add_categorical("user_id", Side::User, 30, 4)
      .add_dense("user_ctx", Side::User, 2)
      .add_categorical("item_id", Side::Item, 50, 4)
      .add_dense("item_price", Side::Item, 1);
  return layout;
}

// Version v's parameters: every one of them depends on v, so a request that mixed two
// versions (say v's embeddings with w's tower, or v's model with w's DGU) would match
// neither version's scores.
EmbeddingCtrModel version_model(int v) {
  EmbeddingCtrModel model(test_layout(), {8});
  Rng rng(static_cast<std::uint64_t>(v));
  model.initialize(rng, 0.3);
  return model;
}
Tower version_dgu(int v, std::size_t item_dim) {
  Tower dgu(0, item_dim, {4});
  Rng rng(1000 + static_cast<std::uint64_t>(v));
  dgu.initialize(rng);
  return dgu;
}

constexpr int kCandidates = 16;

struct RawRequest {
  SideInput user;
  std::vector<SideInput> items;
};
RawRequest test_request() {
  RawRequest r;
  r.user = {{{7}, {}}, {{}, {0.5f, -1.0f}}};
  for (int n = 0; n < kCandidates; ++n)
    r.items.push_back({{{static_cast<std::uint64_t>(3 * n + 1)}, {}}, {{}, {0.1f * static_cast<float>(n)}}});
  return r;
}

// One request's output: pCTR of every candidate from the model, and the DGU's logit of
// every candidate (computed on the same item embeddings).
struct Scores {
  RowVector prob, gate;
  bool operator==(const Scores& o) const { return prob == o.prob && gate == o.gate; }
};

struct ThreadScratch {
  ModelWorkspace model;
  TowerWorkspace dgu;
  Matrix no_user{0, 1};
};

Scores score(const Served& s, const RawRequest& r, ThreadScratch& ws) {
  Scores out{RowVector(kCandidates), RowVector(kCandidates)};
  s.scorer_model->predict(r.user, r.items, ws.model, out.prob);
  s.dgu.logits(ws.no_user, ws.model.items, nullptr, ws.dgu, out.gate);
  return out;
}

std::shared_ptr<const Served> build_version(int v) {
  EmbeddingCtrModel m = version_model(v);
  const std::size_t item_dim = m.item_dim();
  return std::make_shared<const Served>(std::move(m), version_dgu(v, item_dim), v);
}

}  // namespace

TEST_CASE("ModelHolder: versions, publish, emplace, failed loads, readers, retire", "[hot-swap]") {
  const int live_before = Served::live.load();
  {
    ModelHolder<Served> holder(build_version(1));
    CHECK(holder.version() == 1);
    auto first = holder.snapshot();
    REQUIRE(first);
    CHECK(first.version() == 1);
    CHECK(first->id == 1);
    CHECK(first->scorer_model == &first->model);

    // Null bundles are refused and change nothing.
    CHECK_THROWS_AS(ModelHolder<Served>(nullptr), ConfigError);
    CHECK_THROWS_WITH(holder.publish(nullptr),
                      Catch::Contains("model holder: bundle to publish: expected a loaded bundle, got null"));
    CHECK(holder.version() == 1);

    // emplace builds in place (Served is neither copyable nor movable).
    const int v2 = 2;
    auto previous = holder.emplace(version_model(v2), version_dgu(v2, test_layout().item_dim()), v2);
    CHECK(previous.version() == 1);
    CHECK(previous->id == 1);
    CHECK(holder.version() == 2);
    CHECK(holder.snapshot()->id == 2);
    CHECK(holder.snapshot()->scorer_model == &holder.snapshot()->model);

    // A loader that fails (corrupt file) leaves the served version in place.
    auto corrupt_file = []() -> std::shared_ptr<const Served> { throw FormatError("model.safetensors: truncated"); };
    CHECK_THROWS_AS(holder.publish_from(corrupt_file), FormatError);
    CHECK(holder.version() == 2);
    CHECK(holder.snapshot()->id == 2);
    auto third = holder.publish_from([] { return build_version(3); });
    CHECK(third.version() == 2);
    CHECK(holder.snapshot().version() == 3);

    // The old version lives while someone holds it and is freed with its last owner.
    std::weak_ptr<const Served> weak_first = first.shared();
    previous.reset();
    CHECK_FALSE(weak_first.expired());  // `first` still holds version 1
    first.reset();
    CHECK(weak_first.expired());

    // A Reader refreshes only after a publish, and release() lets its version go.
    ModelHolder<Served>::Reader reader(holder);
    const auto& a = reader.current();
    const Served* seen = a.get();
    CHECK(a.version() == 3);
    CHECK(reader.current().get() == seen);
    std::weak_ptr<const Served> weak_third = reader.current().shared();
    third = holder.publish(build_version(4));  // `third` is now version 3, the previous one
    CHECK(reader.current().version() == 4);
    CHECK(reader.current()->id == 4);
    CHECK_FALSE(weak_third.expired());  // `third` holds it
    third.reset();
    CHECK(weak_third.expired());
    std::weak_ptr<const Served> weak_fourth = reader.current().shared();
    auto fourth = holder.publish(build_version(5));
    fourth.reset();
    CHECK_FALSE(weak_fourth.expired());  // the reader's cache still holds version 4
    reader.release();
    CHECK(weak_fourth.expired());

    // retire(): times out while a reader holds the version, frees it here once released.
    auto held = holder.snapshot();
    auto retired = holder.publish(build_version(6));
    std::weak_ptr<const Served> weak_held = held.shared();
    CHECK_FALSE(ModelHolder<Served>::retire(retired, 20ms));  // a copy is passed; `held` and `retired` remain
    std::thread late_reader([held = std::move(held)]() mutable {
      std::this_thread::sleep_for(20ms);
      held.reset();
    });
    CHECK(ModelHolder<Served>::retire(std::move(retired), 10s));
    late_reader.join();
    CHECK(weak_held.expired());
    {
      std::lock_guard<std::mutex> lock(freed_mutex);
      CHECK(freed_by[5] == std::this_thread::get_id());
    }
    CHECK(Served::live.load() == live_before + 1);  // only the served version is left
  }
  CHECK(Served::live.load() == live_before);
}

TEST_CASE("hot swap under load: every request scores with exactly one version, old versions are freed",
          "[hot-swap]") {
  constexpr int kVersions = 40;
  constexpr int kSnapshotReaders = 3;  // snapshot() per request
  constexpr int kCachedReaders = 2;    // one ModelHolder::Reader per thread
  constexpr int kReaders = kSnapshotReaders + kCachedReaders;
  const RawRequest request = test_request();
  const int live_before = Served::live.load();

  // Expected output of every version, computed single-threaded up front.
  std::vector<Scores> expected(kVersions + 1);
  {
    ThreadScratch ws;
    for (int v = 1; v <= kVersions; ++v) expected[static_cast<std::size_t>(v)] = score(*build_version(v), request, ws);
    for (int v = 2; v <= kVersions; ++v)
      for (int w = 1; w < v; ++w) REQUIRE_FALSE(expected[static_cast<std::size_t>(v)].prob == expected[static_cast<std::size_t>(w)].prob);
  }

  // The updating thread loads each version the way a service would: from a weight file
  // holding the model and its DGU tower (in memory when built without the io headers).
#ifdef AGE_HAVE_IO
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(AGE_TEST_BINARY_DIR) / "hot_swap_tmp";
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto file_of = [&](int v) {
    // Appended piece by piece: GCC 12 misreports "v" + std::string as overlapping (-Wrestrict).
    std::string name = std::to_string(v);
    name += ".safetensors";
    return dir / name;
  };
  for (int v = 2; v <= kVersions; ++v) {
    auto b = build_version(v);
    Safetensors st = model_to_safetensors(b->model);
    add_tower(st, "dgu", b->dgu);
    write_safetensors(file_of(v), st);
  }
  auto load_version = [&](int v) {
    const Safetensors st = read_safetensors(file_of(v));
    return std::make_shared<const Served>(model_from_safetensors(st), read_tower(st, "dgu"), v);
  };
#else
  auto load_version = [](int v) { return build_version(v); };
#endif

  std::vector<std::weak_ptr<const Served>> published(kVersions + 1);
  std::vector<std::uint64_t> requests(kReaders, 0);
  std::vector<int> mismatches(kReaders, 0), wrong_version(kReaders, 0), went_back(kReaders, 0);
  std::vector<std::vector<int>> seen(kReaders, std::vector<int>(kVersions + 1, 0));
  std::atomic<std::uint64_t> progress{0};
  std::vector<std::atomic<std::uint64_t>> reader_progress(kReaders);  // per reader, for the final wait
  std::atomic<bool> stop{false};
  int max_live = 0, retired_here = 0, failed_loads = 0;
  std::vector<int> retired_versions;
  std::thread::id updater_id;

  {
    ModelHolder<Served> holder(build_version(1));
    published[1] = holder.snapshot().shared();

    auto check_request = [&](int t, const ModelHolder<Served>::Snapshot& snap, ThreadScratch& ws, std::uint64_t& last) {
      const Scores got = score(*snap, request, ws);
      const int v = snap->id;
      // The version the scores identify (by the full output vectors), independent of the
      // holder's numbering; a mixed request matches no version at all.
      int identified = 0;
      for (int w = 1; w <= kVersions && identified == 0; ++w)
        if (got == expected[static_cast<std::size_t>(w)]) identified = w;
      if (identified == 0) ++mismatches[static_cast<std::size_t>(t)];
      if (identified != v || snap.version() != static_cast<std::uint64_t>(v)) ++wrong_version[static_cast<std::size_t>(t)];
      if (snap.version() < last) ++went_back[static_cast<std::size_t>(t)];
      last = snap.version();
      if (v >= 1 && v <= kVersions) ++seen[static_cast<std::size_t>(t)][static_cast<std::size_t>(v)];
      ++requests[static_cast<std::size_t>(t)];
      progress.fetch_add(1, std::memory_order_relaxed);
      reader_progress[static_cast<std::size_t>(t)].fetch_add(1, std::memory_order_relaxed);
    };

    std::vector<std::thread> readers;
    for (int t = 0; t < kSnapshotReaders; ++t)
      readers.emplace_back([&, t] {
        ThreadScratch ws;
        std::uint64_t last = 0;
        while (!stop.load(std::memory_order_acquire)) {
          const auto snap = holder.snapshot();
          check_request(t, snap, ws, last);
        }
      });
    for (int t = kSnapshotReaders; t < kReaders; ++t)
      readers.emplace_back([&, t] {
        ThreadScratch ws;
        std::uint64_t last = 0;
        ModelHolder<Served>::Reader reader(holder);
        while (!stop.load(std::memory_order_acquire)) check_request(t, reader.current(), ws, last);
        reader.release();
      });

    std::thread updater([&] {
      updater_id = std::this_thread::get_id();
      for (int v = 2; v <= kVersions; ++v) {
        // Let the readers score a few requests with the current version first (bounded
        // wait, so a stalled reader fails the checks below instead of hanging the test).
        const std::uint64_t before = progress.load();
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (progress.load() < before + 2 * kReaders && std::chrono::steady_clock::now() < deadline)
          std::this_thread::yield();

        if (v % 10 == 0) {
          // A corrupt update is refused and the service keeps its version.
          const std::uint64_t served = holder.version();
          try {
            holder.publish_from([&]() -> std::shared_ptr<const Served> {
              throw FormatError("update file: truncated");
            });
          } catch (const FormatError&) {
            ++failed_loads;
          }
          if (holder.version() != served) ++failed_loads;  // counted twice: fails the check
        }

        auto previous = holder.publish_from([&] { return load_version(v); });
        published[static_cast<std::size_t>(v)] = holder.snapshot().shared();
        max_live = std::max(max_live, Served::live.load());
        if (v % 2 == 1) {
          // Free the old version here, off the scoring threads.
          const int old_id = previous->id;
          if (ModelHolder<Served>::retire(std::move(previous), 5s)) {
            ++retired_here;
            retired_versions.push_back(old_id);
          }
        }
      }
    });

    updater.join();
    // Every reader (not only the fastest) scores a few requests under the last version,
    // however the threads are scheduled on a loaded machine.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    for (auto& reader_count : reader_progress) {
      const std::uint64_t after_last = reader_count.load();
      while (reader_count.load() < after_last + 4 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
    }
    stop.store(true, std::memory_order_release);
    for (auto& t : readers) t.join();

    // Every version but the served one is gone once the readers are done.
    CHECK(holder.version() == static_cast<std::uint64_t>(kVersions));
    for (int v = 1; v < kVersions; ++v) {
      INFO("version " << v);
      CHECK(published[static_cast<std::size_t>(v)].expired());
    }
    CHECK_FALSE(published[kVersions].expired());
    CHECK(Served::live.load() == live_before + 1);
  }
  CHECK(published[kVersions].expired());
  CHECK(Served::live.load() == live_before);

  std::uint64_t total = 0;
  int versions_seen = 0;
  for (int t = 0; t < kReaders; ++t) {
    INFO("reader thread " << t);
    CHECK(requests[static_cast<std::size_t>(t)] > 0);
    CHECK(mismatches[static_cast<std::size_t>(t)] == 0);
    CHECK(wrong_version[static_cast<std::size_t>(t)] == 0);
    CHECK(went_back[static_cast<std::size_t>(t)] == 0);
    total += requests[static_cast<std::size_t>(t)];
  }
  for (int v = 1; v <= kVersions; ++v) {
    int n = 0;
    for (int t = 0; t < kReaders; ++t) n += seen[static_cast<std::size_t>(t)][static_cast<std::size_t>(v)];
    versions_seen += n > 0;
  }
  INFO("requests " << total << ", versions seen " << versions_seen << ", max live " << max_live);
  // Swaps happened under load: most versions served some request.
  CHECK(versions_seen >= kVersions / 2);
  // Old versions do not pile up: at most the served one, the one being replaced, and one
  // per reader still finishing its request.
  CHECK(max_live - live_before <= kReaders + 2);
  CHECK(failed_loads == kVersions / 10);
  // retire() freed those versions on the updating thread.
  CHECK(retired_here > 0);
  std::lock_guard<std::mutex> lock(freed_mutex);
  for (int v : retired_versions) {
    INFO("retired version " << v);
    CHECK(freed_by[v] == updater_id);
  }
}

namespace {

// The bundle a service built on the library serves: the model, its DGU tower and the AGE
// scorer that points at both (so it is built in place, never moved).
struct AgeService {
  EmbeddingCtrModel model;
  Tower dgu;
  AgeTs<EmbeddingCtrModel> scorer;
  int id;

  explicit AgeService(int v)
      : model(version_model(v)), dgu(dgu_for(v, model.item_dim())), scorer(model, DguGate(dgu), {}, {}, 7), id(v) {}

  static Tower dgu_for(int v, std::size_t item_dim) {
    Rng rng(500 + static_cast<std::uint64_t>(v));
    return make_dgu_tower(item_dim, rng, 4);
  }

  // Explored scores of the test request, embedded with this version's tables.
  RowVector explore(const RawRequest& r, std::uint64_t request_id, ModelWorkspace& mws,
                    AgeTs<EmbeddingCtrModel>::Workspace& ws, ScoredRequest& out) const {
    model.embed_request(r.user, r.items, mws.user, mws.items);
    scorer.score(Request{mws.user, mws.items, request_id}, out, ws);
    return out.explored;
  }
};

}  // namespace

TEST_CASE("an AGE scorer bundle (model, DGU tower, scorer) swaps as one unit under load", "[hot-swap]") {
  constexpr int kVersions = 8;
  constexpr std::uint64_t kRequestIds = 4;
  const RawRequest request = test_request();

  // Expected explored scores of every (version, request id), single-threaded.
  std::vector<std::vector<RowVector>> expected(kVersions + 1);
  {
    ModelWorkspace mws;
    AgeTs<EmbeddingCtrModel>::Workspace ws;
    ScoredRequest out;
    for (int v = 1; v <= kVersions; ++v) {
      const AgeService service(v);
      for (std::uint64_t id = 0; id < kRequestIds; ++id)
        expected[static_cast<std::size_t>(v)].push_back(service.explore(request, id, mws, ws, out));
    }
    for (int v = 2; v <= kVersions; ++v)  // every version is recognisable by its scores
      for (int w = 1; w < v; ++w)
        REQUIRE_FALSE(expected[static_cast<std::size_t>(v)][0] == expected[static_cast<std::size_t>(w)][0]);
  }

  ModelHolder<AgeService> holder(std::make_shared<const AgeService>(1));
  std::atomic<bool> stop{false};
  constexpr int kReaders = 2;
  // Per-reader progress, so that every reader (not just the fastest) scores under each
  // version before the next swap, however the threads are scheduled.
  std::array<std::atomic<std::uint64_t>, kReaders> progress{};
  std::vector<int> bad(kReaders, 0), scored(kReaders, 0);
  std::vector<std::thread> readers;
  for (int t = 0; t < kReaders; ++t)
    readers.emplace_back([&, t] {
      ModelWorkspace mws;
      AgeTs<EmbeddingCtrModel>::Workspace ws;
      ScoredRequest out;
      ModelHolder<AgeService>::Reader reader(holder);
      for (std::uint64_t n = 0; !stop.load(std::memory_order_acquire); ++n) {
        const auto& snap = reader.current();
        const std::uint64_t id = n % kRequestIds;
        const RowVector got = snap->explore(request, id, mws, ws, out);
        const int v = snap->id;
        if (v < 1 || v > kVersions || !(got == expected[static_cast<std::size_t>(v)][id])) ++bad[static_cast<std::size_t>(t)];
        ++scored[static_cast<std::size_t>(t)];
        progress[static_cast<std::size_t>(t)].fetch_add(1, std::memory_order_relaxed);
      }
    });
  // Waits (at most 30 s) until every reader has scored 4 more requests.
  auto let_every_reader_score = [&] {
    std::array<std::uint64_t, kReaders> before{};
    for (int t = 0; t < kReaders; ++t) before[static_cast<std::size_t>(t)] = progress[static_cast<std::size_t>(t)].load();
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    for (int t = 0; t < kReaders; ++t)
      while (progress[static_cast<std::size_t>(t)].load() < before[static_cast<std::size_t>(t)] + 4 &&
             std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
  };
  for (int v = 2; v <= kVersions; ++v) {
    let_every_reader_score();
    (void)holder.emplace(v);
  }
  let_every_reader_score();
  stop.store(true, std::memory_order_release);
  for (auto& t : readers) t.join();

  CHECK(holder.snapshot()->id == kVersions);
  for (int t = 0; t < kReaders; ++t) {
    INFO("reader thread " << t);
    CHECK(scored[static_cast<std::size_t>(t)] > 0);
    CHECK(bad[static_cast<std::size_t>(t)] == 0);
  }
}
