// The CUDA side of the vocabulary-parallel cross-entropy's slice ops (partial_stats_schema.h): launchers of
// the kernels in partial_stats.cu, seen from the host glue (partial_stats_cuda.cpp), and the registration of
// the impls, for CUDA tensors in the fused_ce library (register_cuda.cpp) and for CPU tensors in the emulated
// build's own library (cuda_emulation/register_emulated.cpp).
#pragma once

#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "cuda/launchers.h"
#include "partial_stats_args.h"

namespace fused_ce::cuda {

// Writes the (kPartialStatCount, rows) statistics of rowmath.h's PartialStat into `out` (accumulation type).
void ce_partial_stats_forward(const PartialStatsArgs& a, bool smoothing, const Tiling& t, void* partials, void* out,
                              cudaStream_t stream);
// Writes the slice's gradient, contiguous (N, C, S), from the (4, rows) coefficients (lse, prob, tgt, klass).
void ce_partial_grad_backward(const PartialStatsArgs& a, const Tiling& t, const void* coefs, void* grad,
                              cudaStream_t stream);

void register_partial_stats_impls(torch::Library& m);

}  // namespace fused_ce::cuda
