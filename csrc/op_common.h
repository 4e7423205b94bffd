// Backend-neutral glue shared by the CPU and CUDA impls: argument checks, the (N, C, S) view of the
// logits, output shapes, and broadcast descriptors. User-facing validation with PyTorch's exception
// types and messages happens in Python before the ops are called; the checks here keep direct callers
// of torch.ops.fused_ce from reaching a kernel with inputs it cannot handle.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <limits>
#include <vector>

#include "kernel_args.h"
#include "rowmath.h"

namespace fused_ce {

// The accumulation dtype: of the per-row losses, z-losses and statistics, and of the lse users see.
inline at::ScalarType lse_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// The lse a forward saves for its backward (the cross-entropy ops' second output): fp64 for every input
// dtype, so that the backward's probabilities carry no rounding of the lse (rowmath.h, lse_saved).
constexpr at::ScalarType kSavedLseDtype = at::kDouble;

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction == kNone || reduction == kMean || reduction == kSum,
              "fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              "fused_ce: ", name, " must be float32, float64, float16 or bfloat16, got ", s);
}

// Every tensor argument must be on the logits' device. The dispatcher sends a call to the kernel of the
// highest-priority device among the arguments, so a CPU glue can see a tensor of another device only
// through a direct op call; the CUDA glue sees CPU tensors next to CUDA logits. Reading one there would
// read the wrong memory (or, for a meta tensor, none). The fake kernels (_ops.py) say the same.
inline void check_device(const at::Tensor& t, const at::Tensor& logits, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), "fused_ce: every tensor must be on the logits' device ",
              logits.device(), ", but ", name, " is on ", t.device());
}

inline void check_device(const c10::optional<at::Tensor>& t, const at::Tensor& logits, const char* name) {
  if (t.has_value()) check_device(*t, logits, name);
}

// The upstream gradient of a backward op: on the logits' device, one value per loss element
// (reduction='none', `loss_shape`) or a single value (mean/sum). Shared by the CPU and CUDA glue so that
// both word it alike; the kernels would otherwise read a wrong-shaped grad out of bounds.
inline void check_grad(const at::Tensor& grad, const at::Tensor& logits, int64_t reduction,
                       at::IntArrayRef loss_shape) {
  check_device(grad, logits, "grad");
  TORCH_CHECK(reduction == kNone ? grad.sizes() == loss_shape : grad.numel() == 1,
              "fused_ce: grad must have shape ", reduction == kNone ? loss_shape : at::IntArrayRef{},
              " for this reduction, got ", grad.sizes());
}

inline void check_softcap(double softcap) {
  TORCH_CHECK(softcap >= 0, "fused_ce: softcap must be >= 0 (0 turns it off), got ", softcap);
}

// The in-place backward (cross_entropy_lm_bwd_) writes the gradient, laid out as the kernels write it,
// over the logits: only contiguous logits have that layout.
inline void check_in_place_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.is_contiguous(),
              "fused_ce: cross_entropy_lm_bwd_ writes the gradient over the logits, which must be contiguous");
}

// A tensor that an op wrote over: bumps its version counter (shared with its views), so that any autograd
// node that saved it raises torch's "modified by an inplace operation" error instead of reading the new
// values. The dispatcher does not do it for ops of a TORCH_LIBRARY (measured: _version stayed 0).
inline void mark_overwritten(const at::Tensor& t) {
  t.unsafeGetTensorImpl()->bump_version();
}

struct CeGeometry {
  int64_t N, C, S;
};

// logits (N, C, d1..dk) as N rows of C classes at S = d1*..*dk positions each.
inline CeGeometry ce_geometry(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() >= 2, "fused_ce: logits must have shape (N, C, d1, ..., dk), got ", logits.sizes());
  int64_t S = 1;
  for (int64_t d = 2; d < logits.dim(); ++d) S *= logits.size(d);
  return {logits.size(0), logits.size(1), S};
}

// Shape of the per-row values (loss with reduction='none', lse): (N, d1..dk).
inline std::vector<int64_t> ce_row_shape(const at::Tensor& logits) {
  std::vector<int64_t> shape{logits.size(0)};
  for (int64_t d = 2; d < logits.dim(); ++d) shape.push_back(logits.size(d));
  return shape;
}

// Kernels take rows with contiguous classes at any row stride (so slices of a larger tensor are read
// in place), and the N-D layout contiguous. Anything else is copied once.
inline at::Tensor ce_kernel_logits(const at::Tensor& logits) {
  if (logits.dim() == 2 && (logits.stride(1) == 1 || logits.size(1) == 1)) return logits;
  return logits.contiguous();
}

inline LogitsView ce_view(const at::Tensor& kernel_logits, const CeGeometry& g) {
  const int64_t stride_n = g.S == 1 && kernel_logits.dim() == 2 ? kernel_logits.stride(0) : g.C * g.S;
  return {kernel_logits.data_ptr(), g.N, g.C, g.S, stride_n};
}

inline void check_weight(const c10::optional<at::Tensor>& weight, const at::Tensor& logits, int64_t C) {
  if (!weight.has_value()) return;
  TORCH_CHECK(weight->dim() == 1 && weight->numel() == C,
              "weight tensor should be defined either for all ", C,
              " classes or no classes but got weight tensor of shape: ", weight->sizes());
  TORCH_CHECK(weight->scalar_type() == logits.scalar_type(), "expected scalar type ",
              logits.scalar_type(), " but found ", weight->scalar_type());
  check_device(*weight, logits, "weight");
}

inline void check_ce_hard(const at::Tensor& logits, const at::Tensor& target,
                          const c10::optional<at::Tensor>& weight) {
  check_floating(logits, "logits");
  const auto g = ce_geometry(logits);
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte,
              "expected target dtype to be Long or Byte, but got ", target.scalar_type());
  TORCH_CHECK(target.sizes() == at::IntArrayRef(ce_row_shape(logits)), "Expected target size ",
              at::IntArrayRef(ce_row_shape(logits)), ", got ", target.sizes());
  check_device(target, logits, "target");
  check_weight(weight, logits, g.C);
}

inline void check_ce_soft(const at::Tensor& logits, const at::Tensor& target,
                          const c10::optional<at::Tensor>& weight) {
  check_floating(logits, "logits");
  const auto g = ce_geometry(logits);
  TORCH_CHECK(target.sizes() == logits.sizes() && target.scalar_type() == logits.scalar_type(),
              "fused_ce: probability targets must have the logits' shape and dtype, got ", target.sizes(),
              " ", target.scalar_type(), " for logits ", logits.sizes(), " ", logits.scalar_type());
  check_device(target, logits, "target");
  check_weight(weight, logits, g.C);
}

// Zero classes (C == 0): rows exist but hold no logit, and the kernels take a row's first logit as the
// reference of their sums, so the glue writes torch's results instead of calling them.
//  * Probability targets: a row's loss is minus an empty sum, -0.0; its log-sum-exp is -inf.
//  * Class indices: every target must be ignored (any other is out of range), so each row is 0, except
//    with label smoothing > 0, where torch divides the smoothing term by C: 0/0, NaN for every
//    reduction, also with no rows (checked against torch 2.13).
inline void write_classless_soft_rows(const at::Tensor& lse, const at::Tensor& row_loss) {
  lse.fill_(-std::numeric_limits<double>::infinity());
  row_loss.fill_(-0.0);
}

// Class indices with C == 0 where the kernels would not write (CUDA): ignored rows as the kernels
// write them (loss 0, lse 0), any other row out of range, so NaN as on CUDA (the CPU raises before).
inline void write_classless_hard_rows(const at::Tensor& target, int64_t ignore_index, const at::Tensor& lse,
                                      const at::Tensor& row_loss) {
  lse.zero_();
  row_loss.fill_(std::numeric_limits<double>::quiet_NaN());
  row_loss.masked_fill_(target.eq(ignore_index).view(row_loss.sizes()), 0.0);
}

inline bool classless_smoothing_nan(const CeGeometry& g, double smoothing) { return g.C == 0 && smoothing > 0; }

// The divisor of torch's probability-target mean: the number of rows N*S, or 0 (so NaN) for an input
// with no elements, which torch special-cases to NaN even when rows exist (C == 0).
inline double soft_mean_divisor(const at::Tensor& logits, const CeGeometry& g) {
  return logits.numel() == 0 ? 0.0 : static_cast<double>(g.N * g.S);
}

inline void check_lse(const at::Tensor& lse, const at::Tensor& logits) {
  check_device(lse, logits, "lse");
  TORCH_CHECK(lse.scalar_type() == kSavedLseDtype &&
                  lse.sizes() == at::IntArrayRef(ce_row_shape(logits)),
              "fused_ce: lse must be the forward's second output");
}

// The arguments of the cross_entropy_lm_* ops (language-model options), for the CPU and the CUDA glue alike;
// `lse` is given by the backward ops only.
inline void check_ce_lm(const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                        int64_t reduction, double softcap, const at::Tensor* lse = nullptr) {
  check_ce_hard(logits, target, weight);
  if (lse != nullptr) check_lse(*lse, logits);
  check_reduction(reduction);
  check_softcap(softcap);
}

inline void check_bce(const at::Tensor& input, const at::Tensor& target) {
  check_floating(input, "input");
  TORCH_CHECK(target.sizes() == input.sizes(), "Target size (", target.sizes(),
              ") must be the same as input size (", input.sizes(), ")");
  TORCH_CHECK(target.scalar_type() == input.scalar_type(),
              "fused_ce: target must have the input's dtype, got ", target.scalar_type());
  check_device(target, input, "target");
}

// Describes `operand` broadcast to `shape` as data[(i / div) % mod] over the flat index i. Operands
// whose expanded non-broadcast dims form one compact block (scalars, per-class vectors, per-row
// columns, full tensors) are read in place; any other broadcast is materialized once into `keep`.
inline Broadcast describe_broadcast(const c10::optional<at::Tensor>& operand, const at::Tensor& input,
                                    at::Tensor& keep) {
  if (!operand.has_value()) return {nullptr, 1, 1};
  keep = operand->to(input.scalar_type());
  const auto shape = input.sizes();
  at::Tensor e = keep.expand(shape);
  const int64_t dims = static_cast<int64_t>(shape.size());
  int64_t first = -1, last = -1;  // the block [first, last] of real (non-broadcast) dims
  for (int64_t d = 0; d < dims; ++d) {
    if (shape[d] != 1 && e.stride(d) != 0) {
      if (first < 0) first = d;
      last = d;
    }
  }
  if (first < 0) return {e.data_ptr(), 1, 1};
  bool compact = true;
  int64_t expected = 1;
  for (int64_t d = last; d >= first; --d) {
    if (shape[d] == 1) continue;
    compact = compact && e.stride(d) == expected;
    expected *= shape[d];
  }
  if (compact) {
    int64_t div = 1;
    for (int64_t d = last + 1; d < dims; ++d) div *= shape[d];
    return {e.data_ptr(), div, expected};
  }
  keep = e.contiguous();
  return {keep.data_ptr(), 1, std::max<int64_t>(keep.numel(), 1)};
}

// A BCE call's inputs made contiguous, weights described as broadcasts, and the tensors that keep the
// described memory alive for as long as the kernel arguments are used.
struct BceCall {
  at::Tensor input, target, weight_keep, pos_weight_keep;
  BceArgs args;
};

inline BceCall bce_call(const at::Tensor& input, const at::Tensor& target,
                        const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& pos_weight) {
  check_bce(input, target);
  check_device(weight, input, "weight");
  check_device(pos_weight, input, "pos_weight");
  BceCall c;
  c.input = input.contiguous();
  c.target = target.contiguous();
  const Broadcast w = describe_broadcast(weight, c.input, c.weight_keep);
  const Broadcast pw = describe_broadcast(pos_weight, c.input, c.pos_weight_keep);
  c.args = {input.scalar_type(), c.input.data_ptr(), c.target.data_ptr(), input.numel(), w, pw};
  return c;
}

}  // namespace fused_ce
