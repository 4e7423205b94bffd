// The CPU kernels for avx512: setup.py compiles this file on its own with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma
// and -DCPU_CAPABILITY=AVX512, which selects the at::vec implementation.
#include "cpu/kernels_impl.h"

namespace fused_ce::cpu {

const KernelTable& kernels_avx512() {
  return CPU_CAPABILITY::table();
}

}  // namespace fused_ce::cpu
