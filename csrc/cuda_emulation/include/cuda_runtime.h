// Stand-in for cuda_runtime.h in the emulated build: the device-side language that csrc/cuda uses
// (qualifiers, thread and block indices, barriers, warp shuffles, atomics, vector load/store
// intrinsics), implemented by the emulator (csrc/cuda_emulation/emulator.h). `__shared__` is
// deliberately left undefined: kernels declare shared memory with FUSED_CE_SHARED_ARRAY (cuda/portable.cuh).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_runtime_api.h"
#include "cuda_emulation/emulator.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#define threadIdx (::cuda_emulation::coords().thread_idx)
#define blockIdx (::cuda_emulation::coords().block_idx)
#define blockDim (::cuda_emulation::coords().block_dim)
#define gridDim (::cuda_emulation::coords().grid_dim)

constexpr int warpSize = 32;

inline void __syncthreads() { ::cuda_emulation::sync_block(); }

namespace cuda_emulation {

template <typename T>
T shuffle(unsigned mask, T var, int src_lane, const char* intrinsic) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of up to 8 bytes");
  T out;
  warp_exchange(mask, &var, sizeof(T), src_lane, &out, intrinsic);
  return out;
}

}  // namespace cuda_emulation

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  const int lane = ::cuda_emulation::lane_id();
  const int src = lane ^ lane_mask;
  // A source in a later segment of `width` lanes yields the caller's own value, as in CUDA.
  return ::cuda_emulation::shuffle(mask, var, src < (lane & ~(width - 1)) + width ? src : -1, "__shfl_xor_sync");
}

// Blocks never run concurrently and fibers switch only at synchronization points, so a plain
// read-modify-write is atomic here.
template <typename T>
T atomicMin(T* address, T val) {
  const T old = *address;
  *address = val < old ? val : old;
  return old;
}

// Vector and cache-hinted accesses: natural alignment is checked (a misaligned 16-byte access is a
// fault on the GPU, and silently works on the CPU).
template <typename T>
T __ldg(const T* p) {
  ::cuda_emulation::check_alignment(p, alignof(T), "__ldg");
  return *p;
}

template <typename T>
T __ldcg(const T* p) {
  ::cuda_emulation::check_alignment(p, alignof(T), "__ldcg");
  return *p;
}

template <typename T>
void __stcg(T* p, T value) {
  ::cuda_emulation::check_alignment(p, alignof(T), "__stcg");
  *p = value;
}
