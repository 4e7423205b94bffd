// Picks the kernel table for the running CPU once, at first use.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/kernel_table.h"

namespace fused_ce::cpu {
namespace {

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

Isa best_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // The at::vec AVX-512 code uses the F, BW, VL and DQ subsets.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kDefault;
}

Isa chosen() {
  Isa isa = best_supported();
  if (const char* env = std::getenv("FUSED_CE_CPU_CAPABILITY")) {
    const std::string want(env);
    Isa asked = Isa::kDefault;
    if (want == "avx512") {
      asked = Isa::kAvx512;
    } else if (want == "avx2") {
      asked = Isa::kAvx2;
    } else {
      TORCH_CHECK(want == "default" || want.empty(),
                  "FUSED_CE_CPU_CAPABILITY must be default, avx2 or avx512, got: ", want);
    }
    TORCH_CHECK(asked <= isa, "FUSED_CE_CPU_CAPABILITY=", want, " is not supported by this CPU");
    isa = asked;
  }
  return isa;
}

Isa cached() {
  static const Isa isa = chosen();
  return isa;
}

}  // namespace

const KernelTable& kernels() {
  switch (cached()) {
    case Isa::kAvx512: return kernels_avx512();
    case Isa::kAvx2: return kernels_avx2();
    default: return kernels_default();
  }
}

const char* kernels_name() {
  switch (cached()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace fused_ce::cpu
