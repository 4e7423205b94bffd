// What the scalar (rowmath.h) and the CPU vector (cpu/vec_math.h) forms of a soft-capped logit share: the
// odd polynomial of fused_ce's fp32 tanh for small arguments,
//   tanh(u) = u + u * v * P(v),  v = u^2,  for |u| < kTanhOddPolyBelow,
// P of degree 4 fitted for the least relative error of tanh on [0, 0.625] (0.71 ulp at most in fp32 arithmetic
// with FMAs, measured against fp64 on 2M points; torch's own vectorised tanh: 0.50; above the bound tanh is at
// least 0.55, where 1 - 2 / (1 + exp(2|u|)) rounds within an ulp or two of it), and the unrounded form of a
// soft-capped logit, LogitParts.
#pragma once

namespace fused_ce {

constexpr float kTanhOddPolyBelow = 0.625f;
// P(v) = kTanhP0 + kTanhP1 v + ... + kTanhP4 v^4
constexpr float kTanhP0 = -3.33332807e-1f;
constexpr float kTanhP1 = 1.33314416e-1f;
constexpr float kTanhP2 = -5.37397154e-2f;
constexpr float kTanhP3 = 2.06390899e-2f;
constexpr float kTanhP4 = -5.70498872e-3f;

// A soft-capped logit z = head * (1 + q), not rounded to one number: the kernels round it (rowmath.h,
// logit_value) where they need z, but a loss (lse - z) and a log-probability (z - lse) are formed from the
// parts, so that they carry no rounding of z. A capped z near 8 is off by up to ulp(z) / 2 = 4.8e-7 once
// rounded, and that is the relative error of its probability: fp32 gradients hung on how each large
// probability's logit happened to round (issue 27). q is 0 for large capped logits (and for uncapped ones, where
// the loss takes them as parts too).
template <typename T>
struct LogitParts {
  T head;
  T q;
};

}  // namespace fused_ce
