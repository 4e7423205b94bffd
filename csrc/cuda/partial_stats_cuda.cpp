// CUDA impls of the vocabulary-parallel cross-entropy's slice ops (schemas in partial_stats_schema.h, kernels
// in partial_stats.cu). As in ops_cuda.cpp nothing waits for the GPU; targets outside the slice (ignored, on
// another rank's slice, or out of range) simply contribute no target term.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/partial_stats_cuda.h"
#include "partial_stats_schema.h"

namespace fused_ce::cuda {
namespace {

at::Tensor ce_partial_stats(const at::Tensor& logits, const at::Tensor& target,
                            const c10::optional<at::Tensor>& weight, int64_t class_offset, int64_t ignore_index,
                            bool smoothing, double logit_scale, double softcap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const PartialStatsCall p =
      partial_stats_call(logits, target, weight, class_offset, ignore_index, logit_scale, softcap);
  const Tiling tiling = plan_tiling(p.args.logits, logits.element_size());
  at::Tensor out = at::empty(partial_rows_shape(logits, kPartialStatCount),
                             logits.options().dtype(lse_dtype(logits.scalar_type())));
  if (p.args.logits.C == 0) return classless_partial_stats(out);
  const int64_t bytes = partials_bytes(tiling, logits.scalar_type() == at::kDouble ? 8 : 4);
  const at::Tensor partials = bytes > 0 ? at::empty({bytes}, logits.options().dtype(at::kByte)) : at::Tensor();
  ce_partial_stats_forward(p.args, smoothing, tiling, partials.defined() ? partials.data_ptr() : nullptr,
                           out.data_ptr(), stream);
  return out;
}

at::Tensor ce_partial_grad(const at::Tensor& logits, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                           const at::Tensor& coefs_in, int64_t class_offset, int64_t ignore_index, double logit_scale,
                           double softcap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const PartialStatsCall p =
      partial_stats_call(logits, target, weight, class_offset, ignore_index, logit_scale, softcap);
  const Tiling tiling = plan_tiling(p.args.logits, logits.element_size());
  check_partial_coefs(coefs_in, logits);
  const at::Tensor coefs = coefs_in.contiguous();
  at::Tensor grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  ce_partial_grad_backward(p.args, tiling, coefs.data_ptr(), grad.data_ptr(), stream);
  return grad;
}

}  // namespace

void register_partial_stats_impls(torch::Library& m) {
  m.impl("ce_partial_stats", &ce_partial_stats);
  m.impl("ce_partial_grad", &ce_partial_grad);
}

}  // namespace fused_ce::cuda
