// The schemas of the vocabulary-parallel cross-entropy's slice ops (python_pkg/fused_ce/parallel.py runs the
// collectives between them). ops.cpp defines them in the `fused_ce` library and the emulated CUDA build
// (cuda_emulation/register_emulated.cpp) in its own, as for op_schemas.h. The glue helpers below are shared by
// the CPU (cpu/partial_stats_cpu.cpp) and CUDA (cuda/partial_stats_cuda.cpp) impls.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "op_common.h"
#include "partial_stats_args.h"

namespace fused_ce {

inline void define_partial_stats_ops(torch::Library& m) {
  // One pass over the logits of this rank's classes [class_offset, class_offset + C): returns the
  // (kPartialStatCount, N, d1..dk) per-row statistics of rowmath.h's PartialStat in the accumulation dtype
  // (fp32; fp64 for fp64 logits). Without `smoothing` the smoothing rows are 0 and no weight is read for them.
  // With the language-model options (rowmath.h's LogitTransform; softcap 0: none) the statistics are those of
  // the transformed logits z = softcap * tanh(logit_scale * x / softcap), or logit_scale * x.
  m.def(
      "ce_partial_stats(Tensor logits, Tensor target, Tensor? weight, int class_offset, int ignore_index, "
      "bool smoothing, float logit_scale=1., float softcap=0.) -> Tensor");
  // The gradient of the slice: dx[c] = (exp(z[c] - lse) * prob - klass * w[c] - [c == y - class_offset] * tgt)
  // * dz/dx[c], with coefs = (lse, prob, tgt, klass) stacked as a (4, N, d1..dk) tensor of the accumulation
  // dtype; z = x and dz/dx = 1 without the options. An ignored row (target == ignore_index) gets dx = 0 whatever
  // its logits and coefs hold.
  m.def(
      "ce_partial_grad(Tensor logits, Tensor target, Tensor? weight, Tensor coefs, int class_offset, "
      "int ignore_index, float logit_scale=1., float softcap=0.) -> Tensor");
}

// The number of per-row coefficients of ce_partial_grad.
constexpr int64_t kPartialGradCoefs = 4;

inline std::vector<int64_t> partial_rows_shape(const at::Tensor& logits, int64_t k) {
  std::vector<int64_t> shape = ce_row_shape(logits);
  shape.insert(shape.begin(), k);
  return shape;
}

// A call's inputs in the layout the kernels read (op_common.h's ce_kernel_logits), checked as for
// cross_entropy_fwd (target: the logits' row shape, Long or Byte; weight: one per class of the slice) and
// cross_entropy_lm_fwd (softcap), and
// their description; the tensors keep the described memory alive for as long as the args are used.
struct PartialStatsCall {
  at::Tensor logits, target, weight;
  PartialStatsArgs args;
};

inline PartialStatsCall partial_stats_call(const at::Tensor& logits, const at::Tensor& target,
                                           const c10::optional<at::Tensor>& weight, int64_t class_offset,
                                           int64_t ignore_index, double logit_scale, double softcap) {
  check_ce_hard(logits, target, weight);
  check_softcap(softcap);
  PartialStatsCall c{ce_kernel_logits(logits), target.contiguous(),
                     weight.has_value() ? weight->contiguous() : at::Tensor(), {}};
  c.args = {c.logits.scalar_type(), ce_view(c.logits, ce_geometry(c.logits)), c.target.data_ptr(),
            c.target.scalar_type() == at::kByte, c.weight.defined() ? c.weight.data_ptr() : nullptr, class_offset,
            ignore_index, logit_scale, softcap};
  return c;
}

// The statistics of rows with no class in the slice: the empty log-sum-exp (max -inf, sum 0) and 0 for the
// rest. The kernels are not called for C == 0 (they take a row's first logit as the reference of its sums).
inline at::Tensor classless_partial_stats(const at::Tensor& out) {
  out.zero_();
  out.select(0, kPartialMax).fill_(-std::numeric_limits<double>::infinity());
  return out;
}

inline void check_partial_coefs(const at::Tensor& coefs, const at::Tensor& logits) {
  check_device(coefs, logits, "coefs");
  TORCH_CHECK(coefs.scalar_type() == lse_dtype(logits.scalar_type()) &&
                  coefs.sizes() == at::IntArrayRef(partial_rows_shape(logits, kPartialGradCoefs)),
              "fused_ce: coefs must have shape ", at::IntArrayRef(partial_rows_shape(logits, kPartialGradCoefs)),
              " and dtype ", lse_dtype(logits.scalar_type()), ", got ", coefs.sizes(), " ", coefs.scalar_type());
}

}  // namespace fused_ce
