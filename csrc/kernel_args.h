// Plain descriptions of one kernel call, filled by the op glue (op_common.h, ops_cpu.cpp, cuda/ops_cuda.cpp)
// and read by the kernels. They carry raw pointers and sizes only, so kernel files (compiled once per
// CPU instruction set, or by nvcc) include as little as possible.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_ce {

// Logits viewed as (N, C, S): S == 1 is a batch of rows (any row stride, classes contiguous);
// S > 1 is the N-D layout (N, C, d1..dk) with the class dimension strided by S, contiguous.
struct LogitsView {
  const void* data;
  int64_t N, C, S;
  int64_t stride_n;  // elements between consecutive n
};

// Upstream gradient of each row: per-row values (reduction='none') or one scalar (mean/sum).
// The mean's 1/denominator is already folded into `scale`.
struct RowGrad {
  const double* per_row;  // N*S values, or nullptr
  double scale;
  // Upstream gradient of the z-loss (language-model options): (per_row ? per_row[i] : 1) * z_scale. It
  // differs from the loss's `scale` only for 'mean', whose z-loss divides by the number of counted rows.
  double z_scale = 0.0;
};

// Language-model options of class-index cross-entropy (rowmath.h, LogitTransform and z_loss_row, has the
// math). The defaults are plain cross-entropy.
struct LmOptions {
  double logit_scale = 1.0;
  double softcap = 0.0;           // 0: no soft-capping
  double lse_square_scale = 0.0;  // z-loss weight
  void* z_loss_rows = nullptr;    // forward: N*S accumulators for each row's z-loss (ignored rows 0), or nullptr
  // Backward writes the gradient over the logits it reads (inplace_backward): each element is read before
  // it is written, and the target logit of a row is read before the row is written.
};

struct CeHardArgs {
  at::ScalarType dtype;
  LogitsView logits;
  const void* target;  // N*S class indices, validated in range or == ignore_index
  bool target_is_byte;  // uint8 instead of int64
  const void* weight;  // C class weights of `dtype`, or nullptr
  int64_t ignore_index;
  double label_smoothing;
  double weight_sum;  // sum of the class weights (C when unweighted)
  LmOptions lm = {};
  // CPU backward: the gradient buffer is a fresh anonymous mapping (large_buffers.cpp), which the OS hands over
  // zeroed, so ignored rows are left unwritten; their 0 is already there.
  bool grad_zeroed = false;
};

struct CeSoftArgs {
  at::ScalarType dtype;
  LogitsView logits;  // contiguous
  const void* target;  // same shape, layout and dtype as the logits
  const void* weight;
  double label_smoothing;
  double weight_sum;
};

// A weight or pos_weight broadcast to the input: element i of the flat input uses
// data[(i / div) % mod]. Scalars have div = mod = 1; absent operands have data == nullptr.
struct Broadcast {
  const void* data;
  int64_t div;
  int64_t mod;
};

struct BceArgs {
  at::ScalarType dtype;
  const void* input;   // contiguous
  const void* target;  // contiguous, same dtype
  int64_t numel;
  Broadcast weight;
  Broadcast pos_weight;
};

// Elements per BCE partial sum: fixed, so the reduction order (and the result) does not depend on the
// number of threads.
constexpr int64_t kBceChunk = 8192;

}  // namespace fused_ce
