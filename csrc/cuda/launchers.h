// The CUDA kernels as seen from the host glue (ops_cuda.cpp): plain launch functions over the
// descriptors of kernel_args.h, plus the tiling that decides how rows are spread over threads. This
// header needs only the CUDA runtime API, so the glue compiles with the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernel_args.h"

namespace fused_ce::cuda {

// Threads per block of every row and elementwise kernel.
constexpr int kBlock = 256;
// Threads that one kernel should keep busy (about one wave of an H100 or A100). A fixed number rather
// than the device's SM count, so the split of a row, and therefore every rounding, is the same on
// every GPU.
constexpr int64_t kTargetThreads = int64_t(1) << 18;
// Row kernels give every thread of a row at least this many 16-byte vectors before splitting a row
// into more chunks.
constexpr int64_t kMinVectorsPerThread = 2;
constexpr int64_t kVectorsPerThread = 4;
// Fewest classes per chunk in the N-D layout (one thread walks a chunk with stride S).
constexpr int64_t kMinStridedChunk = 32;

// How the (N, C, S) problem is cut into units of work. A unit is one chunk of consecutive classes of
// one row (row r = n * S + s). In the row layout (S == 1) a unit is served by `group` threads that
// read 16-byte vectors; in the N-D layout by one thread, and consecutive threads take consecutive
// positions s, so loads of one class are coalesced. Rows are split into `chunks` > 1 only when there
// are too few rows to fill the GPU; the per-chunk partial states are then merged in chunk order.
struct Tiling {
  int64_t N, C, S;
  int64_t x_stride_n;  // logits elements between consecutive n
  int64_t rows;        // N * S
  int64_t chunks;      // per row
  int64_t chunk_len;   // classes per chunk (the last one may be shorter)
  int64_t units;       // rows * chunks
  int group;           // threads per unit: a power of two <= kBlock, 1 in the N-D layout
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline Tiling plan_tiling(const LogitsView& v, int64_t element_size) {
  Tiling t{};
  t.N = v.N;
  t.C = v.C;
  t.S = v.S;
  t.x_stride_n = v.stride_n;
  t.rows = v.N * v.S;
  const int64_t C = std::max<int64_t>(v.C, 1);
  const int64_t vec = 16 / element_size;
  int64_t chunks = 1;
  if (v.S == 1) {
    const int64_t want = ceil_div(C, vec * kVectorsPerThread);
    int g = 1;
    while (g < kBlock && g < want) g *= 2;
    t.group = g;
    const int64_t threads = t.rows * g;
    if (threads < kTargetThreads / 2) {
      chunks = std::min(ceil_div(kTargetThreads, std::max<int64_t>(threads, 1)),
                        ceil_div(C, g * vec * kMinVectorsPerThread));
    }
  } else {
    t.group = 1;
    if (t.rows < kTargetThreads / 2) {
      chunks = std::min(ceil_div(kTargetThreads, std::max<int64_t>(t.rows, 1)), ceil_div(C, kMinStridedChunk));
    }
  }
  chunks = std::max<int64_t>(chunks, 1);
  // Chunk boundaries on whole vectors, so a 16-byte aligned row stays aligned in every chunk.
  t.chunk_len = ceil_div(ceil_div(C, chunks), vec) * vec;
  t.chunks = ceil_div(C, t.chunk_len);
  t.units = t.rows * t.chunks;
  return t;
}

// Bytes of the per-chunk partial states of a split row (0 when rows are not split).
inline int64_t partials_bytes(const Tiling& t, int64_t acc_size) {
  return t.chunks > 1 ? t.units * 4 * acc_size : 0;
}

// The upstream gradient, in device memory: per-row (reduction='none') or one scalar. The mean's
// denominator is read from device memory too (`denominator`, computed by a kernel) or known on the
// host (`divisor`), so backward never waits for the GPU. g_i = grad[i or 0] / denominator / divisor.
// The z-loss of the language-model options (LmOptions) has the same upstream gradient with its own
// mean's denominator, the number of counted rows: g_z_i = grad[i or 0] / z_denominator / z_divisor.
struct DeviceGrad {
  const void* data;  // per_row: the logits' dtype; else one double
  bool per_row;
  const double* denominator;  // or nullptr
  double divisor;
  const double* z_denominator = nullptr;
  double z_divisor = 1.0;
};

// Where a forward writes: lse (double, rowmath.h's lse_saved) and either the loss in the logits' dtype
// (reduction='none') or per-row losses in the accumulation type, summed afterwards.
struct CeOutputs {
  void* lse;
  void* loss_rows;
  void* loss_acc;
};

// Class-index targets. `weight_sum` is the device sum of the class weights (nullptr: unweighted, C).
// The language-model options come in a.lm; the backward writes over the logits when grad is
// a.logits.data (contiguous logits only).
void ce_hard_forward(const CeHardArgs& a, const Tiling& t, const double* weight_sum, void* partials,
                     const CeOutputs& out, cudaStream_t stream);
void ce_hard_backward(const CeHardArgs& a, const Tiling& t, const double* weight_sum, const void* lse,
                      const DeviceGrad& g, void* grad, cudaStream_t stream);

// Class-probability targets. Backward needs rows * acc_size bytes of `row_sums` (sum of w t' per row)
// besides the partials.
void ce_soft_forward(const CeSoftArgs& a, const Tiling& t, void* partials, const CeOutputs& out,
                     cudaStream_t stream);
void ce_soft_backward(const CeSoftArgs& a, const Tiling& t, void* partials, void* row_sums, const void* lse,
                      const DeviceGrad& g, void* grad, cudaStream_t stream);
void ce_soft_target_backward(const CeSoftArgs& a, const Tiling& t, const void* lse, const DeviceGrad& g,
                             void* grad, cudaStream_t stream);

// w[y] of every row as doubles (0 for ignored rows, NaN for out-of-range ones): summed, the weighted
// mean's denominator. When `bad_row` is given, the smallest row with an out-of-range target is
// recorded there (atomicMin; initialize it to all ones).
void ce_target_weights(const void* target, bool target_is_byte, int64_t rows, int64_t C, int64_t ignore_index,
                       const double* weight, double* out, unsigned long long* bad_row, cudaStream_t stream);

// BCE with logits. Forward writes either the elementwise loss (`elementwise`) or one double partial
// sum per tile of the flat input (bce_partial_count of them), summed by finish_sum.
int64_t bce_partial_count(int64_t numel);
void bce_forward(const BceArgs& a, void* elementwise, double* partials, cudaStream_t stream);
void bce_backward(const BceArgs& a, const DeviceGrad& g, bool target_grad, void* out, cudaStream_t stream);

// Deterministic sums: sum_partial_count(n) doubles from sum_partials, then finish_sum writes
// total / *denominator (or total / divisor) into out[0] of out_dtype. The order of every addition
// depends only on n.
int64_t sum_partial_count(int64_t n);
void sum_partials(at::ScalarType in_dtype, const void* values, int64_t n, double* partials, cudaStream_t stream);
void finish_sum(const double* partials, int64_t count, const double* denominator, double divisor,
                at::ScalarType out_dtype, void* out, cudaStream_t stream);

}  // namespace fused_ce::cuda
