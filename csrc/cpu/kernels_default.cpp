// The CPU kernels for default: setup.py compiles this file on its own with no SIMD beyond the x86-64 baseline
// and -DCPU_CAPABILITY=DEFAULT, which selects the at::vec implementation.
#include "cpu/kernels_impl.h"

namespace fused_ce::cpu {

const KernelTable& kernels_default() {
  return CPU_CAPABILITY::table();
}

}  // namespace fused_ce::cpu
