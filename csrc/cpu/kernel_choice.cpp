// Picks the kernel table for the running CPU: the best instruction set it supports, unless
// FUSED_CE_CPU_CAPABILITY names another. The variable is read at every call (a getenv costs far less
// than any kernel), so one process can run each instruction set in turn: the tests switch it per case.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/kernel_table.h"

namespace fused_ce::cpu {
namespace {

enum class Isa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect() {
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

Isa best_supported() {
  static const Isa isa = detect();
  return isa;
}

Isa chosen() {
  const Isa best = best_supported();
  const char* env = std::getenv("FUSED_CE_CPU_CAPABILITY");
  if (env == nullptr) return best;
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
  TORCH_CHECK(asked <= best, "FUSED_CE_CPU_CAPABILITY=", want, " is not supported by this CPU");
  return asked;
}

}  // namespace

const KernelTable& kernels() {
  switch (chosen()) {
    case Isa::kAvx512: return kernels_avx512();
    case Isa::kAvx2: return kernels_avx2();
    default: return kernels_default();
  }
}

const char* kernels_name() {
  switch (chosen()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace fused_ce::cpu
