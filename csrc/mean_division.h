// The division that turns a sum into a mean, shared by the CPU glue and the CUDA kernels.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_CE_MEAN_HD __host__ __device__ __forceinline__
#else
#define FUSED_CE_MEAN_HD inline
#endif

namespace fused_ce {

// value / denominator, but NaN when the denominator is 0. A class-index mean over rows whose total weight
// is 0 (all ignored, or every target of class weight 0) is NaN in torch, also with label smoothing, whose
// term makes the sum non-zero: a plain division would give +-inf there. (The same holds for the scale of
// the mean's gradient: torch's gradient of such a mean is NaN, except on ignored rows, which stay 0.)
FUSED_CE_MEAN_HD double mean_divide(double value, double denominator) {
  return denominator == 0 ? NAN : value / denominator;
}

}  // namespace fused_ce
