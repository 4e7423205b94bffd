// at::vec overloads of the math names that rowmath.h uses, so its templated formulas run on SIMD
// vectors too. Included (before rowmath.h) only by kernels_impl.h, which each ISA file compiles with
// its own CPU_CAPABILITY.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace fused_ce {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp_u20 is several times faster than the 1-ulp exp and accurate enough for softmax; it clamps its
// input, so NaN is put back explicitly (a NaN logit must give a NaN loss and gradient, as in PyTorch).
template <typename T>
inline Vec<T> math_exp(Vec<T> x) { return Vec<T>::blendv(x.exp_u20(), x, x != x); }
template <typename T>
inline Vec<T> math_log(Vec<T> x) { return x.log(); }
template <typename T>
inline Vec<T> math_log1p(Vec<T> x) { return x.log1p(); }
template <typename T>
inline Vec<T> math_abs(Vec<T> x) { return x.abs(); }
template <typename T>
inline Vec<T> math_tanh(Vec<T> x) { return x.tanh(); }
template <typename T>
inline Vec<T> math_relu(Vec<T> x) { return at::vec::clamp_min(x, Vec<T>(T(0))); }
// at::vec::maximum propagates NaN, like the scalar math_nan_max.
template <typename T>
inline Vec<T> math_nan_max(Vec<T> a, Vec<T> b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vec<T> lse_shift(Vec<T> m) {
  return Vec<T>::blendv(m, Vec<T>(T(0)), m == Vec<T>(-std::numeric_limits<T>::infinity()));
}

}  // namespace fused_ce
