// CPU impl of linear_ce_tile_ (schema in linear_ce_schema.h): the class-index cross-entropy kernels of
// kernels_impl.h run on one logits tile of the fused linear cross-entropy, and the gradient is written
// over the tile itself.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/kernel_table.h"
#include "linear_ce_schema.h"
#include "mean_division.h"

namespace fused_ce::cpu {
namespace {

// Raises torch's IndexError for the first class index that is neither in range nor ignored.
template <typename index_t>
void check_class_indices(const index_t* t, int64_t n, int64_t ignore_index, int64_t C) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = t[i];
    TORCH_CHECK_INDEX(y == ignore_index || (y >= 0 && y < C), "Target ", y, " is out of bounds.");
  }
}

// A plain left-to-right sum: the same bits at any thread count (C values, once per tile).
double in_order_sum(const at::Tensor& v) {
  const double* p = v.data_ptr<double>();
  double s = 0;
  for (int64_t i = 0; i < v.numel(); ++i) s += p[i];
  return s;
}

double scalar_or_one(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->item<double>() : 1.0; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_ce_tile_(
    at::Tensor& tile, const at::Tensor& target_in, const c10::optional<at::Tensor>& weight_in, int64_t ignore_index,
    double smoothing, const c10::optional<at::Tensor>& row_grad, const c10::optional<at::Tensor>& denominator,
    bool write_grad, double logit_scale, double softcap, double lse_square_scale,
    const c10::optional<at::Tensor>& z_denominator) {
  check_linear_ce_tile(tile, target_in, weight_in, row_grad, denominator, z_denominator, softcap);
  const auto g = ce_geometry(tile);
  const at::Tensor target = target_in.contiguous();
  if (target.scalar_type() == at::kByte) {
    check_class_indices(target.data_ptr<uint8_t>(), g.N, ignore_index, g.C);
  } else {
    check_class_indices(target.data_ptr<int64_t>(), g.N, ignore_index, g.C);
  }
  const at::Tensor weight = weight_in.has_value() ? weight_in->contiguous() : at::Tensor();
  const double weight_sum = weight.defined() ? in_order_sum(weight.to(at::kDouble)) : static_cast<double>(g.C);
  const auto acc = tile.options().dtype(lse_dtype(tile.scalar_type()));
  at::Tensor lse = at::empty({g.N}, acc.dtype(kSavedLseDtype)), row_loss = at::empty({g.N}, acc),
             z_rows = at::empty({g.N}, acc);
  CeHardArgs args{tile.scalar_type(), ce_view(tile, g), target.data_ptr(), target.scalar_type() == at::kByte,
                  weight.defined() ? weight.data_ptr() : nullptr, ignore_index, smoothing, weight_sum};
  args.lm = {logit_scale, softcap, lse_square_scale, z_rows.data_ptr()};
  kernels().ce_hard_forward(args, lse.data_ptr(), row_loss.data_ptr());
  if (!write_grad) return {row_loss, lse.to(acc.dtype()), z_rows};

  // The backward kernel reads every logit (the row's target one first) before it stores over it, so the
  // gradient is written over the tile itself.
  const at::Tensor per_row = row_grad.has_value() ? row_grad->to(at::kDouble).contiguous() : at::Tensor();
  RowGrad rg{per_row.defined() ? per_row.data_ptr<double>() : nullptr, mean_divide(1.0, scalar_or_one(denominator))};
  rg.z_scale = mean_divide(1.0, scalar_or_one(z_denominator));
  args.lm.z_loss_rows = nullptr;
  kernels().ce_hard_backward(args, lse.data_ptr(), rg, tile.data_ptr());
  return {row_loss, lse.to(acc.dtype()), z_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_ce, CPU, m) { m.impl("linear_ce_tile_", &linear_ce_tile_); }

}  // namespace fused_ce::cpu
