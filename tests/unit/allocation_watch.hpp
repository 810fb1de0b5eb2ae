// Heap-allocation watch for the no-allocation tests (test_scorer, test_validation).
//
// Include it FIRST in a test file (it configures Eigen before any Eigen header), and from
// one source file per test binary only: it replaces the global operator new/delete.
// allocations_during(fn) returns the number of operator new calls made by fn (std
// containers), or -1 if Eigen tried to allocate (Eigen's own hook, EIGEN_RUNTIME_NO_MALLOC).
#pragma once

// Eigen reports any heap allocation while it is forbidden (set_is_malloc_allowed(false));
// its assertions throw here so that the test sees them in a Release build.
#define EIGEN_RUNTIME_NO_MALLOC
#include <stdexcept>
#define eigen_assert(x)                                              \
  do {                                                               \
    if (!(x)) throw std::logic_error("Eigen assertion failed: " #x); \
  } while (false)

#include <Eigen/Core>
#include <atomic>
#include <cstdlib>
#include <new>

namespace age_test {
inline std::atomic<bool> counting{false};
inline std::atomic<long> allocations{0};
}  // namespace age_test

// Counts operator new calls while `counting` is set. The replacement pairs malloc with free,
// which GCC cannot see through once inlined into the standard allocators. Every unaligned
// form is replaced, so that no allocation made by one allocator is freed by the other
// (AddressSanitizer reports such a pair as alloc-dealloc-mismatch).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (age_test::counting.load(std::memory_order_relaxed))
    age_test::allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(size);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept { return ::operator new(size, tag); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace age_test {
// Runs `fn` with heap allocation watched: the number of operator new calls, or -1 if Eigen
// tried to allocate.
template <class F>
long allocations_during(F&& fn) {
  allocations = 0;
  counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  bool eigen_ok = true;
  try {
    fn();
  } catch (const std::logic_error&) {
    eigen_ok = false;
  }
  Eigen::internal::set_is_malloc_allowed(true);
  counting = false;
  return eigen_ok ? allocations.load() : -1;
}
}  // namespace age_test
