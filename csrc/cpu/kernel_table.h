// The CPU kernels' entry points, one table per instruction set (kernels_<isa>.cpp), and the choice
// among them for the running CPU.
#pragma once

#include "kernel_args.h"

namespace fused_ce::cpu {

// Entry points, one set per instruction set (kernels_<isa>.cpp).
struct KernelTable {
  // lse and row_loss: N*S accumulators (double for fp64 inputs, float otherwise); ignored rows get 0.
  void (*ce_hard_forward)(const CeHardArgs&, void* lse, void* row_loss);
  void (*ce_hard_backward)(const CeHardArgs&, const void* lse, RowGrad, void* grad_logits);
  void (*ce_soft_forward)(const CeSoftArgs&, void* lse, void* row_loss);
  void (*ce_soft_backward)(const CeSoftArgs&, const void* lse, RowGrad, void* grad_logits);
  void (*ce_soft_target_backward)(const CeSoftArgs&, const void* lse, RowGrad, void* grad_target);
  // out: numel losses of `dtype` when `out_elementwise`, else one double partial sum per kBceChunk.
  void (*bce_forward)(const BceArgs&, bool out_elementwise, void* out);
  // grad: per-element upstream gradient of `dtype` (reduction='none') or nullptr with `scale` only.
  void (*bce_backward)(const BceArgs&, const void* grad, double scale, void* grad_input);
  void (*bce_target_backward)(const BceArgs&, const void* grad, double scale, void* grad_target);
};

const KernelTable& kernels_default();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();

// The table for this CPU: AVX-512 or AVX2 when the CPU has them. FUSED_CE_CPU_CAPABILITY=default|avx2|
// avx512 overrides the choice (never above what the CPU supports), to test each path on one machine; it is
// read at every call, so it can change while the process runs.
const KernelTable& kernels();
const char* kernels_name();

}  // namespace fused_ce::cpu
