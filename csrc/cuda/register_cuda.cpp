// The CUDA impls of the fused_ce ops, for CUDA tensors.
#include <torch/library.h>

#include "cuda/linear_ce_cuda.h"
#include "cuda/ops_cuda.h"
#include "cuda/partial_stats_cuda.h"

TORCH_LIBRARY_IMPL(fused_ce, CUDA, m) {
  fused_ce::cuda::register_impls(m);
  fused_ce::cuda::register_linear_ce_impls(m);
  fused_ce::cuda::register_partial_stats_impls(m);
}
