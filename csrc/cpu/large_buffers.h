// Allocation of logits-sized CPU outputs (gradients, elementwise losses).
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_ce::cpu {

// at::empty for small tensors. Large ones (4 MiB or more) get their own 2 MiB-aligned mapping advised
// as transparent huge pages, returned to the system when the tensor dies (see large_buffers.cpp).
// *zeroed (when given) says whether the tensor is such a fresh mapping, which holds zeros.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options, bool* zeroed = nullptr);

}  // namespace fused_ce::cpu
