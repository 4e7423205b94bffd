// The CUDA emulator: runs the kernels of csrc/cuda on the CPU, so that every CI run executes them
// against PyTorch (see README.md, "Emulated CUDA"). Included only by the emulated build.
//
// Model. A launch runs its blocks one after another, in a seeded random order. The threads of a block
// are cooperative fibers on the calling OS thread; a fiber runs until it reaches a synchronization
// point (__syncthreads, a warp shuffle) or returns, then the scheduler resumes the next ready fiber, in
// a random order that changes at every round. So all threads of a block really interleave at barriers,
// and code that reads another thread's shared memory without a barrier sees stale or poisoned values.
//
// Faithful where bugs hide: a barrier that not every thread of the block reaches, a shuffle that names
// an exited lane (or a lane outside its mask), and threads waiting at different synchronization points
// are errors naming the kernel and the block, never a hang; shared memory is poisoned (all bits set:
// NaN for floating types) before every block; 16-byte vector loads and stores must be 16-byte aligned.
// An error raises c10::Error from the launch.
//
// Not modelled: timing, occupancy, the memory model between blocks (blocks never run concurrently),
// the device math library's rounding (the host's libm runs instead), graphs, multiple devices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_runtime_api.h"

namespace cuda_emulation {

struct ThreadCoords {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The coordinates of the fiber that is running (set by the scheduler before it resumes a fiber).
extern thread_local const ThreadCoords* tls_coords;

inline const ThreadCoords& coords() { return *tls_coords; }

// Runs run(ctx) as every thread of every block of the grid; returns when all have finished. An invalid
// configuration sets the last error (cudaGetLastError), as a real launch does.
void launch_raw(const char* kernel, dim3 grid, dim3 block, void (*run)(void*), void* ctx);

template <typename F>
void launch(const char* kernel, dim3 grid, dim3 block, cudaStream_t /*stream: all run in order*/, F&& body) {
  using Body = std::remove_reference_t<F>;
  launch_raw(kernel, grid, block, [](void* p) { (*static_cast<Body*>(p))(); },
             const_cast<void*>(static_cast<const void*>(&body)));
}

// __syncthreads().
void sync_block();

// The warp-collective exchange behind the shuffles: every lane of `mask` deposits `bytes` bytes of
// `value`, waits for the others, and receives the value of lane `src_lane` (its own when src_lane < 0).
void warp_exchange(unsigned mask, const void* value, size_t bytes, int src_lane, void* out, const char* intrinsic);

// The calling thread's lane in its warp.
int lane_id();

// Reports (and ends the block on) an access through `p` that is not `alignment`-aligned.
void check_alignment(const void* p, size_t alignment, const char* intrinsic);

// Stops the launch with an error naming the kernel, block and thread.
[[noreturn]] void fail_in_kernel(const char* what);

// One __shared__ array of a kernel: the same address for every thread of a block, fresh (poisoned)
// storage for every block.
struct SharedSlot {
  uint64_t block_serial = 0;
  void* ptr = nullptr;
};

void* shared_alloc(SharedSlot& slot, size_t bytes, size_t alignment);

template <typename T>
T* shared_array(SharedSlot& slot, int64_t count) {
  static_assert(std::is_trivially_copyable_v<T>, "shared memory holds trivially copyable types");
  return static_cast<T*>(shared_alloc(slot, sizeof(T) * static_cast<size_t>(count), alignof(T)));
}

}  // namespace cuda_emulation
