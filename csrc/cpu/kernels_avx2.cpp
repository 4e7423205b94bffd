// The CPU kernels for avx2: setup.py compiles this file on its own with -mavx2 -mfma -mf16c
// and -DCPU_CAPABILITY=AVX2, which selects the at::vec implementation.
#include "cpu/kernels_impl.h"

namespace fused_ce::cpu {

const KernelTable& kernels_avx2() {
  return CPU_CAPABILITY::table();
}

}  // namespace fused_ce::cpu
