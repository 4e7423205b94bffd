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
// tanh for float vectors as 1 - 2 / (1 + exp(2x)) with the 1-ulp exp: the soft-capped kernels compute one per
// logit, and at::vec's tanh made a 2048x32000 fp32 forward+backward 2.5x as slow as without the cap (measured
// here). Its absolute error is a few 1e-8 (the rounding of 2 / (1 + e) near 1), which the cap c multiplies as it
// multiplies the fp32 rounding of torch's own c * tanh(x / c); the fast exp_u20 would be 20 times coarser.
// +-inf and large |x| give +-1 exactly (exp overflows to inf, or underflows to 0); NaN stays NaN.
inline Vec<float> math_tanh(Vec<float> x) {
  const Vec<float> one(1.f), two(2.f);
  return one - two / (one + (x + x).exp());
}
inline Vec<double> math_tanh(Vec<double> x) { return x.tanh(); }
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
