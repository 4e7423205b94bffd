// BCE-with-logits kernels: elementwise over the flat input in fixed tiles of kBceTile elements per
// block, 16-byte vectors when every pointer allows. The mean/sum forward leaves one double per tile
// (summed in a fixed tree by finish_sum in reduce.cu), so the total does not depend on scheduling.
#include "cuda/device_common.cuh"

namespace fused_ce::cuda {
namespace {

constexpr int64_t kBceTile = kBlock * 32;

// A weight broadcast to the input as data[(i / div) % mod] (see describe_broadcast), with 32-bit
// index arithmetic when the input is small enough, since the divisions run once per element.
template <typename T>
struct Operand {
  const T* data;
  int64_t div, mod;
  bool narrow;
  __device__ __forceinline__ acc_of<T> at(int64_t i) const {
    using A = acc_of<T>;
    if (!data) return A(1);
    if (mod == 1) return static_cast<A>(data[0]);
    if (narrow) {
      const uint32_t q = div == 1 ? static_cast<uint32_t>(i) : static_cast<uint32_t>(i) / static_cast<uint32_t>(div);
      return static_cast<A>(data[q % static_cast<uint32_t>(mod)]);
    }
    return static_cast<A>(data[(div == 1 ? i : i / div) % mod]);
  }
};

template <typename T>
Operand<T> operand(const Broadcast& b, int64_t numel) {
  return {static_cast<const T*>(b.data), b.div, b.mod, numel <= int64_t(UINT32_MAX)};
}

template <typename T>
struct BceTensors {
  const T* x;
  const T* y;
  Operand<T> w, pw;
  int64_t numel;
};

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Calls f(i, x, y) for the elements of this block's tile, thread by thread: vectors of kVec elements
// when `vectorize` (all pointers 16-byte aligned), single elements otherwise and for the tensor's tail.
// f gets M values and the index of the first.
template <typename T, typename F>
__device__ __forceinline__ void for_tile(const BceTensors<T>& a, bool vectorize, F&& f) {
  using A = acc_of<T>;
  constexpr int kVec = kVecOf<T>;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kBceTile;
  const int64_t end = begin + kBceTile < a.numel ? begin + kBceTile : a.numel;
  int64_t scalar_from = begin;
  if (vectorize) {
    const int64_t packs = (end - begin) / kVec;
#pragma unroll 4
    for (int64_t p = threadIdx.x; p < packs; p += kBlock) {
      const int64_t i = begin + p * kVec;
      A xv[kVec], yv[kVec];
      load_pack(a.x + i, xv);
      load_pack(a.y + i, yv);
      f(i, xv, yv);
    }
    scalar_from = begin + packs * kVec;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += kBlock) {
    A xv[1] = {static_cast<A>(a.x[i])}, yv[1] = {static_cast<A>(a.y[i])};
    f(i, xv, yv);
  }
}

template <typename T, int M, typename A = acc_of<T>>
__device__ __forceinline__ void store_values(T* out, int64_t i, const A (&v)[M]) {
  if constexpr (M == 1) {
    out[i] = static_cast<T>(v[0]);
  } else {
    store_pack(out + i, v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock) bce_forward_kernel(BceTensors<T> a, bool vectorize, T* elementwise,
                                                             double* partials) {
  using A = acc_of<T>;
  A sum = 0;
  for_tile(a, vectorize, [&](int64_t i, const auto& xv, const auto& yv) {
    constexpr int M = sizeof(xv) / sizeof(A);
    A l[M];
#pragma unroll
    for (int j = 0; j < M; ++j) l[j] = bce_loss(xv[j], yv[j], a.w.at(i + j), a.pw.at(i + j));
    if (elementwise) {
      store_values<T, M>(elementwise, i, l);
    } else {
#pragma unroll
      for (int j = 0; j < M; ++j) sum += l[j];
    }
  });
  if (!elementwise) {  // uniform over the grid, so every thread reaches block_sum's barriers
    const double total = block_sum(static_cast<double>(sum));
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
  }
}

template <typename T, bool kTargetGrad>
__global__ void __launch_bounds__(kBlock) bce_backward_kernel(BceTensors<T> a, bool vectorize, DeviceGrad g,
                                                              T* out) {
  using A = acc_of<T>;
  const T* gp = static_cast<const T*>(g.data);
  // As on the CPU: per element g[i] * 1, or the scalar g / numel (mean) or g (sum) for every element.
  const A scale = g.per_row ? A(1) : static_cast<A>(grad_value<T>(g, 0));
  for_tile(a, vectorize, [&](int64_t i, const auto& xv, const auto& yv) {
    constexpr int M = sizeof(xv) / sizeof(A);
    A d[M];
#pragma unroll
    for (int j = 0; j < M; ++j) {
      const A gs = g.per_row ? static_cast<A>(gp[i + j]) * scale : scale;
      const A e = kTargetGrad ? bce_grad_target(xv[j], a.w.at(i + j), a.pw.at(i + j))
                              : bce_grad_input(xv[j], yv[j], a.w.at(i + j), a.pw.at(i + j));
      d[j] = e * gs;
    }
    store_values<T, M>(out, i, d);
  });
}

template <typename T>
BceTensors<T> tensors(const BceArgs& a) {
  return {static_cast<const T*>(a.input), static_cast<const T*>(a.target), operand<T>(a.weight, a.numel),
          operand<T>(a.pos_weight, a.numel), a.numel};
}

}  // namespace

int64_t bce_partial_count(int64_t numel) { return ceil_div(numel, kBceTile); }

void bce_forward(const BceArgs& a, void* elementwise, double* partials, cudaStream_t stream) {
  if (a.numel == 0) return;
  const unsigned int grid = grid_for(bce_partial_count(a.numel) * kBlock);
  const bool vectorize = aligned16(a.input) && aligned16(a.target) && aligned16(elementwise);
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel(FUSED_CE_KERNEL(bce_forward_kernel<T>), grid, kBlock, stream, tensors<T>(a), vectorize,
                  static_cast<T*>(elementwise), partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void bce_backward(const BceArgs& a, const DeviceGrad& g, bool target_grad, void* out, cudaStream_t stream) {
  if (a.numel == 0) return;
  const unsigned int grid = grid_for(bce_partial_count(a.numel) * kBlock);
  const bool vectorize = aligned16(a.input) && aligned16(a.target) && aligned16(out) &&
                         (!g.per_row || aligned16(g.data));
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (target_grad) {
      launch_kernel(FUSED_CE_KERNEL(bce_backward_kernel<T, true>), grid, kBlock, stream, tensors<T>(a), vectorize, g,
                    static_cast<T*>(out));
    } else {
      launch_kernel(FUSED_CE_KERNEL(bce_backward_kernel<T, false>), grid, kBlock, stream, tensors<T>(a), vectorize, g,
                    static_cast<T*>(out));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace fused_ce::cuda
