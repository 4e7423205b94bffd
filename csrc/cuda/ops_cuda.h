// Registration of the CUDA impls (ops_cuda.cpp): for CUDA tensors in the fused_ce library
// (register_cuda.cpp), and for CPU tensors in the emulated build's own library
// (cuda_emulation/register_emulated.cpp).
#pragma once

#include <torch/library.h>

namespace fused_ce::cuda {

void register_impls(torch::Library& m);

}  // namespace fused_ce::cuda
