// Allocation of logits-sized CPU outputs (gradients, elementwise losses).
#pragma once

#include <ATen/core/Tensor.h>

namespace fused_ce::cpu {

// at::empty for small tensors. Large ones are 2 MiB aligned and advised as transparent huge pages,
// and a few freed blocks are kept for reuse: a training step frees the previous step's gradient
// before asking for the next one, and without reuse the first touch of a fresh logits-sized block
// (page faults and zeroing by the kernel) costs more than the whole fused backward.
// FUSED_CE_CPU_BUFFER_CACHE=0 turns the reuse off.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace fused_ce::cpu
