// Per-row math of fused_ce, written once for the CPU and the CUDA kernels.
//
// Every function here is an inline host/device function on the accumulation type (float for
// fp32/fp16/bf16 inputs, double for fp64), so the CUDA kernels run exactly the formulas that the CPU
// tests check. Kernels only decide how rows are split and loaded; what a row's loss and gradient are
// is decided here.
#pragma once

#include <cmath>
#include <cstdint>

#include "capped_logit.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_CE_HD __host__ __device__ __forceinline__
#else
#define FUSED_CE_HD inline
#endif

namespace fused_ce {

// The accumulation type: float for fp32/fp16/bf16 inputs, double for fp64.
template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Same numbering as at::Reduction, so Python passes torch's enum value through unchanged.
enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// Scalar math for float and double; the CPU kernels declare the same names for at::vec vectors before
// including this header, so the templates below serve scalars (CUDA, CPU tails) and vectors alike.
FUSED_CE_HD float math_exp(float x) { return expf(x); }
FUSED_CE_HD double math_exp(double x) { return exp(x); }
// The exp of a backward's probabilities, exp(x - lse): each is one entry of the gradient, so its error is the
// entry's own (no sum averages it), and the CPU's fast vector exps (up to 3 and 20 ulp) made fp32 gradients
// further from fp64 than torch's softmax (issue 27). Scalars take the C library's, vectors their most accurate.
FUSED_CE_HD float math_exp_prob(float x) { return expf(x); }
FUSED_CE_HD double math_exp_prob(double x) { return exp(x); }
FUSED_CE_HD float math_fma(float a, float b, float c) { return fmaf(a, b, c); }
FUSED_CE_HD double math_fma(double a, double b, double c) { return fma(a, b, c); }
FUSED_CE_HD float math_log(float x) { return logf(x); }
FUSED_CE_HD double math_log(double x) { return log(x); }
// log1p(exp(-|x|)), what softplus adds to relu (softplus(z) = max(z, 0) + log1p(exp(-|z|))), the one
// transcendental term of the BCE formulas; the CPU's AVX-512 vector form is its own (vec_math.h).
FUSED_CE_HD float math_log1p_exp_neg_abs(float x) { return log1pf(expf(0.f - fabsf(x))); }
FUSED_CE_HD double math_log1p_exp_neg_abs(double x) { return log1p(exp(0. - fabs(x))); }
// c * tanh(u) of a soft-capped logit, given sx = s * x, of which u = s x / c is the rounded quotient
// (capped_argument). For |u| < kTanhOddPolyBelow (capped_logit.h), c tanh(u) = c u (1 + v P(v)) with v = u^2, and
// c u is s x but for u's rounding: so the parts are head sx and q = v P(v), in which neither the tanh's rounding
// nor the product by c touches the leading term (torch's composite rounds x / c, the tanh and the product).
// NaN fails the comparison and takes tanhf, which carries it; +-inf gives +-c.
FUSED_CE_HD LogitParts<float> math_capped_tanh(float u, float sx, float c) {
  if (!(fabsf(u) < kTanhOddPolyBelow)) return {c * tanhf(u), 0.f};
  const float v = u * u;
  float p = fmaf(v, kTanhP4, kTanhP3);
  p = fmaf(p, v, kTanhP2);
  p = fmaf(p, v, kTanhP1);
  p = fmaf(p, v, kTanhP0);
  return {sx, v * p};
}
FUSED_CE_HD LogitParts<double> math_capped_tanh(double u, double, double c) { return {c * tanh(u), 0.}; }
// q + (x - q c) r: with q = x * r and r = fl(1 / c), the quotient x / c rounded to nearest (but in rare ties),
// as a division gives it; x - q c is exact in one FMA. Where x is infinite that remainder is NaN and q stays.
FUSED_CE_HD float math_quotient_step(float q, float x, float c, float r) {
  const float rem = fmaf(-q, c, x);
  return rem == rem ? fmaf(rem, r, q) : q;
}
FUSED_CE_HD double math_quotient_step(double q, double x, double c, double r) {
  const double rem = fma(-q, c, x);
  return rem == rem ? fma(rem, r, q) : q;
}
// max(x, 0)
FUSED_CE_HD float math_relu(float x) { return x > 0.f ? x : 0.f; }
FUSED_CE_HD double math_relu(double x) { return x > 0. ? x : 0.; }
// max that returns NaN when either side is NaN, so a NaN logit poisons its row as in PyTorch.
FUSED_CE_HD float math_nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
FUSED_CE_HD double math_nan_max(double a, double b) { return (a > b || a != a) ? a : b; }
// The exp shift for a running max: 0 while everything seen is -inf, so exp(-inf - shift) is 0, not NaN.
FUSED_CE_HD float lse_shift(float m) { return m == -INFINITY ? 0.f : m; }
FUSED_CE_HD double lse_shift(double m) { return m == -INFINITY ? 0. : m; }

template <typename acc_t>
FUSED_CE_HD acc_t neg_inf() {
  return -static_cast<acc_t>(INFINITY);
}

// ---------------------------------------------------------------------------------------------
// Online log-sum-exp: a running max and the sum of exp(x - max), mergeable in any fixed order.
// T is a scalar, or a vector whose lanes are independent states.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct LseState {
  T max;
  T sum;  // sum of exp(x - lse_shift(max)); 0 while every value seen is -inf
};

template <typename acc_t>
FUSED_CE_HD LseState<acc_t> lse_empty() {
  return {neg_inf<acc_t>(), acc_t(0)};
}

// The same state expressed against a larger (or NaN) max. Its exp scales sums that may hold most of a row, so it
// is the accurate one (math_exp_prob); it runs once per block or merge, not per logit.
template <typename T>
FUSED_CE_HD LseState<T> lse_rescale(LseState<T> s, T new_max) {
  return {new_max, s.sum * math_exp_prob(s.max - lse_shift(new_max))};
}

template <typename T>
FUSED_CE_HD LseState<T> lse_merge(LseState<T> a, LseState<T> b) {
  const T m = math_nan_max(a.max, b.max);
  const LseState<T> a2 = lse_rescale(a, m);
  const LseState<T> b2 = lse_rescale(b, m);
  return {m, a2.sum + b2.sum};
}

template <typename acc_t>
FUSED_CE_HD LseState<acc_t> lse_push(LseState<acc_t> s, acc_t x) {
  return lse_merge(s, LseState<acc_t>{x, acc_t(1)});
}

// A row's log-sum-exp in its two parts, lse = shift + log(sum) (shift: lse_shift(max)). A loss needs lse - x,
// which lse_minus forms from the parts: rounding lse first would add up to ulp(lse) / 2 to every row's loss,
// large against a confident row's small loss (fp32, randn(256, 1024) * 2, reduction 'none': 1.2e-7 from
// fp64 where torch's log_softmax, which rounds (x - max) - log(sum), is 6.6e-8; issue 27).
template <typename T>
struct LseParts {
  T shift;
  T log_sum;
};

template <typename T>
FUSED_CE_HD LseParts<T> lse_parts(LseState<T> s) {
  return {lse_shift(s.max), math_log(s.sum)};
}

// log(sum(exp(x))): -inf for an all -inf row, NaN when a NaN (or a +inf) was seen.
template <typename T>
FUSED_CE_HD T lse_value(LseParts<T> p) {
  return p.shift + p.log_sum;
}

template <typename T>
FUSED_CE_HD T lse_value(LseState<T> s) {
  return lse_value(lse_parts(s));
}

// lse - x (see LseParts), formed in double and rounded once: only log(sum)'s own rounding remains, which is
// small when the row's probabilities are not spread thin (fp32 per-row losses then closer to fp64 than torch's).
template <typename T>
FUSED_CE_HD T lse_minus(LseParts<T> p, T x) {
  return static_cast<T>((static_cast<double>(p.shift) - static_cast<double>(x)) + static_cast<double>(p.log_sum));
}

// The lse a forward saves for its backward: shift + log(sum) in double, whatever the input dtype. The
// backward's probabilities are exp(x - lse), and an fp32 lse puts up to ulp(lse) / 2 into every one of them
// (2.4e-7 relative at lse near 5), where torch's log_softmax, (x - max) - log(sum), carries only the rounding of
// log(sum), small in the confident rows whose large probabilities dominate a gradient: fp32 gradients were
// twice as far from fp64 as torch's (issue 27). The user sees lse in the accumulation type (lse_value).
template <typename T>
FUSED_CE_HD double lse_saved(LseParts<T> p) {
  return static_cast<double>(p.shift) + static_cast<double>(p.log_sum);
}

// The saved lse as hi + lo in the accumulation type (lo 0 for double, and where lse is not finite, so that such
// rows keep what hi gives them). p = exp(x - hi) * exp(-lo): x - hi (log_prob) is exact where the probability is
// large (x near hi), and exp(-lo) joins each row's coefficient of p (lse_lo_factor), so a logit costs one
// subtraction as with an unsplit lse.
template <typename T>
struct LseSplit {
  T hi;
  T lo;
};

template <typename acc_t>
FUSED_CE_HD LseSplit<acc_t> split_lse(double lse) {
  const acc_t hi = static_cast<acc_t>(lse);
  const double rest = lse - static_cast<double>(hi);
  return {hi, rest - rest == 0.0 ? static_cast<acc_t>(rest) : acc_t(0)};
}

// An lse held only in the accumulation type (the vocabulary-parallel statistics), as a split.
template <typename acc_t>
FUSED_CE_HD LseSplit<acc_t> whole_lse(acc_t lse) {
  return {lse, acc_t(0)};
}

// exp(-lo), by which exp(x - hi) exceeds p; the kernels multiply each row's coefficient of p by it. lo is at most
// half an ulp of hi, so 1 - lo is exp(-lo) to within lo^2 / 2 (an exp per row cost 40 % of a 21-class
// positions backward).
template <typename acc_t>
FUSED_CE_HD acc_t lse_lo_factor(LseSplit<acc_t> lse) {
  return static_cast<acc_t>(1.0 - static_cast<double>(lse.lo));
}

// log p + lo = x - hi; T may be a vector, with the split's parts broadcast.
template <typename T>
FUSED_CE_HD T log_prob(T x, LseSplit<T> lse) {
  return x - lse.hi;
}

// The same of a soft-capped logit's parts, head q + (head - hi): head - hi is exact where the probability is
// large (x near hi), and head q is small, so one rounding there.
template <typename T>
FUSED_CE_HD T log_prob(LogitParts<T> z, LseSplit<T> lse) {
  return math_fma(z.head, z.q, z.head - lse.hi);
}

// lse - z of the parts, as lse_minus (q == 0 also stands for infinite heads, where head * q would be NaN).
template <typename T>
FUSED_CE_HD T lse_minus(LseParts<T> p, LogitParts<T> z) {
  const double head = static_cast<double>(z.head);
  const double zq = z.q == T(0) ? 0.0 : head * static_cast<double>(z.q);
  return static_cast<T>(((static_cast<double>(p.shift) - head) - zq) + static_cast<double>(p.log_sum));
}

// Terms per block of a blocked sum (the CPU kernels' BlockedSum, the CUDA kernels' BlockedRowStats). A
// plain running sum of n terms has a rounding error that grows with n, and with n similar terms (uniform
// label smoothing or near-uniform soft targets over thousands of classes) it does not average out: a
// (1, 2300, 2) soft-target loss with smoothing 1.0 was 2.7e-5 off in relative terms. Summed in blocks,
// the error grows with kBlockedSumTerms + n / kBlockedSumTerms.
constexpr int kBlockedSumTerms = 64;

// Reference value for the running sums of x: sum(w * (x - ref)) stays well conditioned for logits far
// from zero. Any finite value of the row works; a non-finite one falls back to 0.
template <typename acc_t>
FUSED_CE_HD acc_t sum_reference(acc_t first_logit) {
  return (first_logit - first_logit == acc_t(0)) ? first_logit : acc_t(0);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy with class-index targets, label smoothing eps and class weights w (w == 1 unweighted):
//   loss_i = (1-eps) * w[y] * (lse - x[y]) + (eps/C) * sum_c w[c] * (lse - x[c])
// and for the gradient, with p = softmax(x) and g the upstream gradient of row i,
//   dx[c] = g * ( p[c] * ((1-eps) w[y] + (eps/C) W)  -  [c == y] (1-eps) w[y]  -  (eps/C) w[c] ),
// W = sum_c w[c]. Ignored rows have loss 0 and gradient 0.
// ---------------------------------------------------------------------------------------------
template <typename acc_t>
struct SmoothingParams {
  acc_t eps;            // label smoothing; values below 0 act as 0, as in PyTorch
  acc_t eps_per_class;  // eps / C
  acc_t weight_sum;     // W: sum of class weights, C when unweighted
  bool enabled;         // eps > 0; when false the smoothing sums are never formed (-inf * 0 would be NaN)
};

template <typename acc_t>
FUSED_CE_HD SmoothingParams<acc_t> make_smoothing(double eps, int64_t num_classes, acc_t weight_sum) {
  const acc_t e = eps > 0 ? static_cast<acc_t>(eps) : acc_t(0);
  return {e, num_classes > 0 ? e / static_cast<acc_t>(num_classes) : acc_t(0), weight_sum, eps > 0};
}

// sum_wx_ref = sum_c w[c] * (x[c] - ref), see sum_reference. The target's logit is a value or LogitParts.
template <typename acc_t, typename Z>
FUSED_CE_HD acc_t ce_hard_row_loss(
    LseParts<acc_t> lse, Z x_target, acc_t w_target, acc_t sum_wx_ref, acc_t ref,
    const SmoothingParams<acc_t>& sp) {
  acc_t loss = (acc_t(1) - sp.eps) * w_target * lse_minus(lse, x_target);
  if (sp.enabled) {
    loss += sp.eps_per_class * (sp.weight_sum * lse_minus(lse, ref) - sum_wx_ref);
  }
  return loss;
}

template <typename acc_t>
struct CeHardGradCoefs {
  acc_t prob;    // multiplies p[c]
  acc_t target;  // subtracted at c == y
  acc_t klass;   // times w[c], subtracted everywhere (smoothing only)
};

template <typename acc_t>
FUSED_CE_HD CeHardGradCoefs<acc_t> ce_hard_grad_coefs(
    acc_t g, acc_t w_target, const SmoothingParams<acc_t>& sp) {
  const acc_t on_target = (acc_t(1) - sp.eps) * w_target;
  const acc_t prob = sp.enabled ? on_target + sp.eps_per_class * sp.weight_sum : on_target;
  return {g * prob, g * on_target, sp.enabled ? g * sp.eps_per_class : acc_t(0)};
}

// dx[c] for c != y; T may be a vector of classes (or of rows) sharing the coefficients, x (Z) a value of T or
// LogitParts of it. coef_prob holds the row's lse_lo_factor (see LseSplit).
template <typename T, typename Z>
FUSED_CE_HD T ce_hard_grad_off_target(Z x, LseSplit<T> lse, T w_c, T coef_prob, T coef_klass) {
  return math_exp_prob(log_prob(x, lse)) * coef_prob - coef_klass * w_c;
}

template <typename acc_t, typename Z>
FUSED_CE_HD acc_t ce_hard_grad_on_target(Z x, LseSplit<acc_t> lse, acc_t w_c, const CeHardGradCoefs<acc_t>& k) {
  return ce_hard_grad_off_target(x, lse, w_c, k.prob, k.klass) - k.target;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy with class-probability targets t; smoothing makes t' = (1-eps) t + eps/C:
//   loss_i = sum_c w[c] t'[c] (lse - x[c]) = lse * sum(w t') - sum(w t' x)
//   dx[c]  = g * (p[c] * sum(w t') - w[c] t'[c])
//   dt[c]  = g * (1-eps) * w[c] * (lse - x[c])
// ---------------------------------------------------------------------------------------------
template <typename T, typename acc_t>
FUSED_CE_HD T smoothed_target(T t, const SmoothingParams<acc_t>& sp) {
  return sp.enabled ? t * T(acc_t(1) - sp.eps) + T(sp.eps_per_class) : t;
}

// sum_wt = sum w t', sum_wtx_ref = sum w t' (x - ref)
template <typename acc_t>
FUSED_CE_HD acc_t ce_soft_row_loss(LseParts<acc_t> lse, acc_t sum_wt, acc_t sum_wtx_ref, acc_t ref) {
  return sum_wt * lse_minus(lse, ref) - sum_wtx_ref;
}

// g_sum_wt = g * sum(w t') * lse_lo_factor (see LseSplit), wt_c = w[c] t'[c]
template <typename T>
FUSED_CE_HD T ce_soft_grad(T x, LseSplit<T> lse, T wt_c, T g_sum_wt, T g) {
  return math_exp_prob(log_prob(x, lse)) * g_sum_wt - g * wt_c;
}

// g_keep = g * (1 - eps)
template <typename T>
FUSED_CE_HD T ce_soft_target_grad(T x, LseSplit<T> lse, T w_c, T g_keep) {
  return g_keep * w_c * ((lse.hi - x) + lse.lo);
}

// ---------------------------------------------------------------------------------------------
// Language-model options of class-index cross-entropy. The loss is computed on transformed logits
//   z = s * x,  or with soft-capping c > 0:  z = c * tanh(s * x / c)
// (s = logit_scale; Gemma's final-logit soft-capping), so lse, the loss and the smoothing sums above
// all read z instead of x. The z-loss (PaLM) adds lse_square_scale * lse(z)^2 for every row that is not
// ignored; it is reduced like the loss, except that its mean divides by the number of counted rows.
// Backward: with p = softmax(z) and g_z the z-loss's upstream gradient of the row,
//   d(z_loss)/dz[c] = g_z * 2 * lse_square_scale * lse * p[c],
// which only adds to the coefficient of p[c] in the cross-entropy gradient; the gradient for x is the
// one for z times dz/dx = s (no cap) or s * (1 - tanh^2) = s * (1 - (z/c)^2).
// ---------------------------------------------------------------------------------------------
template <typename acc_t>
struct LogitTransform {
  acc_t scale;            // s
  acc_t cap;              // c
  acc_t scale_over_cap;   // s / c
  acc_t inv_cap;          // 1 / c
  bool capped;            // c > 0
  bool active;            // s != 1 or capped: otherwise z == x and the kernels skip the transform
};

template <typename acc_t>
FUSED_CE_HD LogitTransform<acc_t> make_logit_transform(double logit_scale, double softcap) {
  const bool capped = softcap > 0;
  return {static_cast<acc_t>(logit_scale), capped ? static_cast<acc_t>(softcap) : acc_t(0),
          capped ? static_cast<acc_t>(logit_scale / softcap) : acc_t(0),
          capped ? static_cast<acc_t>(1.0 / softcap) : acc_t(0), capped, capped || logit_scale != 1.0};
}

// The tanh's argument s * x / c. With s == 1 (soft-capping alone, as Gemma 2 uses it) it is x / c rounded as
// torch's own x / cap rounds it, not x times a rounded 1 / c: one more rounding per logit made fp32 capped
// losses measurably less accurate than torch's composite (issue 27).
template <typename T, typename acc_t>
FUSED_CE_HD T capped_argument(T x, const LogitTransform<acc_t>& tf) {
  const T u = x * T(tf.scale_over_cap);
  return tf.scale == acc_t(1) ? math_quotient_step(u, x, T(tf.cap), T(tf.inv_cap)) : u;
}

// A soft-capped z's parts (LogitParts) from x (tf.capped); T is the accumulation type or a vector of it.
template <typename T, typename acc_t>
FUSED_CE_HD LogitParts<T> capped_parts(T x, const LogitTransform<acc_t>& tf) {
  const T sx = tf.scale == acc_t(1) ? x : x * T(tf.scale);
  return math_capped_tanh(capped_argument(x, tf), sx, T(tf.cap));
}

// z of its parts, rounded once.
template <typename T>
FUSED_CE_HD T logit_value(LogitParts<T> z) {
  return math_fma(z.head, z.q, z.head);
}

// z from x.
template <typename T, typename acc_t>
FUSED_CE_HD T transform_logit(T x, const LogitTransform<acc_t>& tf) {
  return tf.capped ? logit_value(capped_parts(x, tf)) : x * T(tf.scale);
}

// z from x as parts, capped or not (an uncapped z is its head, with q 0), for a row's loss.
template <typename acc_t>
FUSED_CE_HD LogitParts<acc_t> transform_to_parts(acc_t x, const LogitTransform<acc_t>& tf) {
  return tf.capped ? capped_parts(x, tf) : LogitParts<acc_t>{x * tf.scale, acc_t(0)};
}

// The gradient for x from the one for z, d: d * dz/dx, with dz/dx from z itself (so the backward needs no
// second tanh). Capped, d s (1 - t^2) with t = z / c is formed as d' - (d' t) t (d' = d s): the terms in t^2 are
// small where the slope is not, so that is one rounding, where rounding 1 - t^2 first and then the product was
// two, and left fp32 capped gradients further from fp64 than torch's composite (issue 27).
template <typename T, typename acc_t>
FUSED_CE_HD T chain_to_x(T d, T z, const LogitTransform<acc_t>& tf) {
  const T ds = tf.scale == acc_t(1) ? d : d * T(tf.scale);
  if (!tf.capped) return ds;
  const T t = z * T(tf.inv_cap);
  return ds - (ds * t) * t;
}

// The gradient for x of one logit x (or vector of them) under the transform: dz(z) is the gradient for z given z
// (a capped z as LogitParts, so that log p carries no rounding of z), times dz/dx.
template <typename T, typename acc_t, typename DzOfZ>
FUSED_CE_HD T grad_for_x(T x, const LogitTransform<acc_t>& tf, DzOfZ&& dz) {
  if (tf.capped) {
    const LogitParts<T> parts = capped_parts(x, tf);
    return chain_to_x(dz(parts), logit_value(parts), tf);
  }
  const T z = x * T(tf.scale);
  return chain_to_x(dz(z), z, tf);
}

// The z-loss of a counted row.
template <typename acc_t>
FUSED_CE_HD acc_t z_loss_row(acc_t lse, acc_t lse_square_scale) {
  return lse_square_scale * lse * lse;
}

// What the z-loss adds to the coefficient of p[c] in the row's gradient (g_z: its upstream gradient).
template <typename acc_t>
FUSED_CE_HD acc_t z_loss_prob_coef(acc_t g_z, acc_t lse, acc_t lse_square_scale) {
  return acc_t(2) * g_z * lse_square_scale * lse;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy: each rank holds the consecutive classes [offset, offset + C) of
// every row and reduces them to per-row partial statistics, which two all-reduces (MAX of the max, then
// SUM of the rest) combine into the full row's (python_pkg/fused_ce/parallel.py):
//   max, sum (of exp(x - lse_shift(max))), x[y] and w[y] (0 unless y is in the slice and not ignored),
//   D = sum_c w[c] (lse_shift(max) - x[c]) and W = sum_c w[c] (both 0 without smoothing).
// D is taken against the slice's own max, not against 0, so that it stays well conditioned for logits far
// from zero; against the global max M it is D + W (M - lse_shift(max)), an O(1) shift per row.
// ---------------------------------------------------------------------------------------------
enum PartialStat : int64_t {
  kPartialMax = 0,
  kPartialSumExp,
  kPartialTargetLogit,
  kPartialTargetWeight,
  kPartialSmoothing,
  kPartialWeightSum,
  kPartialStatCount
};

// Whether class index y is one of this slice's classes (and not ignored).
FUSED_CE_HD bool target_in_slice(int64_t y, int64_t ignore_index, int64_t offset, int64_t C) {
  return y != ignore_index && y >= offset && y - offset < C;
}

// D from the scan's sum_wx_ref = sum_c w[c] (x[c] - ref) (see sum_reference) and W.
template <typename acc_t>
FUSED_CE_HD acc_t partial_smoothing_sum(acc_t sum_wx_ref, acc_t weight_sum, acc_t ref, acc_t max) {
  return weight_sum * (lse_shift(max) - ref) - sum_wx_ref;
}

// ---------------------------------------------------------------------------------------------
// Binary cross-entropy with logits, pos_weight pw and weight w (PyTorch's formulation):
//   loss = w * ((1 - y) x + (1 + (pw - 1) y) softplus(-x)),  softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
//   dx   = w * ((1 + (pw - 1) y) sigmoid(x) - pw y)
//   dy   = w * ((pw - 1) softplus(-x) - x)
// Without pos_weight pw == 1. Computed in this form so that |x| = 100 stays finite.
// ---------------------------------------------------------------------------------------------
template <typename T>
FUSED_CE_HD T softplus_neg(T x) {
  return math_relu(T(0) - x) + math_log1p_exp_neg_abs(x);
}

template <typename T>
FUSED_CE_HD T sigmoid(T x) {
  return T(1) / (T(1) + math_exp(T(0) - x));
}

template <typename T>
FUSED_CE_HD T bce_loss(T x, T y, T w, T pw) {
  const T log_weight = T(1) + (pw - T(1)) * y;
  return w * ((T(1) - y) * x + log_weight * softplus_neg(x));
}

template <typename T>
FUSED_CE_HD T bce_grad_input(T x, T y, T w, T pw) {
  const T log_weight = T(1) + (pw - T(1)) * y;
  return w * (log_weight * sigmoid(x) - pw * y);
}

// (pw - 1) softplus(-x) - x, split by the sign of x so that no inf - inf or 0 * inf appears at x = +-inf
// (torch gives +inf at x = -inf and -inf at x = +inf), and pw == 1 gives exactly -x as torch does.
template <typename T>
FUSED_CE_HD T bce_grad_target(T x, T w, T pw) {
  return w * ((pw - T(1)) * math_log1p_exp_neg_abs(x) - math_relu(x) + pw * math_relu(T(0) - x));
}

// Without weight and pos_weight (w = pw = 1) the loss and input gradient above are these, torch's own formulas
// for that case; the CPU kernels use them there, four vector operations per element fewer.
template <typename T>
FUSED_CE_HD T bce_loss_unweighted(T x, T y) {
  return (T(1) - y) * x + softplus_neg(x);
}

template <typename T>
FUSED_CE_HD T bce_grad_input_unweighted(T x, T y) {
  return sigmoid(x) - y;
}

}  // namespace fused_ce
