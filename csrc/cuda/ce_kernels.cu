// Launchers of the cross-entropy row kernels (ce_kernels.cuh): dtype dispatch, grid sizes, and the
// merge of split rows.
#include <type_traits>

#include "cuda/ce_kernels.cuh"

namespace fused_ce::cuda {
namespace {

unsigned int unit_grid(const Tiling& t) { return grid_for(t.units * t.group); }

// The scan of every unit, then (split rows only) the merge of each row's partials.
template <typename T, typename Op>
void launch_scan(const Op& op, void* partials, cudaStream_t stream) {
  const Tiling& t = op.t;
  if (t.units == 0) return;
  auto* p = static_cast<RowStats<acc_of<T>>*>(partials);
  launch_kernel(FUSED_CE_KERNEL(row_stats_kernel<T, Op>), unit_grid(t), kBlock, stream, op, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (t.chunks > 1) {
    launch_kernel(FUSED_CE_KERNEL(merge_kernel<T, Op>), grid_for(t.rows), kBlock, stream, op, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T, typename Op>
void launch_elementwise(const Op& op, cudaStream_t stream) {
  if (op.t.units == 0) return;
  launch_kernel(FUSED_CE_KERNEL(row_elementwise_kernel<T, Op>), unit_grid(op.t), kBlock, stream, op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
SmoothingParams<acc_of<T>> host_smoothing(double eps, int64_t C) {
  // Soft-target formulas use eps and eps/C only, never the weight sum.
  return make_smoothing<acc_of<T>>(eps, C, static_cast<acc_of<T>>(C));
}

}  // namespace

void ce_hard_forward(const CeHardArgs& a, const Tiling& t, const double* weight_sum, void* partials,
                     const CeOutputs& out, cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.logits.data);
    const auto tf = make_logit_transform<acc_of<T>>(a.lm.logit_scale, a.lm.softcap);
    bool_switch(a.label_smoothing > 0, [&](auto smooth) {
      bool_switch(tf.active, [&](auto transform) {
        launch_scan<T>(CeHardForwardOp<T, smooth(), transform()>{x, nullptr, a, weight_sum, out, t, tf}, partials,
                       stream);
      });
    });
  });
}

void ce_hard_backward(const CeHardArgs& a, const Tiling& t, const double* weight_sum, const void* lse,
                      const DeviceGrad& g, void* grad, cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto tf = make_logit_transform<acc_of<T>>(a.lm.logit_scale, a.lm.softcap);
    bool_switch(tf.active, [&](auto transform) {
      bool_switch(grad == a.logits.data, [&](auto in_place) {
        launch_elementwise<T>(
            CeHardBackwardOp<T, transform(), in_place()>{static_cast<const T*>(a.logits.data), nullptr,
                                                         static_cast<T*>(grad), a, weight_sum,
                                                         static_cast<const double*>(lse), g, t, tf},
            stream);
      });
    });
  });
}

void ce_soft_forward(const CeSoftArgs& a, const Tiling& t, void* partials, const CeOutputs& out,
                     cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_scan<T>(CeSoftForwardOp<T>{static_cast<const T*>(a.logits.data), static_cast<const T*>(a.target),
                                      static_cast<const T*>(a.weight), host_smoothing<T>(a.label_smoothing, t.C),
                                      out, t},
                   partials, stream);
  });
}

void ce_soft_backward(const CeSoftArgs& a, const Tiling& t, void* partials, void* row_sums, const void* lse,
                      const DeviceGrad& g, void* grad, cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_of<T>;
    const T* x = static_cast<const T*>(a.logits.data);
    const T* tp = static_cast<const T*>(a.target);
    const T* w = static_cast<const T*>(a.weight);
    const auto sp = host_smoothing<T>(a.label_smoothing, t.C);
    auto* sums = static_cast<A*>(row_sums);
    launch_scan<T>(CeSoftRowSumOp<T>{x, tp, w, sp, sums, t}, partials, stream);
    launch_elementwise<T>(
        CeSoftBackwardOp<T>{x, tp, static_cast<T*>(grad), w, sp, static_cast<const double*>(lse), sums, g, t}, stream);
  });
}

void ce_soft_target_backward(const CeSoftArgs& a, const Tiling& t, const void* lse, const DeviceGrad& g,
                             void* grad, cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise<T>(CeSoftTargetBackwardOp<T>{static_cast<const T*>(a.logits.data), nullptr,
                                                    static_cast<T*>(grad), static_cast<const T*>(a.weight),
                                                    host_smoothing<T>(a.label_smoothing, t.C),
                                                    static_cast<const double*>(lse), g, t},
                          stream);
  });
}

}  // namespace fused_ce::cuda
