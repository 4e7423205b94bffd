// The emulator's scheduler: blocks in a seeded random order, the threads of a block as fibers that
// interleave at every synchronization point, and the checks that turn synchronization bugs into
// errors (see emulator.h for the model).
#include "cuda_emulation/emulator.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda_emulation/fiber.h"
#include "cuda_emulation/sanitizer.h"


namespace cuda_emulation {

thread_local const ThreadCoords* tls_coords = nullptr;

namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 1024;
// Static shared memory of one block on every CUDA GPU.
constexpr size_t kSharedBytes = 48 << 10;
// Unaddressable bytes after each shared array, so that AddressSanitizer builds report overruns.
constexpr size_t kSharedRedzone = 64;

enum class State : uint8_t { kReady, kAtBarrier, kInShuffle, kExited };

const char* state_name(State s) {
  switch (s) {
    case State::kReady: return "running";
    case State::kAtBarrier: return "__syncthreads()";
    case State::kInShuffle: return "a warp shuffle";
    default: return "exited";
  }
}

struct Thread {
  ThreadCoords coords{};
  State state = State::kExited;
  int index = 0, warp = 0, lane = 0;
  Context ctx;
  FiberStack stack;
};

// The rendezvous of one warp's shuffles. Values go to slots[generation & 1], so a lane that runs ahead
// to the next shuffle never overwrites a value that a slower lane has still to read.
struct Warp {
  unsigned arrived = 0;
  unsigned mask = 0;
  unsigned generation = 0;
  const char* intrinsic = nullptr;
  uint64_t slots[2][kWarpSize] = {};
};

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t seed_from_environment() {
  const char* s = std::getenv("FUSED_CE_EMULATION_SEED");
  return s != nullptr ? std::strtoull(s, nullptr, 0) : 0;
}

// One per OS thread: launches from different threads never share fibers or shared memory.
struct Emulator {
  std::vector<std::unique_ptr<Thread>> threads;  // stable addresses: fibers hold pointers to them
  int block_threads = 0;
  int exited = 0;
  int at_barrier = 0;
  Warp warps[kMaxBlockThreads / kWarpSize];
  alignas(64) unsigned char shared[kSharedBytes + 32 * kSharedRedzone];
  size_t shared_used = 0;     // arena bytes taken, with alignment and redzones
  size_t shared_payload = 0;  // bytes declared, against CUDA's limit
  size_t shared_dirty = 0;  // bytes to poison before the next block
  uint64_t block_serial = 0;
  Context scheduler;
  Thread* running = nullptr;
  const char* kernel = nullptr;
  void (*run)(void*) = nullptr;
  void* run_ctx = nullptr;
  std::string error;
  const uint64_t seed = seed_from_environment();
  uint64_t launch_serial = 0;
  uint64_t rng = 0;
  std::vector<int> order;
  cudaError_t last_error = cudaSuccess;
};

thread_local std::unique_ptr<Emulator> tls_emulator;

Emulator& emulator() {
  if (!tls_emulator) tls_emulator = std::make_unique<Emulator>();
  return *tls_emulator;
}

std::string where(const Emulator& e) {
  std::string s = c10::str("emulated CUDA: kernel ", e.kernel ? e.kernel : "?");
  if (e.running != nullptr) {
    const ThreadCoords& c = e.running->coords;
    s += c10::str(", block (", c.block_idx.x, ",", c.block_idx.y, ",", c.block_idx.z, "), thread (", c.thread_idx.x,
                  ",", c.thread_idx.y, ",", c.thread_idx.z, ")");
  }
  return s;
}

std::string seed_note(const Emulator& e) {
  return c10::str(" [FUSED_CE_EMULATION_SEED=", e.seed, ", launch ", e.launch_serial, " of this thread]");
}

Thread& running_thread(Emulator& e, const char* what) {
  TORCH_CHECK(e.running != nullptr, "emulated CUDA: ", what, " called outside a kernel");
  return *e.running;
}

// Ends the running fiber for good: the scheduler raises e.error.
[[noreturn]] void fail(Emulator& e, const std::string& what) {
  Thread& t = running_thread(e, "a failing check");
  if (e.error.empty()) e.error = where(e) + ": " + what + seed_note(e);
  t.state = State::kExited;
  switch_context(t.ctx, e.scheduler, /*from_exits=*/true);
  std::abort();  // never resumed
}

void yield(Emulator& e, Thread& t) { switch_context(t.ctx, e.scheduler); }

void thread_exit(Emulator& e, Thread& t) {
  t.state = State::kExited;
  ++e.exited;
  if (e.at_barrier > 0) {
    fail(e, c10::str("returned while ", e.at_barrier,
                     " threads wait in __syncthreads(): a barrier that not every thread of the block reaches"));
  }
  const Warp& w = e.warps[t.warp];
  if (w.arrived != 0 && (w.mask >> t.lane & 1u)) {
    fail(e, c10::str(w.intrinsic, " waits for lane ", t.lane, ", which has returned"));
  }
  switch_context(t.ctx, e.scheduler, /*from_exits=*/true);
  std::abort();  // never resumed
}

void thread_main(void* arg) {
  Emulator& e = emulator();
  context_started(e.scheduler);
  e.run(e.run_ctx);
  thread_exit(e, *static_cast<Thread*>(arg));
}

void shuffle_order(Emulator& e, std::vector<int>& v) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix64(e.rng) % i]);
}

void resume(Emulator& e, Thread& t) {
  e.running = &t;
  tls_coords = &t.coords;
  switch_context(e.scheduler, t.ctx);
  e.running = nullptr;
  tls_coords = nullptr;
  if (!e.error.empty()) {
    std::string msg;
    std::swap(msg, e.error);
    TORCH_CHECK(false, msg);
  }
}

[[noreturn]] void deadlock(Emulator& e, const ThreadCoords& block) {
  int counts[4] = {};
  for (int i = 0; i < e.block_threads; ++i) ++counts[static_cast<int>(e.threads[i]->state)];
  TORCH_CHECK(false, "emulated CUDA: kernel ", e.kernel, ", block (", block.block_idx.x, ",", block.block_idx.y, ",",
              block.block_idx.z, "): threads wait at different synchronization points and can never continue: ",
              counts[static_cast<int>(State::kAtBarrier)], " in ", state_name(State::kAtBarrier), ", ",
              counts[static_cast<int>(State::kInShuffle)], " in ", state_name(State::kInShuffle), ", ",
              counts[static_cast<int>(State::kExited)], " exited", seed_note(e));
}

void start_block(Emulator& e, const dim3& grid, const dim3& block, uint64_t linear_block) {
  ++e.block_serial;
  // Every bit set: NaN in every floating type, so reading shared memory that no thread of this block
  // wrote gives visibly wrong results.
#if defined(CUDA_EMULATION_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(e.shared, sizeof(e.shared));
#endif
  std::memset(e.shared, 0xff, e.shared_dirty);
#if defined(CUDA_EMULATION_ASAN)
  // Unaddressable until declared: an access past a shared array is reported.
  ASAN_POISON_MEMORY_REGION(e.shared, sizeof(e.shared));
#endif
  e.shared_used = 0;
  e.shared_payload = 0;
  e.exited = 0;
  e.at_barrier = 0;
  for (Warp& w : e.warps) {
    w.arrived = 0;
    w.generation = 0;
  }
  const uint3 b{static_cast<unsigned>(linear_block % grid.x), static_cast<unsigned>(linear_block / grid.x % grid.y),
                static_cast<unsigned>(linear_block / (uint64_t(grid.x) * grid.y))};
  for (int i = 0; i < e.block_threads; ++i) {
    Thread& t = *e.threads[i];
    t.coords.thread_idx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
    t.coords.block_idx = b;
    t.coords.block_dim = block;
    t.coords.grid_dim = grid;
    t.state = State::kReady;
    t.index = i;
    t.warp = i / kWarpSize;
    t.lane = i % kWarpSize;
    make_context(t.ctx, t.stack, &thread_main, &t);
  }
}

void run_block(Emulator& e, const dim3& grid, const dim3& block, uint64_t linear_block) {
  start_block(e, grid, block, linear_block);
  std::vector<int>& order = e.order;
  while (true) {
    order.clear();
    for (int i = 0; i < e.block_threads; ++i) {
      if (e.threads[i]->state == State::kReady) order.push_back(i);
    }
    if (order.empty()) {
      if (e.exited == e.block_threads) return;
      if (e.at_barrier == e.block_threads) {
        for (int i = 0; i < e.block_threads; ++i) e.threads[i]->state = State::kReady;
        e.at_barrier = 0;
        continue;
      }
      deadlock(e, e.threads[0]->coords);
    }
    shuffle_order(e, order);
    for (int i : order) resume(e, *e.threads[i]);
  }
}

bool valid_configuration(const dim3& grid, const dim3& block) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  return block.x > 0 && block.y > 0 && block.z > 0 && block.x <= 1024 && block.y <= 1024 && block.z <= 64 &&
         threads <= kMaxBlockThreads && grid.x > 0 && grid.y > 0 && grid.z > 0 && grid.x <= 0x7fffffffu &&
         grid.y <= 65535 && grid.z <= 65535;
}

}  // namespace

void launch_raw(const char* kernel, dim3 grid, dim3 block, void (*run)(void*), void* ctx) {
  Emulator& e = emulator();
  TORCH_CHECK(e.running == nullptr, "emulated CUDA: kernel ", kernel, " launched from inside kernel ", e.kernel,
              " (dynamic parallelism is not emulated)");
  if (!valid_configuration(grid, block)) {
    e.last_error = cudaErrorInvalidConfiguration;
    return;
  }
  e.block_threads = static_cast<int>(block.x * block.y * block.z);
  while (static_cast<int>(e.threads.size()) < e.block_threads) {
    auto t = std::make_unique<Thread>();
    t->stack = FiberStack(default_fiber_stack_size());
    e.threads.push_back(std::move(t));
  }
  e.kernel = kernel;
  e.run = run;
  e.run_ctx = ctx;
  ++e.launch_serial;
  e.rng = e.seed ^ (e.launch_serial * 0xd1b54a32d192ed03ull);
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) block_order[i] = i;
  for (uint64_t i = blocks; i > 1; --i) std::swap(block_order[i - 1], block_order[splitmix64(e.rng) % i]);
  for (uint64_t b : block_order) run_block(e, grid, block, b);
  e.kernel = nullptr;
}

void sync_block() {
  Emulator& e = emulator();
  Thread& t = running_thread(e, "__syncthreads()");
  if (e.exited > 0) {
    fail(e, c10::str("__syncthreads() after ", e.exited,
                     " threads returned: a barrier that not every thread of the block reaches"));
  }
  t.state = State::kAtBarrier;
  ++e.at_barrier;
  yield(e, t);
}

int lane_id() { return running_thread(emulator(), "a warp intrinsic").lane; }

void warp_exchange(unsigned mask, const void* value, size_t bytes, int src_lane, void* out, const char* intrinsic) {
  Emulator& e = emulator();
  Thread& t = running_thread(e, intrinsic);
  const unsigned me = 1u << t.lane;
  if ((mask & me) == 0) fail(e, c10::str(intrinsic, ": the calling lane ", t.lane, " is not in its mask ", mask));
  const int first = t.warp * kWarpSize;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if ((mask >> lane & 1u) == 0) continue;
    if (first + lane >= e.block_threads) {
      fail(e, c10::str(intrinsic, ": mask ", mask, " names lane ", lane, ", which does not exist in a block of ",
                       e.block_threads, " threads"));
    }
    if (e.threads[first + lane]->state == State::kExited) {
      fail(e, c10::str(intrinsic, " waits for lane ", lane, ", which has returned (mask ", mask, ")"));
    }
  }
  if (src_lane >= 0 && (mask >> src_lane & 1u) == 0) {
    fail(e, c10::str(intrinsic, ": reads lane ", src_lane, ", which is not in the mask ", mask));
  }
  Warp& w = e.warps[t.warp];
  if (w.arrived == 0) {
    w.mask = mask;
    w.intrinsic = intrinsic;
  } else if (w.mask != mask || std::strcmp(w.intrinsic, intrinsic) != 0) {
    fail(e, c10::str(intrinsic, " with mask ", mask, " meets ", w.intrinsic, " with mask ", w.mask,
                     " of other lanes of the warp"));
  }
  const unsigned gen = w.generation;
  std::memcpy(&w.slots[gen & 1][t.lane], value, bytes);
  w.arrived |= me;
  if (w.arrived == mask) {
    w.arrived = 0;
    ++w.generation;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if ((mask >> lane & 1u) && lane != t.lane) e.threads[first + lane]->state = State::kReady;
    }
  } else {
    t.state = State::kInShuffle;
    yield(e, t);
  }
  std::memcpy(out, &w.slots[gen & 1][src_lane < 0 ? t.lane : src_lane], bytes);
}

void check_alignment(const void* p, size_t alignment, const char* intrinsic) {
  if (reinterpret_cast<uintptr_t>(p) % alignment == 0) return;
  Emulator& e = emulator();
  fail(e, c10::str(intrinsic, ": address ", p, " is not aligned to ", alignment, " bytes"));
}

void fail_in_kernel(const char* what) { fail(emulator(), what); }

void* shared_alloc(SharedSlot& slot, size_t bytes, size_t alignment) {
  Emulator& e = emulator();
  running_thread(e, "a __shared__ declaration");
  if (slot.block_serial != e.block_serial) {
    const size_t align = std::max<size_t>(alignment, 16);
    const size_t offset = (e.shared_used + align - 1) / align * align;
    if (e.shared_payload + bytes > kSharedBytes || offset + bytes > sizeof(e.shared)) {
      fail(e, c10::str("the block's shared memory exceeds ", kSharedBytes, " bytes"));
    }
    e.shared_payload += bytes;
    slot.ptr = e.shared + offset;
    slot.block_serial = e.block_serial;
    e.shared_used = offset + bytes + kSharedRedzone;
    e.shared_dirty = std::max(e.shared_dirty, offset + bytes);
#if defined(CUDA_EMULATION_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(slot.ptr, bytes);
#endif
  }
  return slot.ptr;
}

}  // namespace cuda_emulation

// ---- the runtime API of cuda_runtime_api.h ------------------------------------------------------

cudaError_t cudaGetLastError() {
  auto& e = cuda_emulation::emulator();
  const cudaError_t err = e.last_error;
  e.last_error = cudaSuccess;
  return err;
}

cudaError_t cudaPeekAtLastError() { return cuda_emulation::emulator().last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error";
  }
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
