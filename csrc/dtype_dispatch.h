// Calls f with a value of the C++ type of a floating dtype the kernels support; shared by the CPU
// kernels and the CUDA launchers (host code only), so both accept and reject the same dtypes.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fused_ce {

template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::ScalarType::Float: return f(float{});
    case at::ScalarType::Double: return f(double{});
    case at::ScalarType::BFloat16: return f(c10::BFloat16{});
    case at::ScalarType::Half: return f(c10::Half{});
    default: TORCH_CHECK(false, "fused_ce: unsupported dtype ", dtype);
  }
}

}  // namespace fused_ce
