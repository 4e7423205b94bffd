// CUDA impls of the fused_ce ops: the ATen glue around the kernels of this folder. Same semantics as
// cpu/ops_cpu.cpp, with two differences forced by the device:
//
// * Nothing here waits for the GPU. The mean's denominator (the sum of w[y] over rows that are not
//   ignored), the class-weight sum used by label smoothing, and the scalar upstream gradient stay in
//   device memory and the kernels read them there, so forward and backward can be captured in a CUDA
//   graph and never stall the host. Reductions over rows are fixed-order trees (reduce.cu): results
//   are bitwise identical run to run.
//
// * Out-of-range class indices. The CPU raises IndexError("Target 5 is out of bounds.") because it
//   checks every target before reading; doing so on the GPU would need a device-to-host sync in every
//   call. Instead the kernels never use an out-of-range index to address memory: such a row gets a NaN
//   loss (and a NaN gradient row, and the mean becomes NaN), so the error is visible without a sync and
//   without the device-side assert of PyTorch's CUDA kernels, which would poison the CUDA context.
//   Setting FUSED_CE_CUDA_CHECK_TARGETS=1 (read at every call) makes every class-index op
//   also record the first bad row on the device, synchronize, and raise PyTorch's exception:
//   IndexError "Target <t> is out of bounds." That mode syncs once per call, so it does not work
//   inside CUDA graph capture.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "cuda/launchers.h"
#include "cuda/ops_cuda.h"
#include "op_common.h"

namespace fused_ce::cuda {
namespace {

// Read at every call (a getenv is nothing next to a launch), so a process can switch modes.
bool check_targets_mode() {
  const char* v = std::getenv("FUSED_CE_CUDA_CHECK_TARGETS");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor empty_on(at::IntArrayRef sizes, const at::Tensor& like, at::ScalarType dtype) {
  return at::empty(sizes, like.options().dtype(dtype));
}

c10::optional<at::Tensor> contiguous_opt(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

// sum(values) / *denominator (or / divisor) as a 0-dim tensor of `dtype`, on the device.
at::Tensor device_sum(const at::Tensor& values, const double* denominator, double divisor, at::ScalarType dtype) {
  const int64_t count = sum_partial_count(values.numel());
  at::Tensor partials = empty_on({std::max<int64_t>(count, 1)}, values, at::kDouble);
  at::Tensor out = empty_on({}, values, dtype);
  const cudaStream_t stream = current_stream();
  sum_partials(values.scalar_type(), values.data_ptr(), values.numel(), partials.data_ptr<double>(), stream);
  finish_sum(partials.data_ptr<double>(), count, denominator, divisor, dtype, out.data_ptr(), stream);
  return out;
}

// Sum of the class weights (as doubles, like the CPU) when label smoothing needs it; else undefined.
at::Tensor weight_sum(const c10::optional<at::Tensor>& weight, double smoothing) {
  if (!weight.has_value() || !(smoothing > 0)) return at::Tensor();
  return device_sum(weight->to(at::kDouble).contiguous(), nullptr, 1.0, at::kDouble);
}

const double* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; }

// w[y] of every row as doubles (see ce_target_weights); `w` holds the class weights as doubles, or is
// undefined: every counted row is 1.
at::Tensor row_target_weights(const at::Tensor& target, const at::Tensor& w, int64_t ignore_index, int64_t C,
                              unsigned long long* bad_row) {
  at::Tensor row_weights = empty_on({target.numel()}, target, at::kDouble);
  ce_target_weights(target.data_ptr(), target.scalar_type() == at::kByte, target.numel(), C, ignore_index,
                    ptr_or_null(w), row_weights.data_ptr<double>(), bad_row, current_stream());
  return row_weights;
}

// The weighted mean's denominator (0-dim double) when `need_denominator`, else undefined. In the
// check-targets mode it also validates every class index, synchronizing and raising IndexError.
at::Tensor check_targets_and_denominator(const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                                         int64_t ignore_index, int64_t C, bool need_denominator) {
  const bool check = check_targets_mode();
  if (!need_denominator && !check) return at::Tensor();
  const at::Tensor w = weight.has_value() ? weight->to(at::kDouble).contiguous() : at::Tensor();
  at::Tensor bad_row;
  if (check) {
    bad_row = empty_on({1}, target, at::kLong);
    C10_CUDA_CHECK(cudaMemsetAsync(bad_row.data_ptr(), 0xff, sizeof(int64_t), current_stream()));
  }
  const at::Tensor row_weights = row_target_weights(
      target, w, ignore_index, C, check ? static_cast<unsigned long long*>(bad_row.data_ptr()) : nullptr);
  if (check) {
    const int64_t row = bad_row.item<int64_t>();  // all ones (-1): every target is in range
    if (row >= 0) {
      const int64_t y = target.reshape({-1})[row].item<int64_t>();
      TORCH_CHECK_INDEX(false, "Target ", y, " is out of bounds.");
    }
  }
  return need_denominator ? device_sum(row_weights, nullptr, 1.0, at::kDouble) : at::Tensor();
}

// The upstream gradient: `loss_shape` values in the logits' dtype for reduction='none', else one scalar in
// double, as the CPU ops read it: a scalar of another dtype than the logits' (the fp32 gradient of an fp32 sum of
// fp16 per-row losses, _row_loss_sum.py) is not rounded to the logits' dtype first.
DeviceGrad device_grad(const at::Tensor& grad, const at::Tensor& like, int64_t reduction, at::IntArrayRef loss_shape,
                       at::Tensor& keep, const double* denominator, double divisor) {
  check_grad(grad, like, reduction, loss_shape);
  keep = grad.to(reduction == kNone ? like.scalar_type() : at::kDouble).contiguous();
  if (reduction == kNone) return {keep.data_ptr(), true, nullptr, 1.0};
  return {keep.data_ptr(), false, reduction == kMean ? denominator : nullptr,
          reduction == kMean && denominator == nullptr ? divisor : 1.0};
}

at::Tensor partials_for(const Tiling& t, const at::Tensor& like) {
  const int64_t acc_size = like.scalar_type() == at::kDouble ? 8 : 4;
  const int64_t bytes = partials_bytes(t, acc_size);
  return bytes > 0 ? empty_on({bytes}, like, at::kByte) : at::Tensor();
}

void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// Outputs of a forward: lse, and the loss (none) or per-row accumulators (mean/sum).
struct ForwardOutputs {
  at::Tensor lse, loss, row_loss;
  CeOutputs ptrs() const { return {lse.data_ptr(), data_or_null(loss), data_or_null(row_loss)}; }
  const at::Tensor& rows() const { return loss.defined() ? loss : row_loss; }  // the per-row losses
};

ForwardOutputs forward_outputs(const at::Tensor& logits, int64_t reduction) {
  const auto row_shape = ce_row_shape(logits);
  const auto acc = lse_dtype(logits.scalar_type());
  ForwardOutputs o;
  o.lse = empty_on(row_shape, logits, kSavedLseDtype);
  if (reduction == kNone) {
    o.loss = empty_on(row_shape, logits, logits.scalar_type());
  } else {
    o.row_loss = empty_on(row_shape, logits, acc);
  }
  return o;
}

at::Tensor reduced_loss(const ForwardOutputs& o, int64_t reduction, const double* denominator, double divisor,
                        at::ScalarType dtype) {
  if (reduction == kNone) return o.loss;
  return device_sum(o.row_loss, reduction == kMean ? denominator : nullptr,
                    reduction == kMean && denominator == nullptr ? divisor : 1.0, dtype);
}

CeHardArgs hard_args(const at::Tensor& x, const CeGeometry& g, const at::Tensor& target,
                     const c10::optional<at::Tensor>& weight, int64_t ignore_index, double smoothing) {
  // weight_sum is unused: the kernels read the device sum (weight_sum() above).
  return {x.scalar_type(), ce_view(x, g), target.data_ptr(), target.scalar_type() == at::kByte,
          weight.has_value() ? weight->data_ptr() : nullptr, ignore_index, smoothing, static_cast<double>(g.C)};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                     const c10::optional<at::Tensor>& weight_in,
                                                     int64_t ignore_index, double smoothing, int64_t reduction) {
  check_ce_hard(logits, target, weight_in);
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const at::Tensor denominator = check_targets_and_denominator(t, weight, ignore_index, g.C, reduction == kMean);
  const at::Tensor wsum = weight_sum(weight, smoothing);
  const auto args = hard_args(x, g, t, weight, ignore_index, smoothing);
  const Tiling tiling = plan_tiling(args.logits, x.element_size());
  const at::Tensor partials = partials_for(tiling, x);
  const ForwardOutputs o = forward_outputs(logits, reduction);
  if (g.C == 0) {
    write_classless_hard_rows(t, ignore_index, o.lse, o.rows());
  } else {
    ce_hard_forward(args, tiling, ptr_or_null(wsum), data_or_null(partials), o.ptrs(), current_stream());
  }
  at::Tensor loss = reduced_loss(o, reduction, ptr_or_null(denominator), 1.0, logits.scalar_type());
  if (classless_smoothing_nan(g, smoothing)) loss.fill_(std::numeric_limits<double>::quiet_NaN());
  return {loss, o.lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                             const c10::optional<at::Tensor>& weight_in, const at::Tensor& lse,
                             int64_t ignore_index, double smoothing, int64_t reduction) {
  check_ce_hard(logits, target, weight_in);
  check_lse(lse, logits);
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous(), l = lse.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const at::Tensor denominator = check_targets_and_denominator(t, weight, ignore_index, g.C, reduction == kMean);
  const at::Tensor wsum = weight_sum(weight, smoothing);
  at::Tensor keep;
  const DeviceGrad dg = device_grad(grad, logits, reduction, ce_row_shape(logits), keep, ptr_or_null(denominator), 1.0);
  const auto args = hard_args(x, g, t, weight, ignore_index, smoothing);
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  ce_hard_backward(args, plan_tiling(args.logits, x.element_size()), ptr_or_null(wsum), l.data_ptr(), dg,
                   out.data_ptr(), current_stream());
  return out;
}

// ---- class-index targets with the language-model options (LmOptions in kernel_args.h) ----------------

// The number of rows that are not ignored (0-dim double), the z-loss's mean denominator: without class
// weights the loss's own `denominator`.
at::Tensor counted_rows(const at::Tensor& target, const c10::optional<at::Tensor>& weight, int64_t ignore_index,
                        int64_t C, const at::Tensor& denominator) {
  if (!weight.has_value()) return denominator;
  return device_sum(row_target_weights(target, at::Tensor(), ignore_index, C, nullptr), nullptr, 1.0, at::kDouble);
}

// The loss is the cross-entropy of the transformed logits plus the z-loss. 'none': the kernel adds each
// row's two parts and rounds once. 'sum' and 'mean': each part is summed (and divided by its own
// denominator: the target weights, or the number of counted rows) in double, then added and rounded once.
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_lm_fwd(
    const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight_in,
    int64_t ignore_index, double smoothing, int64_t reduction, double logit_scale, double softcap,
    double lse_square_scale) {
  check_ce_lm(logits, target, weight_in, reduction, softcap);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const bool mean = reduction == kMean;
  const at::Tensor denominator = check_targets_and_denominator(t, weight, ignore_index, g.C, mean);
  const at::Tensor count = mean ? counted_rows(t, weight, ignore_index, g.C, denominator) : at::Tensor();
  const at::Tensor wsum = weight_sum(weight, smoothing);
  const ForwardOutputs o = forward_outputs(logits, reduction);
  const at::Tensor z_rows = empty_on(ce_row_shape(logits), logits, lse_dtype(logits.scalar_type()));
  auto args = hard_args(x, g, t, weight, ignore_index, smoothing);
  args.lm = {logit_scale, softcap, lse_square_scale, z_rows.data_ptr()};
  const Tiling tiling = plan_tiling(args.logits, x.element_size());
  const at::Tensor partials = partials_for(tiling, x);
  if (g.C == 0) {
    write_classless_hard_rows(t, ignore_index, o.lse, o.rows());
    write_classless_hard_rows(t, ignore_index, o.lse, z_rows);
  } else {
    ce_hard_forward(args, tiling, ptr_or_null(wsum), data_or_null(partials), o.ptrs(), current_stream());
  }
  at::Tensor loss = o.loss, z_loss = z_rows;
  if (reduction != kNone) {
    const at::Tensor ce = device_sum(o.row_loss, mean ? ptr_or_null(denominator) : nullptr, 1.0, at::kDouble);
    const at::Tensor z = device_sum(z_rows, mean ? ptr_or_null(count) : nullptr, 1.0, at::kDouble);
    loss = ce.add(z).to(logits.scalar_type());
    z_loss = z.to(z_rows.scalar_type());
  }
  if (classless_smoothing_nan(g, smoothing)) loss.fill_(std::numeric_limits<double>::quiet_NaN());
  return {loss, o.lse, z_loss};
}

// The gradient into `out`: a new tensor, or (in_place) the logits themselves, which the kernel reads
// element by element before writing over them.
at::Tensor lm_backward(bool in_place, const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                       const c10::optional<at::Tensor>& weight_in, const at::Tensor& lse, int64_t ignore_index,
                       double smoothing, int64_t reduction, double logit_scale, double softcap,
                       double lse_square_scale) {
  check_ce_lm(logits, target, weight_in, reduction, softcap, &lse);
  if (in_place) check_in_place_logits(logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = ce_kernel_logits(logits), t = target.contiguous(), l = lse.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const bool mean = reduction == kMean;
  const at::Tensor denominator = check_targets_and_denominator(t, weight, ignore_index, g.C, mean);
  const at::Tensor count =
      mean && lse_square_scale != 0 ? counted_rows(t, weight, ignore_index, g.C, denominator) : at::Tensor();
  const at::Tensor wsum = weight_sum(weight, smoothing);
  at::Tensor keep;
  DeviceGrad dg = device_grad(grad, logits, reduction, ce_row_shape(logits), keep, ptr_or_null(denominator), 1.0);
  dg.z_denominator = ptr_or_null(count);
  auto args = hard_args(x, g, t, weight, ignore_index, smoothing);
  args.lm = {logit_scale, softcap, lse_square_scale, nullptr};
  const at::Tensor out = in_place ? x : at::empty(logits.sizes(), logits.options());
  ce_hard_backward(args, plan_tiling(args.logits, x.element_size()), ptr_or_null(wsum), l.data_ptr(), dg,
                   out.data_ptr(), current_stream());
  return out;
}

at::Tensor cross_entropy_lm_bwd(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                                const c10::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t ignore_index,
                                double smoothing, int64_t reduction, double logit_scale, double softcap,
                                double lse_square_scale) {
  return lm_backward(false, grad, logits, target, weight, lse, ignore_index, smoothing, reduction, logit_scale,
                     softcap, lse_square_scale);
}

void cross_entropy_lm_bwd_(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight, const at::Tensor& lse, int64_t ignore_index,
                           double smoothing, int64_t reduction, double logit_scale, double softcap,
                           double lse_square_scale) {
  lm_backward(true, grad, logits, target, weight, lse, ignore_index, smoothing, reduction, logit_scale, softcap,
              lse_square_scale);
  mark_overwritten(logits);
}

CeSoftArgs soft_args(const at::Tensor& x, const CeGeometry& g, const at::Tensor& target,
                     const c10::optional<at::Tensor>& weight, double smoothing) {
  return {x.scalar_type(), ce_view(x, g), target.defined() ? target.data_ptr() : nullptr,
          weight.has_value() ? weight->data_ptr() : nullptr, smoothing, static_cast<double>(g.C)};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_soft_fwd(const at::Tensor& logits, const at::Tensor& target,
                                                          const c10::optional<at::Tensor>& weight_in,
                                                          double smoothing, int64_t reduction) {
  check_ce_soft(logits, target, weight_in);
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const auto weight = contiguous_opt(weight_in);
  const auto args = soft_args(x, g, t, weight, smoothing);
  const Tiling tiling = plan_tiling(args.logits, x.element_size());
  const at::Tensor partials = partials_for(tiling, x);
  const ForwardOutputs o = forward_outputs(logits, reduction);
  if (g.C == 0) {
    write_classless_soft_rows(o.lse, o.rows());
  } else {
    ce_soft_forward(args, tiling, data_or_null(partials), o.ptrs(), current_stream());
  }
  return {reduced_loss(o, reduction, nullptr, soft_mean_divisor(logits, g), logits.scalar_type()), o.lse};
}

at::Tensor soft_backward(bool target_grad, const at::Tensor& grad, const at::Tensor& logits,
                         const at::Tensor& target, const c10::optional<at::Tensor>& weight_in,
                         const at::Tensor& lse, double smoothing, int64_t reduction) {
  check_lse(lse, logits);
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto g = ce_geometry(logits);
  const at::Tensor x = logits.contiguous(), t = target.defined() ? target.contiguous() : target;
  const at::Tensor l = lse.contiguous();
  const auto weight = contiguous_opt(weight_in);
  at::Tensor keep;
  const DeviceGrad dg = device_grad(grad, logits, reduction, ce_row_shape(logits), keep, nullptr,
                                    soft_mean_divisor(logits, g));
  const auto args = soft_args(x, g, t, weight, smoothing);
  const Tiling tiling = plan_tiling(args.logits, x.element_size());
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  if (target_grad) {
    ce_soft_target_backward(args, tiling, l.data_ptr(), dg, out.data_ptr(), current_stream());
  } else {
    const at::Tensor partials = partials_for(tiling, x);
    at::Tensor row_sums = empty_on({g.N * g.S}, logits, lse_dtype(logits.scalar_type()));
    ce_soft_backward(args, tiling, data_or_null(partials), row_sums.data_ptr(), l.data_ptr(), dg, out.data_ptr(),
                     current_stream());
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
  const c10::cuda::CUDAGuard guard(input.device());
  const BceCall c = bce_call(input, target, weight, pos_weight);
  const cudaStream_t stream = current_stream();
  if (reduction == kNone) {
    at::Tensor out = at::empty(input.sizes(), input.options());
    bce_forward(c.args, out.data_ptr(), nullptr, stream);
    return out;
  }
  const int64_t count = bce_partial_count(input.numel());
  at::Tensor partials = empty_on({std::max<int64_t>(count, 1)}, input, at::kDouble);
  at::Tensor out = at::empty({}, input.options());
  bce_forward(c.args, nullptr, partials.data_ptr<double>(), stream);
  finish_sum(partials.data_ptr<double>(), count, nullptr,
             reduction == kMean ? static_cast<double>(input.numel()) : 1.0, input.scalar_type(), out.data_ptr(),
             stream);
  return out;
}

at::Tensor bce_backward_op(bool target_grad, const at::Tensor& grad, const at::Tensor& input,
                           const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& pos_weight, int64_t reduction) {
  check_reduction(reduction);
  const c10::cuda::CUDAGuard guard(input.device());
  const BceCall c = bce_call(input, target, weight, pos_weight);
  at::Tensor keep;
  const DeviceGrad dg = device_grad(grad, input, reduction, input.sizes(), keep, nullptr,
                                    static_cast<double>(input.numel()));
  at::Tensor out = at::empty(input.sizes(), input.options());
  bce_backward(c.args, dg, target_grad, out.data_ptr(), current_stream());
  return out;
}

at::Tensor bce_with_logits_bwd(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                               const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& pos_weight,
                               int64_t reduction) {
  return bce_backward_op(false, grad, input, target, weight, pos_weight, reduction);
}

at::Tensor bce_with_logits_target_bwd(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                                      const c10::optional<at::Tensor>& weight,
                                      const c10::optional<at::Tensor>& pos_weight, int64_t reduction) {
  return bce_backward_op(true, grad, input, target, weight, pos_weight, reduction);
}

}  // namespace

void register_impls(torch::Library& m) {
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

}  // namespace fused_ce::cuda
