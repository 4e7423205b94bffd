// The schema of the fused linear cross-entropy's tile op. ops.cpp defines it in the `fused_ce` library and
// the emulated CUDA build (cuda_emulation/register_emulated.cpp) in its own, as for op_schemas.h.
#pragma once

#include <torch/library.h>

#include "op_common.h"

namespace fused_ce {

inline void define_linear_ce_ops(torch::Library& m) {
  // One row chunk of linear_cross_entropy (python_pkg/fused_ce/_linear_ops.py runs the chunk loop): `tile`
  // holds the (R, C) logits X_chunk W^T (+ b). Returns the per-row loss and log-sum-exp (fp32; fp64 for
  // fp64 logits; 0 on ignored rows). With write_grad, the tile is overwritten with the gradient of
  // sum_i g_i loss_i, g_i = (row_grad[i] or 1) / (denominator or 1) (NaN when the denominator is 0, as
  // for the weighted mean), so no second R x C buffer is needed. The language-model options are those of
  // cross_entropy_lm_fwd (op_schemas.h): the row losses are then those of the transformed logits, the third
  // output holds each row's z-loss (zeros when lse_square_scale is 0), and the gradient adds the z-loss's,
  // whose g_i is (row_grad[i] or 1) / (z_denominator or 1).
  m.def(
      "linear_ce_tile_(Tensor(a!) tile, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
      "Tensor? row_grad, Tensor? denominator, bool write_grad, float logit_scale=1., float softcap=0., "
      "float lse_square_scale=0., Tensor? z_denominator=None) -> (Tensor, Tensor, Tensor)");
}

// Argument checks shared by the CPU and CUDA glue (the Python caller builds valid arguments; these keep
// direct callers away from the kernels).
inline void check_linear_ce_tile(const at::Tensor& tile, const at::Tensor& target,
                                 const c10::optional<at::Tensor>& weight,
                                 const c10::optional<at::Tensor>& row_grad,
                                 const c10::optional<at::Tensor>& denominator,
                                 const c10::optional<at::Tensor>& z_denominator, double softcap) {
  TORCH_CHECK(tile.dim() == 2 && tile.is_contiguous(), "fused_ce: linear_ce_tile_ needs a contiguous (R, C) tile, got ",
              tile.sizes());
  TORCH_CHECK(tile.size(1) > 0, "fused_ce: linear_ce_tile_ needs at least one class");
  check_ce_hard(tile, target, weight);
  if (row_grad.has_value()) {
    TORCH_CHECK(row_grad->sizes() == at::IntArrayRef{tile.size(0)} && row_grad->device() == tile.device(),
                "fused_ce: row_grad must hold one value per tile row, on the tile's device");
  }
  for (const auto* d : {&denominator, &z_denominator}) {
    if (d->has_value()) {
      TORCH_CHECK((*d)->numel() == 1 && (*d)->scalar_type() == at::kDouble && (*d)->device() == tile.device(),
                  "fused_ce: denominator and z_denominator must be one float64 value on the tile's device");
    }
  }
  check_softcap(softcap);
}

}  // namespace fused_ce
