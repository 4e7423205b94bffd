// Registration of the CUDA impl of linear_ce_tile_ (linear_ce_tile_cuda.cpp): for CUDA tensors in the
// fused_ce library (register_cuda.cpp), and for CPU tensors in the emulated build's own library.
#pragma once

#include <torch/library.h>

namespace fused_ce::cuda {

void register_linear_ce_impls(torch::Library& m);

}  // namespace fused_ce::cuda
