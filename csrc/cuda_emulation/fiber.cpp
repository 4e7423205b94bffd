// Fibers for the emulator (see fiber.h). On x86-64 the switch saves the callee-saved registers, the
// SSE and x87 control words and the stack pointer on the old stack, and restores them from the new
// one: about 20 instructions, where swapcontext makes a system call (to save the signal mask) at every
// switch and dominated the emulator's run time.
#include "cuda_emulation/fiber.h"
#include "cuda_emulation/sanitizer.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <utility>


#if defined(__x86_64__) && !defined(CUDA_EMULATION_UCONTEXT)
#define CUDA_EMULATION_X86_64_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace cuda_emulation {

size_t default_fiber_stack_size() {
#if defined(CUDA_EMULATION_ASAN)
  return size_t(512) << 10;
#else
  return size_t(128) << 10;
#endif
}

FiberStack::FiberStack(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_ = (size + page - 1) / page * page;
  mapping_size_ = size_ + page;
  void* p = mmap(nullptr, mapping_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "emulated CUDA: cannot map a fiber stack of ", mapping_size_, " bytes");
  mapping_ = static_cast<char*>(p);
  TORCH_CHECK(mprotect(mapping_, page, PROT_NONE) == 0, "emulated CUDA: cannot protect a fiber stack's guard page");
  base_ = mapping_ + page;
}

FiberStack::FiberStack(FiberStack&& other) noexcept { *this = std::move(other); }

FiberStack& FiberStack::operator=(FiberStack&& other) noexcept {
  std::swap(mapping_, other.mapping_);
  std::swap(mapping_size_, other.mapping_size_);
  std::swap(base_, other.base_);
  std::swap(size_, other.size_);
  return *this;
}

FiberStack::~FiberStack() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

#if defined(CUDA_EMULATION_X86_64_SWITCH)

extern "C" {
void cuda_emulation_switch(void** save_sp, void* load_sp);
void cuda_emulation_trampoline();
}

// cuda_emulation_switch(save_sp, load_sp): pushes rbp, rbx, r12-r15 and the MXCSR / x87 control words,
// stores rsp in *save_sp, loads load_sp and pops the same from there. A new context's stack is laid
// out so that this pop "returns" into cuda_emulation_trampoline with r12 = arg and r13 = entry.
asm(R"(
    .text
    .p2align 4
    .globl cuda_emulation_switch
    .hidden cuda_emulation_switch
    .type cuda_emulation_switch, @function
cuda_emulation_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emulation_switch, .-cuda_emulation_switch

    .p2align 4
    .globl cuda_emulation_trampoline
    .hidden cuda_emulation_trampoline
    .type cuda_emulation_trampoline, @function
cuda_emulation_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuda_emulation_trampoline, .-cuda_emulation_trampoline
)");

void make_context(Context& ctx, const FiberStack& stack, void (*entry)(void*), void* arg) {
#if defined(CUDA_EMULATION_ASAN)
  // Frames of a fiber abandoned mid-kernel (after an emulation error) may have left poisoned redzones.
  ASAN_UNPOISON_MEMORY_REGION(stack.base(), stack.size());
#endif
  // After the initial "return" into the trampoline, rsp must be 16-byte aligned so that its call
  // enters `entry` with the alignment the ABI promises.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack.base()) + stack.size()) & ~uintptr_t(15);
  const uintptr_t after_ret = top - 16;
  auto* frame = reinterpret_cast<uint64_t*>(after_ret - 64);
  uint32_t mxcsr = 0;
  uint16_t fpu_cw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  frame[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpu_cw) << 32);
  frame[1] = 0;                                      // r15
  frame[2] = 0;                                      // r14
  frame[3] = reinterpret_cast<uint64_t>(entry);      // r13
  frame[4] = reinterpret_cast<uint64_t>(arg);        // r12
  frame[5] = 0;                                      // rbx
  frame[6] = 0;                                      // rbp
  frame[7] = reinterpret_cast<uint64_t>(&cuda_emulation_trampoline);  // return address
  ctx.sp = frame;
  ctx.stack_bottom = stack.base();
  ctx.stack_size = stack.size();
  ctx.fake_stack = nullptr;
}

static void raw_switch(Context& from, Context& to) { cuda_emulation_switch(&from.sp, to.sp); }

#else  // portable fallback

namespace {
struct UContextStart {
  void (*entry)(void*);
  void* arg;
};

void ucontext_entry(unsigned hi, unsigned lo) {
  auto* start = reinterpret_cast<UContextStart*>((static_cast<uintptr_t>(hi) << 32) | lo);
  start->entry(start->arg);
}

struct UContextBox {
  ucontext_t uc;
  UContextStart start;
};
}  // namespace

void make_context(Context& ctx, const FiberStack& stack, void (*entry)(void*), void* arg) {
#if defined(CUDA_EMULATION_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(stack.base(), stack.size());
#endif
  // The box lives at the top of the fiber's own stack, so a context needs no allocation.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack.base()) + stack.size() - sizeof(UContextBox)) &
                        ~uintptr_t(63);
  auto* box = new (reinterpret_cast<void*>(top)) UContextBox{};
  box->start = {entry, arg};
  TORCH_CHECK(getcontext(&box->uc) == 0, "emulated CUDA: getcontext failed");
  box->uc.uc_stack.ss_sp = stack.base();
  box->uc.uc_stack.ss_size = top - reinterpret_cast<uintptr_t>(stack.base());
  box->uc.uc_link = nullptr;
  const auto p = reinterpret_cast<uintptr_t>(&box->start);
  makecontext(&box->uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
  ctx.sp = &box->uc;
  ctx.stack_bottom = stack.base();
  ctx.stack_size = stack.size();
  ctx.fake_stack = nullptr;
}

static void raw_switch(Context& from, Context& to) {
  ucontext_t here;
  from.sp = &here;
  swapcontext(&here, static_cast<ucontext_t*>(to.sp));
}

#endif

void switch_context(Context& from, Context& to, bool from_exits) {
#if defined(CUDA_EMULATION_ASAN)
  __sanitizer_start_switch_fiber(from_exits ? nullptr : &from.fake_stack, to.stack_bottom, to.stack_size);
#else
  (void)from_exits;
#endif
  raw_switch(from, to);
#if defined(CUDA_EMULATION_ASAN)
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
}

void context_started(Context& resumer) {
#if defined(CUDA_EMULATION_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &resumer.stack_bottom, &resumer.stack_size);
#else
  (void)resumer;
#endif
}

}  // namespace cuda_emulation
