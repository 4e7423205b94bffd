// CPU impl of linear_ce_tile_ (schema in linear_ce_schema.h): the class-index cross-entropy kernels of
// kernels_impl.h run on one logits tile of the fused linear cross-entropy, and the gradient is written
// over the tile itself.
#include <ATen/Dispatch.h>
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

int64_t target_at(const at::Tensor& t, int64_t i) {
  return t.scalar_type() == at::kByte ? t.data_ptr<uint8_t>()[i] : t.data_ptr<int64_t>()[i];
}

// The backward kernel writes a row's target entry last, from x[y], which it has already overwritten when
// the output is the tile itself. The target logits are kept before, and the entry is written again from
// them with the same row math (rowmath.h) the kernel uses.
template <typename scalar_t>
void rewrite_target_entries(const CeHardArgs& a, at::Tensor& tile, const at::Tensor& target,
                            const std::vector<scalar_t>& x_target, const at::Tensor& lse, const RowGrad& g) {
  using acc_t = typename AccOf<scalar_t>::type;
  const auto* w = static_cast<const scalar_t*>(a.weight);
  const auto sp = make_smoothing<acc_t>(a.label_smoothing, a.logits.C, static_cast<acc_t>(a.weight_sum));
  auto* out = tile.data_ptr<scalar_t>();
  const auto* l = lse.data_ptr<acc_t>();
  for (int64_t i = 0; i < a.logits.N; ++i) {
    const int64_t y = target_at(target, i);
    if (y == a.ignore_index) continue;
    const acc_t w_y = w ? static_cast<acc_t>(w[y]) : acc_t(1);
    const acc_t gi = static_cast<acc_t>((g.per_row ? g.per_row[i] : 1.0) * g.scale);
    out[i * a.logits.C + y] = static_cast<scalar_t>(
        ce_hard_grad_on_target(static_cast<acc_t>(x_target[i]), l[i], w_y, ce_hard_grad_coefs(gi, w_y, sp)));
  }
}

std::tuple<at::Tensor, at::Tensor> linear_ce_tile_(at::Tensor& tile, const at::Tensor& target_in,
                                                   const c10::optional<at::Tensor>& weight_in, int64_t ignore_index,
                                                   double smoothing, const c10::optional<at::Tensor>& row_grad,
                                                   const c10::optional<at::Tensor>& denominator, bool write_grad) {
  check_linear_ce_tile(tile, target_in, weight_in, row_grad, denominator);
  const auto g = ce_geometry(tile);
  const at::Tensor target = target_in.contiguous();
  if (target.scalar_type() == at::kByte) {
    check_class_indices(target.data_ptr<uint8_t>(), g.N, ignore_index, g.C);
  } else {
    check_class_indices(target.data_ptr<int64_t>(), g.N, ignore_index, g.C);
  }
  const at::Tensor weight = weight_in.has_value() ? weight_in->contiguous() : at::Tensor();
  const double weight_sum = weight.defined() ? in_order_sum(weight.to(at::kDouble)) : static_cast<double>(g.C);
  const CeHardArgs args{tile.scalar_type(), ce_view(tile, g), target.data_ptr(), target.scalar_type() == at::kByte,
                        weight.defined() ? weight.data_ptr() : nullptr, ignore_index, smoothing, weight_sum};
  const auto acc = tile.options().dtype(lse_dtype(tile.scalar_type()));
  at::Tensor lse = at::empty({g.N}, acc), row_loss = at::empty({g.N}, acc);
  kernels().ce_hard_forward(args, lse.data_ptr(), row_loss.data_ptr());
  if (!write_grad) return {row_loss, lse};

  const at::Tensor per_row = row_grad.has_value() ? row_grad->to(at::kDouble).contiguous() : at::Tensor();
  const RowGrad rg{per_row.defined() ? per_row.data_ptr<double>() : nullptr,
                   denominator.has_value() ? mean_divide(1.0, denominator->item<double>()) : 1.0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tile.scalar_type(), "linear_ce_tile_", [&] {
    std::vector<scalar_t> x_target(g.N);
    const scalar_t* x = tile.data_ptr<scalar_t>();
    for (int64_t i = 0; i < g.N; ++i) {
      const int64_t y = target_at(target, i);
      x_target[i] = y == ignore_index ? scalar_t(0) : x[i * g.C + y];
    }
    kernels().ce_hard_backward(args, lse.data_ptr(), rg, tile.data_ptr());
    rewrite_target_entries<scalar_t>(args, tile, target, x_target, lse, rg);
  });
  return {row_loss, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_ce, CPU, m) { m.impl("linear_ce_tile_", &linear_ce_tile_); }

}  // namespace fused_ce::cpu
