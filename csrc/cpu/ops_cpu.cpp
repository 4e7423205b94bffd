// CPU impls of the fused_ce ops: argument glue around the SIMD kernels of kernels_impl.h, plus the
// fixed-order reductions that turn per-row values into the mean or sum.
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/grain.h"
#include "cpu/kernel_table.h"
#include "cpu/large_buffers.h"
#include "mean_division.h"
#include "op_common.h"

namespace fused_ce::cpu {
namespace {

static_assert(kGrainSize == at::internal::GRAIN_SIZE, "cpu/grain.h must follow ATen's grain size");

// Sum of n values in an order that depends only on n (blocks of kBlock, then the block sums in
// order), accumulated in double: deterministic whatever the number of threads.
template <typename T>
double fixed_order_sum(const T* v, int64_t n) {
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, grain_units(kBlock), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double s = 0;
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += static_cast<double>(v[i]);
      partial[b] = s;
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

double sum_of(const at::Tensor& t) {  // contiguous float or double
  return t.scalar_type() == at::kDouble ? fixed_order_sum(t.data_ptr<double>(), t.numel())
                                        : fixed_order_sum(t.data_ptr<float>(), t.numel());
}

// Validates every class index (PyTorch's IndexError text) and returns the mean's denominator:
// the sum of w[y] over rows that are not ignored. `counted`, when given, receives the number of those rows
// (the z-loss mean's denominator).
double check_targets_total_weight(const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                                  int64_t ignore_index, int64_t C, double* counted = nullptr) {
  const at::Tensor t = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->to(at::kDouble).contiguous() : at::Tensor();
  const double* wp = w.defined() ? w.data_ptr<double>() : nullptr;
  const int64_t n = t.numel();
  auto check = [&](int64_t y) {
    TORCH_CHECK_INDEX(y == ignore_index || (y >= 0 && y < C), "Target ", y, " is out of bounds.");
    return y == ignore_index ? 0.0 : (wp ? wp[y] : 1.0);
  };
  double total = 0;
  int64_t rows = 0;
  if (t.scalar_type() == at::kByte) {
    const uint8_t* p = t.data_ptr<uint8_t>();
    for (int64_t i = 0; i < n; ++i) total += check(p[i]), rows += p[i] != ignore_index;
  } else {
    const int64_t* p = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) total += check(p[i]), rows += p[i] != ignore_index;
  }
  if (counted) *counted = static_cast<double>(rows);
  return total;
}

double weight_sum(const c10::optional<at::Tensor>& weight, int64_t C) {
  return weight.has_value() ? sum_of(weight->to(at::kDouble).contiguous()) : static_cast<double>(C);
}

// The op's loss output from per-row losses (accumulator dtype, contiguous).
at::Tensor reduce_rows(const at::Tensor& row_loss, int64_t reduction, double denominator,
                       at::ScalarType dtype, at::IntArrayRef row_shape) {
  if (reduction == kNone) return row_loss.to(dtype).view(row_shape);
  const double total = sum_of(row_loss);
  const double value = reduction == kMean ? mean_divide(total, denominator) : total;
  return at::scalar_tensor(value, row_loss.options().dtype(dtype));
}

// The upstream gradient as per-row doubles (none) or a scale (mean/sum; mean divides here).
RowGrad row_grad(const at::Tensor& grad, const at::Tensor& logits, int64_t reduction, double denominator,
                 at::IntArrayRef row_shape, at::Tensor& keep) {
  check_grad(grad, logits, reduction, row_shape);
  if (reduction == kNone) {
    keep = grad.to(at::kDouble).contiguous();
    return {keep.data_ptr<double>(), 1.0};
  }
  const double g = grad.item<double>();
  return {nullptr, reduction == kMean ? mean_divide(g, denominator) : g};
}

c10::optional<at::Tensor> contiguous_opt(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

CeHardArgs hard_args(const at::Tensor& kernel_logits, const CeGeometry& g, const at::Tensor& target,
                     const c10::optional<at::Tensor>& weight, int64_t ignore_index, double smoothing) {
  return {kernel_logits.scalar_type(), ce_view(kernel_logits, g), target.data_ptr(),
          target.scalar_type() == at::kByte, weight.has_value() ? weight->data_ptr() : nullptr,
          ignore_index, smoothing, weight_sum(weight, g.C)};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                     const c10::optional<at::Tensor>& weight_in,
                                                     int64_t ignore_index, double smoothing, int64_t reduction) {
  check_ce_hard(logits, target, weight_in);
  check_reduction(reduction);
  const auto g = ce_geometry(logits);
  const double denominator = check_targets_total_weight(target, weight_in, ignore_index, g.C);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const auto row_shape = ce_row_shape(logits);
  const auto acc = logits.options().dtype(lse_dtype(logits.scalar_type()));
  at::Tensor lse = at::empty(row_shape, acc.dtype(kSavedLseDtype)), row_loss = at::empty(row_shape, acc);
  kernels().ce_hard_forward(hard_args(x, g, t, weight, ignore_index, smoothing), lse.data_ptr(), row_loss.data_ptr());
  at::Tensor loss = reduce_rows(row_loss, reduction, denominator, logits.scalar_type(), row_shape);
  if (classless_smoothing_nan(g, smoothing)) loss.fill_(std::numeric_limits<double>::quiet_NaN());
  return {loss, lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                             const c10::optional<at::Tensor>& weight_in, const at::Tensor& lse,
                             int64_t ignore_index, double smoothing, int64_t reduction) {
  check_ce_hard(logits, target, weight_in);
  check_lse(lse, logits);
  check_reduction(reduction);
  const auto g = ce_geometry(logits);
  const double denominator =
      reduction == kMean ? check_targets_total_weight(target, weight_in, ignore_index, g.C) : 1.0;
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous(), l = lse.contiguous();
  const c10::optional<at::Tensor> weight =
      weight_in.has_value() ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  at::Tensor keep;
  const RowGrad rg = row_grad(grad, logits, reduction, denominator, ce_row_shape(logits), keep);
  bool zeroed = false;
  at::Tensor out = empty_large(logits.sizes(), logits.options(), &zeroed);
  CeHardArgs args = hard_args(x, g, t, weight, ignore_index, smoothing);
  args.grad_zeroed = zeroed;
  kernels().ce_hard_backward(args, l.data_ptr(), rg, out.data_ptr());
  return out;
}

// ---- class-index targets with the language-model options (op_schemas.h) ----
// The loss is the cross-entropy of the transformed logits plus the z-loss. Both are reduced in double and
// rounded once; the z-loss's mean divides by the number of counted rows, not by their weight.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_lm_fwd(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight_in,
    int64_t ignore_index, double smoothing, int64_t reduction, double logit_scale, double softcap,
    double lse_square_scale) {
  check_ce_lm(logits, target, weight_in, reduction, softcap);
  const auto g = ce_geometry(logits);
  double counted = 0;
  const double denominator = check_targets_total_weight(target, weight_in, ignore_index, g.C, &counted);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const auto row_shape = ce_row_shape(logits);
  const auto acc = logits.options().dtype(lse_dtype(logits.scalar_type()));
  at::Tensor lse = at::empty(row_shape, acc.dtype(kSavedLseDtype)), row_loss = at::empty(row_shape, acc), z_rows = at::empty(row_shape, acc);
  CeHardArgs args = hard_args(x, g, t, weight, ignore_index, smoothing);
  args.lm = {logit_scale, softcap, lse_square_scale, z_rows.data_ptr()};
  kernels().ce_hard_forward(args, lse.data_ptr(), row_loss.data_ptr());
  at::Tensor loss, z_loss;
  if (reduction == kNone) {
    loss = at::add(row_loss, z_rows).to(logits.scalar_type());
    z_loss = z_rows;
  } else {
    const double ce_total = sum_of(row_loss), z_total = sum_of(z_rows);
    const double ce = reduction == kMean ? mean_divide(ce_total, denominator) : ce_total;
    const double z = reduction == kMean ? mean_divide(z_total, counted) : z_total;
    loss = at::scalar_tensor(ce + z, logits.options());
    z_loss = at::scalar_tensor(z, acc);
  }
  if (classless_smoothing_nan(g, smoothing)) loss.fill_(std::numeric_limits<double>::quiet_NaN());
  return {loss, lse, z_loss};
}

// The gradient of cross_entropy_lm_fwd's loss, written into `out` (a new tensor, or the logits themselves;
// out_zeroed: out is known to hold zeros, see CeHardArgs::grad_zeroed).
void cross_entropy_lm_grad(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight_in, const at::Tensor& lse, int64_t ignore_index,
                           double smoothing, int64_t reduction, double logit_scale, double softcap,
                           double lse_square_scale, const at::Tensor& x, void* out, bool out_zeroed) {
  const auto g = ce_geometry(logits);
  double counted = 1.0;
  const double denominator = reduction == kMean
      ? check_targets_total_weight(target, weight_in, ignore_index, g.C, &counted) : 1.0;
  const at::Tensor t = target.contiguous(), l = lse.contiguous();
  const auto weight = contiguous_opt(weight_in);
  at::Tensor keep;
  RowGrad rg = row_grad(grad, logits, reduction, denominator, ce_row_shape(logits), keep);
  rg.z_scale = reduction == kNone ? 1.0 : reduction == kMean ? mean_divide(grad.item<double>(), counted)
                                                             : grad.item<double>();
  CeHardArgs args = hard_args(x, g, t, weight, ignore_index, smoothing);
  args.lm = {logit_scale, softcap, lse_square_scale, nullptr};
  args.grad_zeroed = out_zeroed;
  kernels().ce_hard_backward(args, l.data_ptr(), rg, out);
}

at::Tensor cross_entropy_lm_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                                const c10::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t ignore_index,
                                double smoothing, int64_t reduction, double logit_scale, double softcap,
                                double lse_square_scale) {
  check_ce_lm(logits, target, weight, reduction, softcap, &lse);
  const at::Tensor x = ce_kernel_logits(logits);
  bool zeroed = false;
  at::Tensor out = empty_large(logits.sizes(), logits.options(), &zeroed);
  cross_entropy_lm_grad(grad, logits, target, weight, lse, ignore_index, smoothing, reduction, logit_scale, softcap,
                        lse_square_scale, x, out.data_ptr(), zeroed);
  return out;
}

void cross_entropy_lm_bwd_(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t ignore_index,
                           double smoothing, int64_t reduction, double logit_scale, double softcap,
                           double lse_square_scale) {
  check_ce_lm(logits, target, weight, reduction, softcap, &lse);
  check_in_place_logits(logits);
  cross_entropy_lm_grad(grad, logits, target, weight, lse, ignore_index, smoothing, reduction, logit_scale, softcap,
                        lse_square_scale, logits, logits.data_ptr(), /*out_zeroed=*/false);
  mark_overwritten(logits);
}

CeSoftArgs soft_args(const at::Tensor& x, const CeGeometry& g, const at::Tensor& target,
                     const c10::optional<at::Tensor>& weight, double smoothing) {
  return {x.scalar_type(), ce_view(x, g), target.defined() ? target.data_ptr() : nullptr,
          weight.has_value() ? weight->data_ptr() : nullptr, smoothing, weight_sum(weight, g.C)};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_soft_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                          const c10::optional<at::Tensor>& weight,
                                                          double smoothing, int64_t reduction) {
  check_ce_soft(logits, target, weight);
  check_reduction(reduction);
  const auto g = ce_geometry(logits);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const auto w = contiguous_opt(weight);
  const auto row_shape = ce_row_shape(logits);
  const auto acc = logits.options().dtype(lse_dtype(logits.scalar_type()));
  at::Tensor lse = at::empty(row_shape, acc.dtype(kSavedLseDtype)), row_loss = at::empty(row_shape, acc);
  if (g.C == 0) {
    write_classless_soft_rows(lse, row_loss);
  } else {
    kernels().ce_soft_forward(soft_args(x, g, t, w, smoothing), lse.data_ptr(), row_loss.data_ptr());
  }
  return {reduce_rows(row_loss, reduction, soft_mean_divisor(logits, g), logits.scalar_type(), row_shape), lse};
}

at::Tensor soft_backward(bool target_grad, const at::Tensor& grad, const at::Tensor& logits,
                         const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                         const at::Tensor& lse, double smoothing, int64_t reduction) {
  check_lse(lse, logits);
  check_reduction(reduction);
  const auto g = ce_geometry(logits);
  const at::Tensor x = logits.contiguous(), t = target.defined() ? target.contiguous() : target;
  const at::Tensor l = lse.contiguous();
  const auto w = contiguous_opt(weight);
  at::Tensor keep;
  const RowGrad rg = row_grad(grad, logits, reduction, soft_mean_divisor(logits, g), ce_row_shape(logits), keep);
  at::Tensor out = empty_large(logits.sizes(), logits.options());
  const auto args = soft_args(x, g, t, w, smoothing);
  if (target_grad) {
    kernels().ce_soft_target_backward(args, l.data_ptr(), rg, out.data_ptr());
  } else {
    kernels().ce_soft_backward(args, l.data_ptr(), rg, out.data_ptr());
  }
  return out;
}

at::Tensor cross_entropy_soft_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                  double smoothing, int64_t reduction) {
  check_ce_soft(logits, target, weight);
  return soft_backward(false, grad, logits, target, weight, lse, smoothing, reduction);
}

at::Tensor cross_entropy_soft_target_bwd(const at::Tensor& grad, const at::Tensor& logits,
                                         const c10::optional<at::Tensor>& weight, const at::Tensor& lse,
                                         double smoothing, int64_t reduction) {
  check_floating(logits, "logits");
  check_weight(weight, logits, ce_geometry(logits).C);
  return soft_backward(true, grad, logits, at::Tensor(), weight, lse, smoothing, reduction);
}

at::Tensor bce_with_logits_fwd(const at::Tensor& input, const at::Tensor& target,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& pos_weight,
                               int64_t reduction) {
  check_reduction(reduction);
  const BceCall c = bce_call(input, target, weight, pos_weight);
  if (reduction == kNone) {
    at::Tensor out = empty_large(input.sizes(), input.options());
    kernels().bce_forward(c.args, true, out.data_ptr());
    return out;
  }
  at::Tensor partial = at::zeros({(input.numel() + kBceChunk - 1) / kBceChunk}, input.options().dtype(at::kDouble));
  kernels().bce_forward(c.args, false, partial.data_ptr());
  double total = 0;
  const double* p = partial.data_ptr<double>();
  for (int64_t i = 0; i < partial.numel(); ++i) total += p[i];
  const double value = reduction == kMean ? total / static_cast<double>(input.numel()) : total;
  return at::scalar_tensor(value, input.options());
}

at::Tensor bce_backward(bool target_grad, const at::Tensor& grad, const at::Tensor& input,
                        const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& pos_weight, int64_t reduction) {
  check_reduction(reduction);
  const BceCall c = bce_call(input, target, weight, pos_weight);
  check_grad(grad, input, reduction, input.sizes());
  at::Tensor g_keep;
  const void* g = nullptr;
  double scale = 1.0;
  if (reduction == kNone) {
    g_keep = grad.to(input.scalar_type()).contiguous();
    g = g_keep.data_ptr();
  } else {
    scale = grad.item<double>();
    if (reduction == kMean) scale /= static_cast<double>(input.numel());
  }
  at::Tensor out = empty_large(input.sizes(), input.options());
  if (target_grad) {
    kernels().bce_target_backward(c.args, g, scale, out.data_ptr());
  } else {
    kernels().bce_backward(c.args, g, scale, out.data_ptr());
  }
  return out;
}

at::Tensor bce_with_logits_bwd(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& pos_weight,
                               int64_t reduction) {
  return bce_backward(false, grad, input, target, weight, pos_weight, reduction);
}

at::Tensor bce_with_logits_target_bwd(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                                      const c10::optional<at::Tensor>& weight,
                                      const c10::optional<at::Tensor>& pos_weight, int64_t reduction) {
  return bce_backward(true, grad, input, target, weight, pos_weight, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_ce, CPU, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd);
  m.impl("cross_entropy_lm_fwd", &cross_entropy_lm_fwd);
  m.impl("cross_entropy_lm_bwd", &cross_entropy_lm_bwd);
  m.impl("cross_entropy_lm_bwd_", &cross_entropy_lm_bwd_);
  m.impl("cross_entropy_soft_fwd", &cross_entropy_soft_fwd);
  m.impl("cross_entropy_soft_bwd", &cross_entropy_soft_bwd);
  m.impl("cross_entropy_soft_target_bwd", &cross_entropy_soft_target_bwd);
  m.impl("bce_with_logits_fwd", &bce_with_logits_fwd);
  m.impl("bce_with_logits_bwd", &bce_with_logits_bwd);
  m.impl("bce_with_logits_target_bwd", &bce_with_logits_target_bwd);
}

}  // namespace fused_ce::cpu
