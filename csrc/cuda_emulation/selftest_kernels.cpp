// Kernels with known synchronization bugs (and one correct one), launched by the private op
// fused_ce_emulated_cuda::_emulator_selftest so the tests can check that the emulator reports each bug
// as an error naming the kernel instead of hanging or passing silently. Written as CUDA kernels, with
// the same launch and shared-memory forms as csrc/cuda.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <string>

#include "cuda/portable.cuh"

namespace fused_ce::emulator_selftest {
namespace {

using cuda::launch_kernel;
constexpr int kThreads = 256;

// Sum of `v` over the block in a tree through shared memory; `barriers` false drops them.
__global__ void block_sum_kernel(const float* v, float* out, bool barriers) {
  FUSED_CE_SHARED_ARRAY(float, partial, kThreads);
  partial[threadIdx.x] = v[blockIdx.x * kThreads + threadIdx.x];
  if (barriers) __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    if (barriers) __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// Half the block returns before a barrier.
__global__ void early_return_kernel(float* out) {
  if (threadIdx.x >= kThreads / 2) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Lane 5 of every warp returns before a full-warp shuffle.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// Half of every warp waits in a full-warp shuffle for the other half, which waits at a barrier for it.
__global__ void divergent_sync_kernel(float* out) {
  if (threadIdx.x % 32 < 16) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
    __syncthreads();
  } else {
    __syncthreads();
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
  }
}

// A 16-byte load 4 bytes past an aligned address.
__global__ void misaligned_load_kernel(const float* v, float* out) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(v + 1));
  out[threadIdx.x] = static_cast<float>(raw.x);
}

// More shared memory than a block may declare.
__global__ void shared_overflow_kernel(float* out) {
  FUSED_CE_SHARED_ARRAY(double, big, 8192);
  big[threadIdx.x] = 1.0;
  out[threadIdx.x] = static_cast<float>(big[threadIdx.x]);
}

// Case name -> output: the per-block sums for the block-sum cases, else whatever the kernel wrote (the
// bug cases raise before returning).
at::Tensor run_selftest(const std::string& name) {
  const int64_t blocks = 4;
  at::Tensor v = at::full({blocks * kThreads}, 0.5f, at::TensorOptions().dtype(at::kFloat));
  at::Tensor out = at::full({blocks * kThreads}, -1.f, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  if (name == "block_sum" || name == "block_sum_without_barriers") {
    launch_kernel(FUSED_CE_KERNEL(block_sum_kernel), blocks, kThreads, nullptr, v.data_ptr<float>(), o,
                  name == "block_sum");
  } else if (name == "early_return_before_barrier") {
    launch_kernel(FUSED_CE_KERNEL(early_return_kernel), 1, kThreads, nullptr, o);
  } else if (name == "shuffle_with_exited_lane") {
    launch_kernel(FUSED_CE_KERNEL(exited_lane_kernel), 1, kThreads, nullptr, o);
  } else if (name == "divergent_sync") {
    launch_kernel(FUSED_CE_KERNEL(divergent_sync_kernel), 1, kThreads, nullptr, o);
  } else if (name == "misaligned_vector_load") {
    launch_kernel(FUSED_CE_KERNEL(misaligned_load_kernel), 1, kThreads, nullptr, v.data_ptr<float>(), o);
  } else if (name == "shared_memory_overflow") {
    launch_kernel(FUSED_CE_KERNEL(shared_overflow_kernel), 1, kThreads, nullptr, o);
  } else if (name == "invalid_configuration") {
    launch_kernel(FUSED_CE_KERNEL(early_return_kernel), 1, 2048, nullptr, o);
  } else {
    TORCH_CHECK(false, "unknown emulator self-test: ", name);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace fused_ce::emulator_selftest

TORCH_LIBRARY_FRAGMENT(fused_ce_emulated_cuda, m) { m.def("_emulator_selftest(str name) -> Tensor"); }

TORCH_LIBRARY_IMPL(fused_ce_emulated_cuda, CompositeExplicitAutograd, m) {
  m.impl("_emulator_selftest", &fused_ce::emulator_selftest::run_selftest);
}
