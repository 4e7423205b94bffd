// Deterministic reductions on the device: the sum of per-row losses (and of class weights, and of the
// weights w[y] that make the weighted mean's denominator) as a two-step tree whose shape depends only
// on the number of values: fixed tiles summed per block, then the tile sums by one block. No float
// atomics, so every run gives the same bits, and nothing waits for the host.
#include "cuda/device_common.cuh"

namespace fused_ce::cuda {
namespace {

// Values per block in the first step.
constexpr int64_t kSumTile = kBlock * 16;

template <typename In>
__global__ void __launch_bounds__(kBlock) sum_partials_kernel(const In* v, int64_t n, double* partials) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kSumTile;
  const int64_t end = begin + kSumTile < n ? begin + kSumTile : n;
  double s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) s += static_cast<double>(v[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

template <typename Out>
__global__ void __launch_bounds__(kBlock) finish_sum_kernel(const double* partials, int64_t count,
                                                            const double* denominator, double divisor, Out* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < count; i += kBlock) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) {
    // NaN for a zero denominator: the mean of nothing, or of rows of total weight 0, as in PyTorch.
    const double value = mean_divide(s, denominator ? *denominator : divisor);
    out[0] = static_cast<Out>(value);
  }
}

template <typename Target>
__global__ void __launch_bounds__(kBlock) target_weights_kernel(const Target* target, int64_t rows, int64_t C,
                                                                int64_t ignore_index, const double* weight,
                                                                double* out, unsigned long long* bad_row) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= rows) return;
  const int64_t y = static_cast<int64_t>(target[i]);
  if (y == ignore_index) {
    out[i] = 0.0;
  } else if (y < 0 || y >= C) {
    out[i] = NAN;
    if (bad_row) atomicMin(bad_row, static_cast<unsigned long long>(i));
  } else {
    out[i] = weight ? weight[y] : 1.0;
  }
}

}  // namespace

int64_t sum_partial_count(int64_t n) { return ceil_div(n, kSumTile); }

void sum_partials(at::ScalarType in_dtype, const void* values, int64_t n, double* partials, cudaStream_t stream) {
  const int64_t blocks = sum_partial_count(n);
  if (blocks == 0) return;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "fused_ce: too many values to sum");
  const unsigned int grid = static_cast<unsigned int>(blocks);
  if (in_dtype == at::kDouble) {
    launch_kernel(FUSED_CE_KERNEL(sum_partials_kernel<double>), grid, kBlock, stream,
                  static_cast<const double*>(values), n, partials);
  } else {
    TORCH_CHECK(in_dtype == at::kFloat, "fused_ce: sums of float or double only");
    launch_kernel(FUSED_CE_KERNEL(sum_partials_kernel<float>), grid, kBlock, stream,
                  static_cast<const float*>(values), n, partials);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void finish_sum(const double* partials, int64_t count, const double* denominator, double divisor,
                at::ScalarType out_dtype, void* out, cudaStream_t stream) {
  dispatch_dtype(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_kernel(FUSED_CE_KERNEL(finish_sum_kernel<T>), 1, kBlock, stream, partials, count, denominator, divisor,
                  static_cast<T*>(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void ce_target_weights(const void* target, bool target_is_byte, int64_t rows, int64_t C, int64_t ignore_index,
                       const double* weight, double* out, unsigned long long* bad_row, cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned int grid = grid_for(rows);
  if (target_is_byte) {
    launch_kernel(FUSED_CE_KERNEL(target_weights_kernel<uint8_t>), grid, kBlock, stream,
                  static_cast<const uint8_t*>(target), rows, C, ignore_index, weight, out, bad_row);
  } else {
    launch_kernel(FUSED_CE_KERNEL(target_weights_kernel<int64_t>), grid, kBlock, stream,
                  static_cast<const int64_t*>(target), rows, C, ignore_index, weight, out, bad_row);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fused_ce::cuda
