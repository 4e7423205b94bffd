// CUDA impl of linear_ce_tile_ (schema in linear_ce_schema.h): the class-index cross-entropy kernels of
// ce_kernels.cu run on one logits tile of the fused linear cross-entropy. The backward kernel is
// elementwise: every logit is loaded and its gradient stored by the same thread, the target entry
// included, so it writes over the tile in place. As in ops_cuda.cpp nothing waits for the GPU: an
// out-of-range class index gives a NaN row instead of an error.
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launchers.h"
#include "cuda/linear_ce_cuda.h"
#include "linear_ce_schema.h"

namespace fused_ce::cuda {
namespace {

// The sum of the class weights as one double on the device, in a fixed order (reduce.cu).
at::Tensor device_weight_sum(const at::Tensor& weight, cudaStream_t stream) {
  const at::Tensor w = weight.to(at::kDouble).contiguous();
  const int64_t count = sum_partial_count(w.numel());
  at::Tensor partials = at::empty({std::max<int64_t>(count, 1)}, w.options());
  at::Tensor out = at::empty({}, w.options());
  sum_partials(at::kDouble, w.data_ptr(), w.numel(), partials.data_ptr<double>(), stream);
  finish_sum(partials.data_ptr<double>(), count, nullptr, 1.0, at::kDouble, out.data_ptr(), stream);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_ce_tile_(
    at::Tensor& tile, const at::Tensor& target_in, const c10::optional<at::Tensor>& weight_in, int64_t ignore_index,
    double smoothing, const c10::optional<at::Tensor>& row_grad, const c10::optional<at::Tensor>& denominator,
    bool write_grad, double logit_scale, double softcap, double lse_square_scale,
    const c10::optional<at::Tensor>& z_denominator) {
  check_linear_ce_tile(tile, target_in, weight_in, row_grad, denominator, z_denominator, softcap);
  const c10::cuda::CUDAGuard guard(tile.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto g = ce_geometry(tile);
  const at::Tensor target = target_in.contiguous();
  const at::Tensor weight = weight_in.has_value() ? weight_in->contiguous() : at::Tensor();
  const at::Tensor wsum = weight.defined() && smoothing > 0 ? device_weight_sum(weight, stream) : at::Tensor();
  const double* wsum_ptr = wsum.defined() ? wsum.data_ptr<double>() : nullptr;
  CeHardArgs args{tile.scalar_type(), ce_view(tile, g), target.data_ptr(), target.scalar_type() == at::kByte,
                  weight.defined() ? weight.data_ptr() : nullptr, ignore_index, smoothing, static_cast<double>(g.C)};
  const Tiling tiling = plan_tiling(args.logits, tile.element_size());
  const int64_t partial_bytes = partials_bytes(tiling, tile.scalar_type() == at::kDouble ? 8 : 4);
  const at::Tensor partials = partial_bytes > 0 ? at::empty({partial_bytes}, tile.options().dtype(at::kByte)) : at::Tensor();
  const auto acc = tile.options().dtype(lse_dtype(tile.scalar_type()));
  at::Tensor lse = at::empty({g.N}, acc.dtype(kSavedLseDtype)), row_loss = at::empty({g.N}, acc), z_rows = at::empty({g.N}, acc);
  args.lm = {logit_scale, softcap, lse_square_scale, z_rows.data_ptr()};
  ce_hard_forward(args, tiling, wsum_ptr, partials.defined() ? partials.data_ptr() : nullptr,
                  CeOutputs{lse.data_ptr(), nullptr, row_loss.data_ptr()}, stream);
  if (!write_grad) return {row_loss, lse.to(acc.dtype()), z_rows};
  args.lm.z_loss_rows = nullptr;

  const at::Tensor grad = row_grad.has_value() ? row_grad->to(tile.scalar_type()).contiguous()
                                               : at::ones({}, tile.options().dtype(at::kDouble));  // DeviceGrad
  DeviceGrad dg{grad.data_ptr(), row_grad.has_value(),
                denominator.has_value() ? denominator->data_ptr<double>() : nullptr, 1.0};
  dg.z_denominator = z_denominator.has_value() ? z_denominator->data_ptr<double>() : nullptr;
  ce_hard_backward(args, tiling, wsum_ptr, lse.data_ptr(), dg, tile.data_ptr(), stream);
  return {row_loss, lse.to(acc.dtype()), z_rows};
}

}  // namespace

void register_linear_ce_impls(torch::Library& m) { m.impl("linear_ce_tile_", &linear_ce_tile_); }

}  // namespace fused_ce::cuda
