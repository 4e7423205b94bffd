// Cooperative fibers for the emulator: one execution context per emulated GPU thread, switched by a
// hand-written context switch (x86-64: a few register moves, no system call; elsewhere swapcontext).
// AddressSanitizer is told about every switch, so it checks fiber stacks correctly.
#pragma once

#include <cstddef>

namespace cuda_emulation {

// A stack for one fiber, with an inaccessible guard page below it so an overflow faults.
class FiberStack {
 public:
  FiberStack() = default;
  explicit FiberStack(size_t size);
  FiberStack(FiberStack&& other) noexcept;
  FiberStack& operator=(FiberStack&& other) noexcept;
  FiberStack(const FiberStack&) = delete;
  FiberStack& operator=(const FiberStack&) = delete;
  ~FiberStack();

  char* base() const { return base_; }
  size_t size() const { return size_; }

 private:
  char* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  char* base_ = nullptr;  // lowest usable address
  size_t size_ = 0;
};

// Stack bytes per fiber: emulated kernels use little stack, sanitized builds several times more.
size_t default_fiber_stack_size();

// A saved execution context. The scheduler's own context needs no stack of its own (it is the calling
// thread's).
struct Context {
  void* sp = nullptr;  // saved stack pointer (x86-64) or ucontext (elsewhere)
  const void* stack_bottom = nullptr;  // for AddressSanitizer
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's, while the context is switched out
};

// Makes `ctx` start entry(arg) on `stack` when first switched to. entry must never return: it ends by
// switching away with `from_exits`.
void make_context(Context& ctx, const FiberStack& stack, void (*entry)(void*), void* arg);

// Saves the running context into `from` and resumes `to`. `from_exits`: `from` will never be resumed.
void switch_context(Context& from, Context& to, bool from_exits = false);

// First thing a fiber's entry calls: completes the switch into it and records, in `resumer`, the stack
// of the context that started it (the scheduler's, which AddressSanitizer needs for switching back).
void context_started(Context& resumer);

}  // namespace cuda_emulation
