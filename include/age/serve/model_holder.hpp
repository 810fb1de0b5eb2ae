// Live model updates: ModelHolder<Bundle> lets many threads score while another thread
// swaps in a newly loaded model.
//
//   struct Served {                        // what is swapped as one unit
//     EmbeddingCtrModel model;
//     Tower dgu;
//     AgeTs<EmbeddingCtrModel> scorer;     // keeps a pointer to `model`: built in place
//     Served(EmbeddingCtrModel m, Tower d)
//         : model(std::move(m)), dgu(std::move(d)), scorer(model, DguGate(dgu)) {}
//   };
//   ModelHolder<Served> holder(std::make_shared<const Served>(load_model(path), load_tower(path, "dgu")));
//
//   // scoring thread, per request:
//   const auto snap = holder.snapshot();   // or a per-thread ModelHolder<Served>::Reader
//   snap->scorer.score(request, out, ws);  // the whole request sees ONE version
//
//   // updating thread:
//   auto previous = holder.publish_from([&] {   // a failed load throws; nothing changes
//     return std::make_shared<const Served>(load_model(path), load_tower(path, "dgu"));
//   });
//   ModelHolder<Served>::retire(std::move(previous), std::chrono::seconds(5));
//
// Guarantees: a snapshot is a shared_ptr to a fully constructed, const bundle, so a
// reader never sees a half-loaded model, and the model and its DGU tower (anything in the
// bundle) change together. A version stays alive while any snapshot of it exists and is
// freed when the last one goes; retire() lets the updating thread do that free instead
// of whichever scoring thread happened to be last.
//
// Why a mutex and not std::atomic<std::shared_ptr>: libstdc++ 12's atomic<shared_ptr>
// unlocks its internal spin lock with a relaxed store after reading the pointer, which
// ThreadSanitizer reports as a data race against a concurrent store, and under contention
// its spinning made it slower than this mutex (2 threads: ~105 ns vs ~55 ns per
// snapshot). The critical section is one reference-count increment; the Reader below
// removes even that from the steady state (one atomic load per request).
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>

#include "age/core/error.hpp"

namespace age {

template <class Bundle>
  requires std::is_object_v<Bundle> && std::destructible<Bundle>
class ModelHolder {
 public:
  using bundle_type = Bundle;

  // One published version as a reader holds it: the bundle (const) and its version
  // number (1 for the bundle the holder was built with, +1 for each publish).
  class Snapshot {
   public:
    Snapshot() = default;

    const Bundle& operator*() const noexcept { return *bundle_; }
    const Bundle* operator->() const noexcept { return bundle_.get(); }
    const Bundle* get() const noexcept { return bundle_.get(); }
    // The owning pointer, for code that wants to keep the bundle beyond the snapshot.
    const std::shared_ptr<const Bundle>& shared() const noexcept { return bundle_; }
    std::uint64_t version() const noexcept { return version_; }
    explicit operator bool() const noexcept { return static_cast<bool>(bundle_); }
    // Owners of this bundle, snapshots and shared() copies alike (approximate while
    // other threads copy or drop theirs).
    long use_count() const noexcept { return bundle_.use_count(); }
    void reset() noexcept {
      bundle_.reset();
      version_ = 0;
    }

   private:
    friend class ModelHolder;
    Snapshot(std::shared_ptr<const Bundle> bundle, std::uint64_t version) noexcept
        : bundle_(std::move(bundle)), version_(version) {}

    std::shared_ptr<const Bundle> bundle_;
    std::uint64_t version_ = 0;
  };

  // A per-thread cache of the current snapshot: current() costs one atomic load while
  // the version is unchanged and takes a new snapshot only after a publish. A Reader
  // keeps its last version alive until its next current() or release(); call release()
  // when the thread goes idle so that an old model is not kept for long. Not shared
  // between threads; the holder must outlive it.
  class Reader {
   public:
    explicit Reader(const ModelHolder& holder) noexcept : holder_(&holder) {}

    // The bundle to use for this request; valid until the next current() or release().
    const Snapshot& current() noexcept {
      if (holder_->version_.load(std::memory_order_acquire) != cached_.version()) cached_ = holder_->snapshot();
      return cached_;
    }
    void release() noexcept { cached_.reset(); }

   private:
    const ModelHolder* holder_;
    Snapshot cached_;
  };

  // Throws ConfigError when `initial` is null: a holder always has a bundle to serve.
  explicit ModelHolder(std::shared_ptr<const Bundle> initial) : current_(checked(std::move(initial)), 1) {
    version_.store(1, std::memory_order_release);
  }

  ModelHolder(const ModelHolder&) = delete;
  ModelHolder& operator=(const ModelHolder&) = delete;

  // The version being served now. Never throws; safe from any thread.
  Snapshot snapshot() const noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    return current_;
  }

  // Number of the version being served now.
  std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

  // Makes `next` the served version and returns the previous one (drop it, or hand it
  // to retire()). Readers that already hold a snapshot keep scoring with the old version;
  // every snapshot taken after this returns sees `next`. Throws ConfigError for null.
  Snapshot publish(std::shared_ptr<const Bundle> next) {
    Snapshot incoming(checked(std::move(next)), 0);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      incoming.version_ = current_.version_ + 1;
      std::swap(current_, incoming);
      version_.store(current_.version_, std::memory_order_release);
    }
    return incoming;  // the previous version, released outside the lock
  }

  // Builds the new bundle in place (no copy or move of the bundle, so it may hold
  // pointers into itself, as a scorer does to its model), then publishes it.
  template <class... Args>
    requires std::constructible_from<Bundle, Args...>
  Snapshot emplace(Args&&... args) {
    return publish(std::make_shared<const Bundle>(std::forward<Args>(args)...));
  }

  // Runs `load` (returning a shared_ptr<const Bundle> or a Bundle) and publishes its
  // result. When `load` throws (an unreadable or corrupt file), the exception propagates
  // and the served version is unchanged.
  template <class Load>
  Snapshot publish_from(Load&& load) {
    using Result = std::decay_t<std::invoke_result_t<Load&>>;
    if constexpr (std::is_convertible_v<Result, std::shared_ptr<const Bundle>>) {
      return publish(std::shared_ptr<const Bundle>(load()));
    } else {
      static_assert(std::is_same_v<Result, Bundle>,
                    "publish_from: the loader must return a Bundle or a shared_ptr to one");
      return publish(std::make_shared<const Bundle>(load()));
    }
  }

  // Waits until `previous` is the only owner of its bundle (every reader of that version
  // is done), then frees it here, off the scoring threads. Returns true when freed here;
  // false after `timeout`, in which case the last reader frees it. Never blocks a reader.
  template <class Rep, class Period>
  static bool retire(Snapshot previous, std::chrono::duration<Rep, Period> timeout) {
    if (!previous) return true;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::microseconds(50);
    // use_count() == 1 is stable: the holder no longer hands this version out, so only
    // an existing owner could make another, and there is none but `previous`.
    while (previous.use_count() > 1) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(pause);
      if (pause < std::chrono::milliseconds(5)) pause *= 2;
    }
    previous.reset();
    return true;
  }

 private:
  static std::shared_ptr<const Bundle> checked(std::shared_ptr<const Bundle> bundle) {
    if (!bundle) throw ConfigError("model holder: bundle to publish: expected a loaded bundle, got null");
    return bundle;
  }

  mutable std::mutex mutex_;
  Snapshot current_;                       // guarded by mutex_
  std::atomic<std::uint64_t> version_{0};  // current_.version(), readable without the lock
};

}  // namespace age
