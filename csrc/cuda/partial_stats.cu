// Kernels of the vocabulary-parallel cross-entropy's slice ops: the generic row kernels of ce_kernels.cuh
// (scan with split rows merged in chunk order, and the elementwise gradient) with the formulas of rowmath.h's
// PartialStat section plugged in.
#include "cuda/ce_kernels.cuh"
#include "cuda/partial_stats_cuda.h"

#include <type_traits>

namespace fused_ce::cuda {
namespace {

// Scan: s1 = sum w (z - ref), s2 = sum w (smoothing only); the whole row is scanned whatever its target. The
// scan sees z = f(x) with the language-model options (kLogitTransform), x itself otherwise.
template <typename T, bool kSmooth, bool kLogitTransform>
struct CePartialStatsOp {
  using A = acc_of<T>;
  static constexpr bool kLse = true, kReadsX = true, kReadsTarget = false, kTransform = kLogitTransform;
  const T* x;
  const T* target_probs;  // unused
  PartialStatsArgs a;
  A* out;
  Tiling t;
  LogitTransform<A> tf;

  __device__ A logit(T x) const { return hard_logit<kTransform>(static_cast<A>(x), tf); }
  __device__ bool active(int64_t) const { return true; }
  __device__ A reference(const T* x_row) const { return kSmooth ? sum_reference(logit(x_row[0])) : A(0); }
  template <int M>
  __device__ void add(RowStats<A>& st, const A (&xv)[M], const A (&)[M], int64_t c, A ref) const {
    if constexpr (kSmooth) {
      const T* w = static_cast<const T*>(a.weight);
#pragma unroll
      for (int j = 0; j < M; ++j) {
        const A w_c = weight_at(w, c + j);
        st.s1 += w_c * (xv[j] - ref);
        st.s2 += w_c;
      }
    }
  }
  __device__ void finalize(int64_t r, const RowStats<A>& st) const {
    const int64_t rows = t.rows;
    const T* x_row = x + row_index(t, r).x;
    const int64_t y = read_target(a.target, a.target_is_byte, r);
    const bool on = target_in_slice(y, a.ignore_index, a.class_offset, t.C);
    out[kPartialMax * rows + r] = st.max;
    out[kPartialSumExp * rows + r] = st.sum;
    out[kPartialTargetLogit * rows + r] = on ? logit(x_row[(y - a.class_offset) * t.S]) : A(0);
    out[kPartialTargetWeight * rows + r] = on ? weight_at(static_cast<const T*>(a.weight), y - a.class_offset) : A(0);
    out[kPartialSmoothing * rows + r] = kSmooth ? partial_smoothing_sum(st.s1, st.s2, reference(x_row), st.max) : A(0);
    out[kPartialWeightSum * rows + r] = kSmooth ? st.s2 : A(0);
  }
};

// The gradient for z (ce_hard_grad_*), times dz/dx with the language-model options (kLogitTransform).
template <typename T, bool kLogitTransform>
struct CePartialGradOp {
  using A = acc_of<T>;
  static constexpr bool kReadsTarget = false, kInPlace = false;
  const T* x;
  const T* target_probs;  // unused
  T* grad;
  PartialStatsArgs a;
  const A* row_coefs;  // (4, rows): lse, prob, tgt, klass
  Tiling t;
  LogitTransform<A> tf;

  struct Coefs {
    LseSplit<A> lse;
    CeHardGradCoefs<A> k;
    int64_t y;          // the target's class in the slice, or -1
    bool load_weight;   // the class term is zero without smoothing, so weights are not read
    bool ignored;       // the gradient is 0 whatever the logits hold (the formula gives 0 * inf = NaN)
  };
  __device__ Coefs coefs(int64_t r) const {
    const int64_t rows = t.rows;
    const int64_t y = read_target(a.target, a.target_is_byte, r);
    const CeHardGradCoefs<A> k{row_coefs[rows + r], row_coefs[2 * rows + r], row_coefs[3 * rows + r]};
    return {whole_lse(row_coefs[r]), k, target_in_slice(y, a.ignore_index, a.class_offset, t.C) ? y - a.class_offset : -1,
            a.weight != nullptr && k.klass != A(0), y == a.ignore_index};
  }
  template <int M>
  __device__ void apply(const Coefs& co, const A (&xv)[M], const A (&)[M], int64_t c, A (&out)[M]) const {
    const T* w = static_cast<const T*>(a.weight);
#pragma unroll
    for (int j = 0; j < M; ++j) {
      if (co.ignored) {
        out[j] = A(0);
        continue;
      }
      const A w_c = co.load_weight ? static_cast<A>(w[c + j]) : A(1);
      const A z = hard_logit<kLogitTransform>(xv[j], tf);
      const A dz = c + j == co.y ? ce_hard_grad_on_target(z, co.lse, w_c, co.k)
                                 : ce_hard_grad_off_target(z, co.lse, w_c, co.k.prob, co.k.klass);
      if constexpr (kLogitTransform) {
        out[j] = chain_to_x(dz, z, tf);
      } else {
        out[j] = dz;
      }
    }
  }
};

}  // namespace

void ce_partial_stats_forward(const PartialStatsArgs& a, bool smoothing, const Tiling& t, void* partials, void* out,
                              cudaStream_t stream) {
  if (t.units == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.logits.data);
    auto* o = static_cast<acc_of<T>*>(out);
    auto* p = static_cast<RowStats<acc_of<T>>*>(partials);
    auto scan = [&](const auto& op) {
      using Op = std::decay_t<decltype(op)>;
      launch_kernel(FUSED_CE_KERNEL(row_stats_kernel<T, Op>), grid_for(t.units * t.group), kBlock, stream, op, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (t.chunks > 1) {
        launch_kernel(FUSED_CE_KERNEL(merge_kernel<T, Op>), grid_for(t.rows), kBlock, stream, op, p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    const auto tf = make_logit_transform<acc_of<T>>(a.logit_scale, a.softcap);
    bool_switch(tf.active, [&](auto transform) {
      if (smoothing) {
        scan(CePartialStatsOp<T, true, transform()>{x, nullptr, a, o, t, tf});
      } else {
        scan(CePartialStatsOp<T, false, transform()>{x, nullptr, a, o, t, tf});
      }
    });
  });
}

void ce_partial_grad_backward(const PartialStatsArgs& a, const Tiling& t, const void* coefs, void* grad,
                              cudaStream_t stream) {
  if (t.units == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto tf = make_logit_transform<acc_of<T>>(a.logit_scale, a.softcap);
    bool_switch(tf.active, [&](auto transform) {
      using Op = CePartialGradOp<T, transform()>;
      const Op op{static_cast<const T*>(a.logits.data), nullptr, static_cast<T*>(grad), a,
                  static_cast<const acc_of<T>*>(coefs), t, tf};
      launch_kernel(FUSED_CE_KERNEL(row_elementwise_kernel<T, Op>), grid_for(t.units * t.group), kBlock, stream, op);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fused_ce::cuda
