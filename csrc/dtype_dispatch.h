// Calls f with a value of the C++ type of a floating dtype the kernels support; shared by the CPU
// kernels and the CUDA launchers (host code only), so both accept and reject the same dtypes. Also
// bool_switch, which turns a runtime flag into a template argument in the same way.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <type_traits>

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

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template argument.
template <typename F>
void bool_switch(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace fused_ce
