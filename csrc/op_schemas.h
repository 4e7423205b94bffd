// The op schemas of fused_ce, written once. ops.cpp defines them in the `fused_ce` library; the
// emulated CUDA build (cuda_emulation/register_emulated.cpp) defines the same schemas in a library of
// its own, so its ops never replace the real CPU kernels. `reduction` is at::Reduction's value:
// 0 none, 1 mean, 2 sum.
#pragma once

#include <torch/library.h>

namespace fused_ce {

inline void define_ops(torch::Library& m) {
  // Class-index targets. Returns the loss and the per-row log-sum-exp (fp32; fp64 for fp64 logits),
  // the only tensor that backward needs besides the inputs.
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, int reduction) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "int ignore_index, float label_smoothing, int reduction) -> Tensor");
  // Class-index targets with the language-model options: the logits are transformed (logit_scale, then
  // softcap; 0 turns it off) and lse_square_scale * lse^2 (the z-loss) is added for every counted row.
  // Returns the loss (z-loss included), the lse of the transformed logits, and the z-loss alone, reduced
  // like the loss ('mean' over the counted rows), in the lse's dtype. The backward's `_` variant writes
  // the gradient over the logits (which must be contiguous) and returns nothing.
  m.def(
      "cross_entropy_lm_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, int reduction, float logit_scale, float softcap, float lse_square_scale) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "cross_entropy_lm_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "int ignore_index, float label_smoothing, int reduction, float logit_scale, float softcap, "
      "float lse_square_scale) -> Tensor");
  m.def(
      "cross_entropy_lm_bwd_(Tensor grad, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor lse, "
      "int ignore_index, float label_smoothing, int reduction, float logit_scale, float softcap, "
      "float lse_square_scale) -> ()");
  // Class-probability targets (target has the logits' shape and dtype).
  m.def(
      "cross_entropy_soft_fwd(Tensor logits, Tensor target, Tensor? weight, float label_smoothing, "
      "int reduction) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_soft_bwd(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "float label_smoothing, int reduction) -> Tensor");
  m.def(
      "cross_entropy_soft_target_bwd(Tensor grad, Tensor logits, Tensor? weight, Tensor lse, "
      "float label_smoothing, int reduction) -> Tensor");
  // Binary cross-entropy with logits; weight and pos_weight broadcast to the input.
  m.def(
      "bce_with_logits_fwd(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "int reduction) -> Tensor");
  m.def(
      "bce_with_logits_bwd(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, int reduction) -> Tensor");
  m.def(
      "bce_with_logits_target_bwd(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, int reduction) -> Tensor");
}

}  // namespace fused_ce
