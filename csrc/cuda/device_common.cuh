// Device helpers shared by the CUDA kernels: accumulation types, 16-byte vector loads and stores,
// fixed-order reductions within a group of threads or a block, and the dtype dispatch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/launchers.h"
#include "cuda/portable.cuh"
#include "dtype_dispatch.h"
#include "mean_division.h"
#include "rowmath.h"

namespace fused_ce::cuda {

template <typename T>
using acc_of = typename AccOf<T>::type;

// Elements of T in one 16-byte vector.
template <typename T>
constexpr int kVecOf = 16 / static_cast<int>(sizeof(T));

template <typename T>
struct alignas(16) Pack {
  T v[kVecOf<T>];
};

// Moved through a uint4, so each is one 128-bit access whatever T's copy semantics. The intrinsics
// (__ldg or __ldcg here, __stcg below) are also where the emulated build checks the 16-byte alignment.
// __ldg goes through the non-coherent read-only cache, which is only for memory that no thread of the
// kernel writes; a kernel that writes over what it reads (the in-place backward) passes kReadOnly =
// false and loads through L2 (__ldcg), which is coherent.
template <bool kReadOnly = true, typename T, typename A>
__device__ __forceinline__ void load_pack(const T* p, A (&out)[kVecOf<T>]) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
  uint4 raw;
  if constexpr (kReadOnly) {
    raw = __ldg(q);
  } else {
    raw = __ldcg(q);
  }
  Pack<T> pk;
  memcpy(&pk, &raw, sizeof(raw));
#pragma unroll
  for (int j = 0; j < kVecOf<T>; ++j) out[j] = static_cast<A>(pk.v[j]);
}

template <typename T, typename A>
__device__ __forceinline__ void store_pack(T* p, const A (&in)[kVecOf<T>]) {
  Pack<T> pk;
#pragma unroll
  for (int j = 0; j < kVecOf<T>; ++j) pk.v[j] = static_cast<T>(in[j]);
  uint4 raw;
  memcpy(&raw, &pk, sizeof(raw));
  // The intrinsic pins a single st.global.v4 (a plain store was split into scalar ones); .cg keeps
  // the written-once gradient out of L1.
  __stcg(reinterpret_cast<uint4*>(p), raw);
}

// Elements before the first 16-byte boundary at or after p; -1 when p is not even aligned to T.
template <typename T>
__device__ __forceinline__ int vector_head(const T* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  if (addr % sizeof(T) != 0) return -1;
  return static_cast<int>(((16 - (addr & 15)) & 15) / sizeof(T));
}

// Same offset from a 16-byte boundary, so one head serves both pointers.
template <typename T>
__device__ __forceinline__ bool same_alignment(const T* a, const T* b) {
  return b == nullptr || ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & 15) == 0;
}

// Visits classes [0, len) of one unit with the `lane`-th of G threads: single classes before the
// first 16-byte boundary (`head`) and after the last whole vector, whole vectors in between. With
// head < 0 every class is visited singly. one(c) and vec(c) get class offsets from the unit's start.
template <typename T, typename One, typename Vec>
__device__ __forceinline__ void visit_classes(int64_t len, int head, int lane, int G, One&& one, Vec&& vec) {
  constexpr int kVec = kVecOf<T>;
  const int64_t h = head < 0 ? len : (head < len ? head : len);
  for (int64_t c = lane; c < h; c += G) one(c);
  const int64_t nvec = (len - h) / kVec;
#pragma unroll 4
  for (int64_t v = lane; v < nvec; v += G) vec(h + v * kVec);
  for (int64_t c = h + nvec * kVec + lane; c < len; c += G) one(c);
}

// Per-row partial state of a scan: online log-sum-exp (max, sum) and two plain sums whose meaning
// belongs to the op (smoothing sum, soft-target sums).
template <typename A>
struct RowStats {
  A max, sum, s1, s2;
};

template <typename A>
__device__ __forceinline__ RowStats<A> stats_empty() {
  return {neg_inf<A>(), A(0), A(0), A(0)};
}

// One thread's scan state, whose sums s1 and s2 are added up in blocks of kBlockedSumTerms visits (see
// rowmath.h): in the N-D layout and in unsplit long rows a thread visits thousands of classes. The
// log-sum-exp part is online and needs no blocking.
template <typename A>
struct BlockedRowStats {
  RowStats<A> st;
  A block_s1, block_s2;
  int visits;

  // f(stats) adds one visit's values to the stats it is given.
  template <typename F>
  __device__ __forceinline__ void visit(F&& f) {
    RowStats<A> part{st.max, st.sum, A(0), A(0)};
    f(part);
    st.max = part.max;
    st.sum = part.sum;
    block_s1 += part.s1;
    block_s2 += part.s2;
    if (++visits == kBlockedSumTerms) {
      st.s1 += block_s1;
      st.s2 += block_s2;
      block_s1 = block_s2 = A(0);
      visits = 0;
    }
  }
  __device__ __forceinline__ RowStats<A> value() const { return {st.max, st.sum, st.s1 + block_s1, st.s2 + block_s2}; }
};

template <typename A>
__device__ __forceinline__ BlockedRowStats<A> blocked_stats_empty() {
  return {stats_empty<A>(), A(0), A(0), 0};
}

template <typename A>
__device__ __forceinline__ RowStats<A> stats_merge(const RowStats<A>& a, const RowStats<A>& b) {
  const LseState<A> l = lse_merge(LseState<A>{a.max, a.sum}, LseState<A>{b.max, b.sum});
  return {l.max, l.sum, a.s1 + b.s1, a.s2 + b.s2};
}

// Adds M values to an online log-sum-exp: one rescale for the whole pack, as the CPU scan does per
// block, so a pack costs M + 1 exponentials.
template <int M, typename A>
__device__ __forceinline__ void lse_add(RowStats<A>& st, const A (&x)[M]) {
  A m = st.max;
#pragma unroll
  for (int j = 0; j < M; ++j) m = math_nan_max(m, x[j]);
  const LseState<A> r = lse_rescale(LseState<A>{st.max, st.sum}, m);
  const A shift = lse_shift(m);
  A sum = r.sum;
#pragma unroll
  for (int j = 0; j < M; ++j) sum += math_exp(x[j] - shift);
  st.max = m;
  st.sum = sum;
}

template <typename A>
__device__ __forceinline__ RowStats<A> shfl_xor(const RowStats<A>& s, int offset) {
  return {__shfl_xor_sync(0xffffffffu, s.max, offset), __shfl_xor_sync(0xffffffffu, s.sum, offset),
          __shfl_xor_sync(0xffffffffu, s.s1, offset), __shfl_xor_sync(0xffffffffu, s.s2, offset)};
}

// Merges the states of each aligned group of G threads (G a power of two <= kBlock) in a fixed tree;
// every thread of a group gets the same result. Every thread of the block must call it.
template <typename A>
__device__ __forceinline__ RowStats<A> group_reduce(RowStats<A> st, int G) {
  const int width = G < 32 ? G : 32;
  for (int offset = 1; offset < width; offset <<= 1) st = stats_merge(st, shfl_xor(st, offset));
  if (G > 32) {
    FUSED_CE_SHARED_ARRAY(RowStats<A>, warp_states, kBlock / 32);
    if (threadIdx.x % 32 == 0) warp_states[threadIdx.x / 32] = st;
    __syncthreads();
    const int first = (threadIdx.x / G) * (G / 32);
    st = warp_states[first];
    for (int w = 1; w < G / 32; ++w) st = stats_merge(st, warp_states[first + w]);
  }
  return st;
}

// Sum over the block (blockDim.x == kBlock) in a fixed tree; the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v) {
  FUSED_CE_SHARED_ARRAY(double, partial, kBlock);
  partial[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  return partial[0];
}

// Upstream gradient of row (or element) i, in double as on the CPU, see DeviceGrad.
template <typename T>
__device__ __forceinline__ double grad_value(const DeviceGrad& g, int64_t i) {
  const double v = g.per_row ? static_cast<double>(static_cast<acc_of<T>>(static_cast<const T*>(g.data)[i]))
                             : *static_cast<const double*>(g.data);
  return mean_divide(v, g.denominator ? *g.denominator : g.divisor);
}

// The z-loss's upstream gradient of row i (language-model options), see DeviceGrad.
template <typename T>
__device__ __forceinline__ double z_grad_value(const DeviceGrad& g, int64_t i) {
  return grad_value<T>({g.data, g.per_row, g.z_denominator, g.z_divisor}, i);
}

inline unsigned int grid_for(int64_t threads) {
  const int64_t blocks = ceil_div(threads, kBlock);
  TORCH_CHECK(blocks < (int64_t(1) << 31), "fused_ce: problem too large for one CUDA grid");
  return static_cast<unsigned int>(blocks);
}

}  // namespace fused_ce::cuda
