// CPU impls of the vocabulary-parallel cross-entropy's slice ops (schemas in partial_stats_schema.h, math in
// rowmath.h). A scalar loop per row: the scan takes a block of kBlockedSumTerms classes, finds its max, then
// sums the exponentials (and, with smoothing, the weighted logits) over the same block while it is in L1,
// so each logit is read from memory once; with the language-model options the block's transformed logits
// are kept in a small buffer, so each tanh is computed once. Rows are spread over threads; a row's sums
// always run in the same order, so the results are bitwise identical at any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/grain.h"
#include "dtype_dispatch.h"
#include "partial_stats_schema.h"

namespace fused_ce::cpu {
namespace {

int64_t target_at(const PartialStatsArgs& a, int64_t r) {
  return a.target_is_byte ? static_cast<const uint8_t*>(a.target)[r] : static_cast<const int64_t*>(a.target)[r];
}

template <typename scalar_t, typename acc_t = typename AccOf<scalar_t>::type>
acc_t weight_at(const scalar_t* w, int64_t c) {
  return w ? static_cast<acc_t>(w[c]) : acc_t(1);
}

// Runs f(r, x_row) for every row r, rows spread over threads: x_row points at class 0 of row r, classes S apart.
template <typename scalar_t, typename F>
void parallel_rows(const LogitsView& v, F&& f) {
  const auto* x = static_cast<const scalar_t*>(v.data);
  at::parallel_for(0, v.N * v.S, grain_units(v.C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / v.S, s = r - n * v.S;
      f(r, x + n * v.stride_n + s);
    }
  });
}

// The logit as the formulas read it: z = f(x) with the language-model options (kTransform), else x.
template <bool kTransform, typename scalar_t, typename acc_t>
acc_t slice_logit(scalar_t x, const LogitTransform<acc_t>& tf) {
  if constexpr (kTransform) {
    return transform_logit(static_cast<acc_t>(x), tf);
  } else {
    return static_cast<acc_t>(x);
  }
}

template <typename scalar_t, bool kSmooth, bool kTransform>
void partial_stats_kernel(const PartialStatsArgs& a, typename AccOf<scalar_t>::type* out) {
  using acc_t = typename AccOf<scalar_t>::type;
  const LogitsView& v = a.logits;
  const int64_t C = v.C, S = v.S, rows = v.N * v.S;
  const auto* w = static_cast<const scalar_t*>(a.weight);
  const auto tf = make_logit_transform<acc_t>(a.logit_scale, a.softcap);
  parallel_rows<scalar_t>(v, [&](int64_t r, const scalar_t* x) {
    const acc_t ref = kSmooth ? sum_reference(slice_logit<kTransform>(x[0], tf)) : acc_t(0);
    LseState<acc_t> st = lse_empty<acc_t>();
    acc_t swz = 0, ws = 0;  // sum w (z - ref) and sum w, added up block by block
    acc_t z[kBlockedSumTerms];
    for (int64_t c0 = 0; c0 < C; c0 += kBlockedSumTerms) {
      const int64_t c1 = std::min(C, c0 + kBlockedSumTerms);
      acc_t m = st.max;
      for (int64_t c = c0; c < c1; ++c) {
        z[c - c0] = slice_logit<kTransform>(x[c * S], tf);
        m = math_nan_max(m, z[c - c0]);
      }
      st = lse_rescale(st, m);
      const acc_t shift = lse_shift(m);
      acc_t sum = st.sum, block_swz = 0, block_ws = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t zc = z[c - c0];
        sum += math_exp(zc - shift);
        if constexpr (kSmooth) {
          const acc_t wc = weight_at(w, c);
          block_swz += wc * (zc - ref);
          block_ws += wc;
        }
      }
      st.sum = sum;
      swz += block_swz;
      ws += block_ws;
    }
    const int64_t y = target_at(a, r);
    const bool on = target_in_slice(y, a.ignore_index, a.class_offset, C);
    out[kPartialMax * rows + r] = st.max;
    out[kPartialSumExp * rows + r] = st.sum;
    out[kPartialTargetLogit * rows + r] = on ? slice_logit<kTransform>(x[(y - a.class_offset) * S], tf) : acc_t(0);
    out[kPartialTargetWeight * rows + r] = on ? weight_at(w, y - a.class_offset) : acc_t(0);
    out[kPartialSmoothing * rows + r] = kSmooth ? partial_smoothing_sum(swz, ws, ref, st.max) : acc_t(0);
    out[kPartialWeightSum * rows + r] = ws;
  });
}

// The gradient for z (ce_hard_grad_*), times dz/dx with the language-model options.
template <typename scalar_t, bool kTransform>
void partial_grad_kernel(const PartialStatsArgs& a, const typename AccOf<scalar_t>::type* coefs, scalar_t* grad) {
  using acc_t = typename AccOf<scalar_t>::type;
  const LogitsView& v = a.logits;
  const int64_t C = v.C, S = v.S, rows = v.N * v.S;
  const auto* w = static_cast<const scalar_t*>(a.weight);
  const auto tf = make_logit_transform<acc_t>(a.logit_scale, a.softcap);
  auto for_x = [&](acc_t d, acc_t z) {
    if constexpr (kTransform) {
      return chain_to_x(d, z, tf);
    } else {
      return d;
    }
  };
  parallel_rows<scalar_t>(v, [&](int64_t r, const scalar_t* x) {
    const int64_t n = r / S, s = r - n * S;
    scalar_t* out = grad + n * C * S + s;
    const int64_t y = target_at(a, r);
    if (y == a.ignore_index) {  // 0 whatever the row's logits hold: the formula gives 0 * inf = NaN for +-inf, NaN
      for (int64_t c = 0; c < C; ++c) out[c * S] = scalar_t(0);
      return;
    }
    const LseSplit<acc_t> lse = whole_lse(coefs[r]);
    const CeHardGradCoefs<acc_t> k{coefs[rows + r], coefs[2 * rows + r], coefs[3 * rows + r]};
    const bool load_weight = w != nullptr && k.klass != acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t w_c = load_weight ? static_cast<acc_t>(w[c]) : acc_t(1);
      const acc_t z = slice_logit<kTransform>(x[c * S], tf);
      out[c * S] = static_cast<scalar_t>(for_x(ce_hard_grad_off_target(z, lse, w_c, k.prob, k.klass), z));
    }
    if (target_in_slice(y, a.ignore_index, a.class_offset, C)) {
      const int64_t c = y - a.class_offset;
      const acc_t z = slice_logit<kTransform>(x[c * S], tf);
      out[c * S] = static_cast<scalar_t>(for_x(ce_hard_grad_on_target(z, lse, weight_at(w, c), k), z));
    }
  });
}

at::Tensor ce_partial_stats(const at::Tensor& logits, const at::Tensor& target,
                            const c10::optional<at::Tensor>& weight, int64_t class_offset, int64_t ignore_index,
                            bool smoothing, double logit_scale, double softcap) {
  const PartialStatsCall p =
      partial_stats_call(logits, target, weight, class_offset, ignore_index, logit_scale, softcap);
  at::Tensor out = at::empty(partial_rows_shape(logits, kPartialStatCount),
                             logits.options().dtype(lse_dtype(logits.scalar_type())));
  if (p.args.logits.C == 0) return classless_partial_stats(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "ce_partial_stats", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    bool_switch(make_logit_transform<double>(logit_scale, softcap).active, [&](auto transform) {
      if (smoothing) {
        partial_stats_kernel<scalar_t, true, transform()>(p.args, out.data_ptr<acc_t>());
      } else {
        partial_stats_kernel<scalar_t, false, transform()>(p.args, out.data_ptr<acc_t>());
      }
    });
  });
  return out;
}

at::Tensor ce_partial_grad(const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                           const at::Tensor& coefs_in, int64_t class_offset, int64_t ignore_index, double logit_scale,
                           double softcap) {
  const PartialStatsCall p =
      partial_stats_call(logits, target, weight, class_offset, ignore_index, logit_scale, softcap);
  check_partial_coefs(coefs_in, logits);
  const at::Tensor coefs = coefs_in.contiguous();
  at::Tensor grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "ce_partial_grad", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    bool_switch(make_logit_transform<double>(logit_scale, softcap).active, [&](auto transform) {
      partial_grad_kernel<scalar_t, transform()>(p.args, coefs.data_ptr<acc_t>(), grad.data_ptr<scalar_t>());
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_ce, CPU, m) {
  m.impl("ce_partial_stats", &ce_partial_stats);
  m.impl("ce_partial_grad", &ce_partial_grad);
}

}  // namespace fused_ce::cpu
