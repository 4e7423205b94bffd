// The two things a kernel file writes differently for nvcc and for the emulated build
// (csrc/cuda_emulation/, which runs these same kernels on the CPU): how a kernel is launched and how
// block-shared memory is declared. Kernel files use only these forms, so one source serves both builds.
//
//   launch_kernel(FUSED_CE_KERNEL(my_kernel<T, Op>), grid, block, stream, args...);
//   FUSED_CE_SHARED_ARRAY(double, partial, kBlock);   // then partial[i] as with __shared__
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace fused_ce::cuda {

// A kernel and the name it is launched under (for the emulator's error messages).
template <typename F>
struct KernelRef {
  F fn;
  const char* name;
};

}  // namespace fused_ce::cuda

// Variadic so that template arguments with commas need no extra parentheses.
#define FUSED_CE_KERNEL(...) \
  ::fused_ce::cuda::KernelRef<decltype(&__VA_ARGS__)> { &__VA_ARGS__, #__VA_ARGS__ }

#if defined(__CUDACC__)

#define FUSED_CE_SHARED_ARRAY(type, name, count) __shared__ type name[count]

namespace fused_ce::cuda {
template <typename... Params, typename... Args>
inline void launch_kernel(KernelRef<void (*)(Params...)> k, dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
  k.fn<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}
}  // namespace fused_ce::cuda

#elif defined(FUSED_CE_EMULATED_CUDA)

#include "cuda_emulation/emulator.h"

// One array per declaration and block, from the block's shared arena (poisoned before every block).
#define FUSED_CE_SHARED_ARRAY(type, name, count)          \
  static thread_local ::cuda_emulation::SharedSlot name##_slot; \
  type* const name = ::cuda_emulation::shared_array<type>(name##_slot, (count))

namespace fused_ce::cuda {
// As a launch with <<<>>>: the arguments are copied (kernel parameters are passed by value), then every
// thread of every block runs the kernel on the emulator before this returns (streams run in order).
template <typename... Params, typename... Args>
inline void launch_kernel(KernelRef<void (*)(Params...)> k, dim3 grid, dim3 block, cudaStream_t stream,
                          Args&&... args) {
  auto params = std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...);
  ::cuda_emulation::launch(k.name, grid, block, stream, [&] { std::apply(k.fn, params); });
}
}  // namespace fused_ce::cuda

#else
#error "csrc/cuda kernels compile with nvcc, or with FUSED_CE_EMULATED_CUDA for the emulated build"
#endif
