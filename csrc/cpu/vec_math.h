// at::vec overloads of the math names that rowmath.h uses, so its templated formulas run on SIMD
// vectors too. Included (before rowmath.h) only by kernels_impl.h, which each ISA file compiles with
// its own CPU_CAPABILITY.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdlib>

#include "capped_logit.h"

namespace fused_ce {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// exp_u20 is several times faster than the 1-ulp exp and accurate enough for softmax; it clamps its
// input, so NaN is put back explicitly (a NaN logit must give a NaN loss and gradient, as in PyTorch).
template <typename T>
inline Vec<T> math_exp(Vec<T> x) { return Vec<T>::blendv(x.exp_u20(), x, x != x); }
// exp of lse_scan's terms x - shift. Where one exceeds 20 the scan sums its block again against the block's own
// max and drops this sum, so arguments above 89 may give anything there; under AVX-512 the clamp of the
// argument at 89 is left out (one of the 17 instructions per vector of the bf16 forward).
template <typename T>
inline Vec<T> math_exp_scan_term(Vec<T> x) { return math_exp(x); }
// rowmath.h's math_exp_prob: the backward's probabilities, each one entry of the gradient, take at::vec's 1-ulp
// exp (Sleef's under AVX2; the C library's lane by lane in the default build).
template <typename T>
inline Vec<T> math_exp_prob(Vec<T> x) { return x.exp(); }

#if defined(CPU_CAPABILITY_AVX512)
// fp32 exp in 11 AVX-512 instructions where exp_u20 and the NaN blend above take 21: the forward pass is
// bound by this exp (one per logit; bf16 forward 4096x32000 ran at a third of the memory bandwidth).
// exp(x) = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2 in two parts (Cody-Waite: n * kLn2Hi is
// exact for |n| < 2^15), so |r| <= ln(2) / 2; e^r by the degree-5 polynomial of exp_u20 (relative error
// 9e-8 on that interval); 2^n applied by vscalefps, which gives inf and 0 when it overflows or underflows.
// Measured against fp64 in fp32 arithmetic: at most 3 ulp (exp_u20: 20). The clamp keeps n * ln 2 finite,
// so -inf gives exactly 0 (x = -120 is below 2^-150) and +inf gives inf; max/min return their second
// operand when one is NaN, so NaN stays NaN.
// exp_reduce is the clamp below and the split of x into n and r, shared with the BCE's exp_non_positive;
// exp_up_to_89 is the exp for arguments up to 89 (or +-inf, NaN); math_exp clamps its argument there first.
struct ExpReduced {
  __m512 n, r;  // x = n ln 2 + r
};

inline ExpReduced exp_reduce(__m512 v) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-120.f), v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  return {n, r};
}

inline __m512 exp_up_to_89(__m512 v) {
  const auto [n, r] = exp_reduce(v);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.00828929059f), r, _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
inline Vec<float> math_exp(Vec<float> v) { return exp_up_to_89(_mm512_min_ps(_mm512_set1_ps(89.f), v)); }
inline Vec<float> math_exp_scan_term(Vec<float> v) { return exp_up_to_89(v); }
#endif
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
// Whether bf16 stores may use vcvtne2ps2bf16 (AVX512_BF16: Cooper Lake, Sapphire Rapids, Zen 4 and later): one
// instruction for 32 values, where at::vec rounds them in integer arithmetic with a dozen (bf16 backward
// 4096x32000 into existing memory: 23 -> 17 ms, measured here). FUSED_CE_NATIVE_BF16=0, read once at load,
// turns it off (tests/test_bf16_stores.py checks both ways against c10's rounding).
inline const bool kNativeBf16Stores = [] {
  __builtin_cpu_init();
  const char* env = std::getenv("FUSED_CE_NATIVE_BF16");
  return __builtin_cpu_supports("avx512bf16") && !(env != nullptr && env[0] == '0' && env[1] == '\0');
}();

// Stores a (the first 16 values) and b (the next 16) rounded to bf16 exactly as c10::BFloat16 rounds them (to
// nearest even, overflow to inf) and returns true; or returns false and stores nothing. The instruction reads
// denormal inputs as zero, so a pair holding one (a probability below 2^-126, e.g. a logit 88 below the row's
// log-sum-exp) is left to at::vec. NaN stays NaN but keeps its sign, where c10 gives +NaN (0x7fc0).
inline __mmask16 denormal_lanes(__m512 v) { return _mm512_fpclass_ps_mask(v, 0x20); }  // vfpclassps category

inline bool store_bf16_native(c10::BFloat16* p, __m512 a, __m512 b) {
  if (!kNativeBf16Stores || (denormal_lanes(a) | denormal_lanes(b)) != 0) return false;
  _mm512_storeu_si512(p, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  return true;
}

// The same for the first n values of one vector.
inline bool store_bf16_native(c10::BFloat16* p, __m512 a, int64_t n) {
  if (!kNativeBf16Stores || denormal_lanes(a) != 0) return false;
  _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((uint32_t(1) << n) - 1), (__m256i)_mm512_cvtneps_pbh(a));
  return true;
}
#endif
template <typename T>
inline Vec<T> math_log(Vec<T> x) { return x.log(); }
// log1p(exp(-|x|)), the BCE kernels' one transcendental term (rowmath.h, softplus_neg).
template <typename T>
inline Vec<T> math_log1p_exp_neg_abs(Vec<T> x) { return math_exp(Vec<T>(T(0)) - x.abs()).log1p(); }
#if defined(CPU_CAPABILITY_AVX512)
// The BCE forward spent most of its time here with Sleef's log1p and then with a Cephes-style log (an 11-term
// polynomial, a range split at sqrt(2) and the rounding error of 1 + e): fp32 4096x4096 took twice its
// memory time. Now, with e = exp(-|x|) in [0, 1] and s = e / (2 + e) in [0, 1/3]:
//   log1p(e) = 2 atanh(s) = 2s (1 + s^2/3 + s^4/5 + ...),
// which needs no range reduction: a degree-4 polynomial in s^2 fitted on [0, 1/9] is within 5e-9 of it.
// In terms of s2 = 2s = 2e / (2 + e), log1p(e) = s2 + s2 t R(t) with t = s2^2 and the fitted coefficients
// c_k divided by 4^k (exact), so tiny and subnormal e give s2 = e exactly, as log1p does.
// e itself is exp of a non-positive argument (or NaN) by a degree-6 polynomial (relative error 2e-8, where
// math_exp's degree 5 has 9e-8, as the loss at target 1 is as accurate as e). Measured against fp64
// through the loss at target 1 (tests/test_vector_log1p.py): 3.4 ulp of 2^-24 relative; 3.3 before.
// -inf and large |x| give e = 0 and 0; NaN stays NaN (max returns its second operand for NaN).
inline __m512 exp_non_positive(__m512 v) {
  const auto [n, r] = exp_reduce(v);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.38436002e-3f), r, _mm512_set1_ps(8.37414060e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16680016e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66664317e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.99999940e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// The backward's probabilities: exp_non_positive's degree-6 polynomial (it holds for any reduced argument; relative
// error 2e-8 where math_exp's degree 5 has 9e-8). Its arguments x - hi are at most a rounding above 0 (or NaN,
// or -inf), so math_exp's clamp at 89 is left out: as many instructions as math_exp.
inline Vec<float> math_exp_prob(Vec<float> v) { return exp_non_positive(v); }

inline Vec<float> math_log1p_exp_neg_abs(Vec<float> xv) {
  const __m512 e = exp_non_positive(_mm512_or_ps(xv, _mm512_set1_ps(-0.f)));  // -|x|
  const __m512 s2 = _mm512_div_ps(_mm512_add_ps(e, e), _mm512_add_ps(_mm512_set1_ps(2.f), e));
  const __m512 t = _mm512_mul_ps(s2, s2);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(1.40052065e-1f / 256), t, _mm512_set1_ps(1.40010491e-1f / 64));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(2.00107560e-1f / 16));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(3.33332092e-1f / 4));
  return _mm512_fmadd_ps(s2, _mm512_mul_ps(q, t), s2);
}
#endif
// rowmath.h's math_capped_tanh on float vectors: c * tanh(u) of soft-capped logits as LogitParts, with sx = s * x.
// The soft-capped kernels compute one per logit, of u = s x / c, which is small whenever the cap c is large
// against the logits (|u| < 0.01 at c = 3000). Two forms:
// - |u| < kTanhOddPolyBelow: head sx, q = v P(v), v = u^2 (capped_logit.h; see rowmath.h for why sx, not c u).
//   The form 1 - 2 / (1 + exp(2u)) used before is off by up to ulp(1) / 2 absolute near u = 0, which is millions
//   of ulp of a small tanh: at cap 3000 it made fp32 soft-capped losses and gradients 10 to 300 times as far
//   from fp64 as torch's c * tanh(x / c) (issue 27).
// - elsewhere head c (1 - 2 / (1 + exp(2|u|))), with u's sign, and q = 0: there tanh >= 0.55, so the rounding
//   near 1 is at most an ulp or two of the result. +-inf and large |u| give +-c exactly (exp overflows to inf, or the clamped
//   AVX-512 exp gives 2 / (1 + e) below half an ulp of 1).
// A vector whose lanes are all small skips the exp (the whole row, for large caps), so the polynomial costs
// nothing there: at::vec's tanh made a 2048x32000 fp32 forward+backward 2.5x as slow as without the cap.
// NaN stays NaN (it fails the comparison, so it takes the polynomial, which carries it).
inline LogitParts<Vec<float>> math_capped_tanh(Vec<float> u, Vec<float> sx, Vec<float> c) {
  const Vec<float> one(1.f), two(2.f);
  const Vec<float> a = u.abs();
  const Vec<float> v = u * u;
  Vec<float> p = at::vec::fmadd(v, Vec<float>(kTanhP4), Vec<float>(kTanhP3));
  p = at::vec::fmadd(p, v, Vec<float>(kTanhP2));
  p = at::vec::fmadd(p, v, Vec<float>(kTanhP1));
  p = at::vec::fmadd(p, v, Vec<float>(kTanhP0));
  const Vec<float> q = v * p;
  const Vec<float> large_lanes = a >= Vec<float>(kTanhOddPolyBelow);
  constexpr int kNoLanes = (1 << Vec<float>::size()) - 1;
  if (large_lanes.zero_mask() == kNoLanes) return {sx, q};
#if defined(CPU_CAPABILITY_AVX512)
  const Vec<float> t = c * (one - two / (one + math_exp(a + a)));
#else
  const Vec<float> t = c * (one - two / (one + (a + a).exp()));
#endif
  const Vec<float> signed_t = Vec<float>::blendv(t, Vec<float>(0.f) - t, u < Vec<float>(0.f));
  return {Vec<float>::blendv(sx, signed_t, large_lanes), Vec<float>::blendv(q, Vec<float>(0.f), large_lanes)};
}
inline LogitParts<Vec<double>> math_capped_tanh(Vec<double> u, Vec<double>, Vec<double> c) {
  return {c * u.tanh(), Vec<double>(0.)};
}
template <typename T>
inline Vec<T> math_fma(Vec<T> a, Vec<T> b, Vec<T> c) { return at::vec::fmadd(a, b, c); }
// rowmath.h's math_quotient_step on vectors. The remainder x - q c must be exact, so it needs a fused
// multiply-add: at::vec's fmadd is one under AVX2 and AVX-512; the default build's is a * b + c, so it
// takes std::fma lane by lane there.
template <typename T>
inline Vec<T> math_quotient_step(Vec<T> q, Vec<T> x, Vec<T> c, Vec<T> r) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  const Vec<T> rem = at::vec::fmadd(Vec<T>(T(0)) - q, c, x);
  return Vec<T>::blendv(at::vec::fmadd(rem, r, q), q, rem != rem);
#else
  T qs[Vec<T>::size()], xs[Vec<T>::size()];
  q.store(qs);
  x.store(xs);
  const T cs = c[0], rs = r[0];
  for (int l = 0; l < Vec<T>::size(); ++l) {
    const T rem = std::fma(-qs[l], cs, xs[l]);
    qs[l] = rem == rem ? std::fma(rem, rs, qs[l]) : qs[l];
  }
  return Vec<T>::loadu(qs);
#endif
}
template <typename T>
inline Vec<T> math_relu(Vec<T> x) { return at::vec::clamp_min(x, Vec<T>(T(0))); }
// at::vec::maximum propagates NaN, like the scalar math_nan_max.
template <typename T>
inline Vec<T> math_nan_max(Vec<T> a, Vec<T> b) { return at::vec::maximum(a, b); }
// The running max of the online log-sum-exp: max(m, x), except that a NaN in x is ignored (a NaN in m stays).
// A NaN logit still makes the row NaN, through the sum of exps that every logit enters; the max only
// picks the exp shift. One vmaxps (which returns its second operand when either is NaN), where
// math_nan_max's propagation takes three instructions (bf16 4096x32000 forward: 11.1 -> 9.0 ms, measured here).
template <typename T>
inline Vec<T> math_running_max(Vec<T> m, Vec<T> x) { return Vec<T>::blendv(m, x, x > m); }
#if defined(CPU_CAPABILITY_AVX512)
inline Vec<float> math_running_max(Vec<float> m, Vec<float> x) { return _mm512_max_ps(x, m); }
inline Vec<double> math_running_max(Vec<double> m, Vec<double> x) { return _mm512_max_pd(x, m); }
#elif defined(CPU_CAPABILITY_AVX2)
inline Vec<float> math_running_max(Vec<float> m, Vec<float> x) { return _mm256_max_ps(x, m); }
inline Vec<double> math_running_max(Vec<double> m, Vec<double> x) { return _mm256_max_pd(x, m); }
#endif
template <typename T>
inline Vec<T> lse_shift(Vec<T> m) {
  return Vec<T>::blendv(m, Vec<T>(T(0)), m == Vec<T>(-std::numeric_limits<T>::infinity()));
}

}  // namespace fused_ce
