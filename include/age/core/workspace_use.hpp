// The debug check against a Workspace shared between calls that run at the same time.
//
// A Workspace is per thread: two threads scoring with one Workspace write the same
// buffers at once and corrupt the heap, silently. With AGE_CHECK_WORKSPACE_USE on (the
// default in a debug build, i.e. without NDEBUG; define it to 1 or 0 to choose), each
// scoring call and each tower pass marks its workspace in use, and a call that finds the
// mark already set -- another thread's call, or a re-entrant one -- stops the program with
// an assertion message on stderr (std::abort). Off, nothing is checked or written; the
// mark is always there, so that translation units built with and without the check agree
// on the workspaces' layout.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>

#if !defined(AGE_CHECK_WORKSPACE_USE)
#if defined(NDEBUG)
#define AGE_CHECK_WORKSPACE_USE 0
#else
#define AGE_CHECK_WORKSPACE_USE 1
#endif
#endif

namespace age::detail {

// Whether a workspace is in use by a call. Copying or moving a workspace gives the copy a
// fresh mark: the mark belongs to the object, not to its contents.
class WorkspaceMark {
 public:
  WorkspaceMark() noexcept = default;
  WorkspaceMark(const WorkspaceMark&) noexcept {}
  WorkspaceMark& operator=(const WorkspaceMark&) noexcept { return *this; }

 private:
  friend class WorkspaceUse;
  std::atomic<bool> busy_{false};
};

[[noreturn]] inline void workspace_shared(const char* what) noexcept {
  std::fprintf(stderr,
               "age: assertion failed: %s: its Workspace is already in use by another call (two threads sharing "
               "one Workspace?); give each thread its own Workspace\n",
               what);
  std::abort();
}

// Marks a workspace in use for one call (RAII); aborts when it already is.
class WorkspaceUse {
 public:
  WorkspaceUse(WorkspaceMark& mark, const char* what) noexcept {
    if constexpr (AGE_CHECK_WORKSPACE_USE) {
      if (mark.busy_.exchange(true, std::memory_order_acquire)) workspace_shared(what);
      mark_ = &mark;
    } else {
      (void)mark;
      (void)what;
    }
  }
  WorkspaceUse(const WorkspaceUse&) = delete;
  WorkspaceUse& operator=(const WorkspaceUse&) = delete;
  ~WorkspaceUse() {
    if constexpr (AGE_CHECK_WORKSPACE_USE) mark_->busy_.store(false, std::memory_order_release);
  }

 private:
  WorkspaceMark* mark_ = nullptr;
};

}  // namespace age::detail
