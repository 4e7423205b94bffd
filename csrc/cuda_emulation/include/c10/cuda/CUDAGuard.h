// Stand-in for c10/cuda/CUDAGuard.h in the emulated build: there is one (emulated) device, and the
// tensors are CPU tensors, so the guard only takes its argument.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace c10::cuda
