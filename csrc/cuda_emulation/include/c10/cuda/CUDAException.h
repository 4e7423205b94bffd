// Stand-in for c10/cuda/CUDAException.h in the emulated build: the same check macros over the
// emulator's runtime calls.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(EXPR)                                                                     \
  do {                                                                                           \
    const cudaError_t fused_ce_emulated_error = (EXPR);                                          \
    TORCH_CHECK(fused_ce_emulated_error == cudaSuccess, "CUDA error (emulated): ",                \
                cudaGetErrorString(fused_ce_emulated_error));                                    \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
