// Cross-entropy row kernels. Three generic kernels walk the units of a Tiling (launchers.h):
//  * row_stats_kernel: a scan of each unit (online log-sum-exp and the op's sums), reduced over the
//    unit's threads; a whole row is finalized at once, a split row leaves one partial per chunk,
//  * merge_kernel: merges a split row's partials in chunk order (lse_merge) and finalizes it,
//  * row_elementwise_kernel: per-row coefficients, then one gradient value per class.
// The ops below plug the formulas of rowmath.h into them; the kernels never see the math.
#pragma once

#include "cuda/device_common.cuh"

namespace fused_ce::cuda {

// Pointers into row r of a (N, C, S) layout: logits at the logits' row stride, everything else dense.
struct RowIndex {
  int64_t x;      // logits offset of class 0
  int64_t dense;  // offset of class 0 in contiguous (N, C, S) tensors
};

__device__ __forceinline__ RowIndex row_index(const Tiling& t, int64_t r) {
  const int64_t n = r / t.S, s = r - n * t.S;
  return {n * t.x_stride_n + s, n * t.C * t.S + s};
}

__device__ __forceinline__ int64_t read_target(const void* target, bool is_byte, int64_t r) {
  return is_byte ? static_cast<int64_t>(static_cast<const uint8_t*>(target)[r])
                 : static_cast<const int64_t*>(target)[r];
}

template <typename T, typename A = acc_of<T>>
__device__ __forceinline__ A weight_at(const T* w, int64_t c) {
  return w ? static_cast<A>(w[c]) : A(1);
}

enum class TargetState { kLive, kIgnored, kInvalid };

__device__ __forceinline__ TargetState classify(int64_t t, int64_t ignore_index, int64_t C) {
  if (t == ignore_index) return TargetState::kIgnored;
  return (t >= 0 && t < C) ? TargetState::kLive : TargetState::kInvalid;
}

template <typename A>
__device__ __forceinline__ SmoothingParams<A> device_smoothing(double eps, int64_t C, const double* weight_sum) {
  return make_smoothing<A>(eps, C, weight_sum ? static_cast<A>(*weight_sum) : static_cast<A>(C));
}

template <typename T>
__device__ __forceinline__ void write_loss(const CeOutputs& out, int64_t r, double lse, acc_of<T> loss) {
  using A = acc_of<T>;
  static_cast<double*>(out.lse)[r] = lse;  // lse_saved
  if (out.loss_rows) {
    static_cast<T*>(out.loss_rows)[r] = static_cast<T>(loss);
  } else {
    static_cast<A*>(out.loss_acc)[r] = loss;
  }
}

// The logits as the formulas of class-index cross-entropy see them: x, or with the language-model
// options (kTransform) z = f(x), LogitTransform in rowmath.h.
template <bool kTransform, typename A>
__device__ __forceinline__ A hard_logit(A x, const LogitTransform<A>& tf) {
  if constexpr (kTransform) {
    return transform_logit(x, tf);
  } else {
    return x;
  }
}

// ------------------------------------------------------------------------------------------------
// Scan ops: kLse (the scan keeps a log-sum-exp), kReadsX, kReadsTarget (a dense tensor shaped like
// the logits), kTransform (the scan sees z = f(x), with the op's `tf`), active(r) (rows that are not
// scanned still finalize), reference(x_row) (the value that the sums of z are taken relative to),
// add<M>(stats, z, t, c, ref), finalize(r, stats).
// ------------------------------------------------------------------------------------------------
// Class-index targets, forward: s1 = sum w (z - ref) (smoothing only). With the language-model options
// the logits are transformed (kLogitTransform) and, when lm.z_loss_rows is given, each row's z-loss is
// written there and added to the loss of reduction='none'.
template <typename T, bool kSmooth, bool kLogitTransform>
struct CeHardForwardOp {
  using A = acc_of<T>;
  static constexpr bool kLse = true, kReadsX = true, kReadsTarget = false, kTransform = kLogitTransform;
  const T* x;
  const T* target_probs;  // unused
  CeHardArgs a;
  const double* weight_sum;
  CeOutputs out;
  Tiling t;
  LogitTransform<A> tf;

  __device__ A logit(T x) const { return hard_logit<kTransform>(static_cast<A>(x), tf); }
  __device__ bool active(int64_t r) const {
    return classify(read_target(a.target, a.target_is_byte, r), a.ignore_index, t.C) == TargetState::kLive;
  }
  __device__ A reference(const T* x_row) const { return kSmooth ? sum_reference(logit(x_row[0])) : A(0); }
  // The target's logit as the row's loss reads it: transformed, as parts (rowmath.h, LogitParts).
  __device__ auto target_logit(T x) const {
    if constexpr (kTransform) {
      return transform_to_parts(static_cast<A>(x), tf);
    } else {
      return static_cast<A>(x);
    }
  }
  template <int M>
  __device__ void add(RowStats<A>& st, const A (&xv)[M], const A (&)[M], int64_t c, A ref) const {
    if constexpr (kSmooth) {
      const T* w = static_cast<const T*>(a.weight);
#pragma unroll
      for (int j = 0; j < M; ++j) st.s1 += weight_at(w, c + j) * (xv[j] - ref);
    }
  }
  __device__ void finalize(int64_t r, const RowStats<A>& st) const {
    const int64_t y = read_target(a.target, a.target_is_byte, r);
    const TargetState state = classify(y, a.ignore_index, t.C);
    if (state == TargetState::kIgnored) return write_row(r, 0.0, A(0), A(0));
    const LseParts<A> parts = lse_parts(LseState<A>{st.max, st.sum});
    const A lse = lse_value(parts);
    // An out-of-range class is never used as an index: its row reads NaN (see ops_cuda.cpp).
    if (state == TargetState::kInvalid) return write_row(r, lse_saved(parts), A(NAN), A(NAN));
    const T* x_row = x + row_index(t, r).x;
    const auto sp = device_smoothing<A>(a.label_smoothing, t.C, weight_sum);
    const A loss = ce_hard_row_loss(parts, target_logit(x_row[y * t.S]), weight_at(static_cast<const T*>(a.weight), y), st.s1,
                                    reference(x_row), sp);
    write_row(r, lse_saved(parts), loss, z_loss_row(lse, static_cast<A>(a.lm.lse_square_scale)));
  }
  __device__ void write_row(int64_t r, double lse, A ce, A z_loss) const {
    if (a.lm.z_loss_rows) {
      static_cast<A*>(a.lm.z_loss_rows)[r] = z_loss;
      if (out.loss_rows) ce += z_loss;  // reduction='none': one rounding of the sum to T
    }
    write_loss<T>(out, r, lse, ce);
  }
};

// Soft targets, forward: s1 = sum w t', s2 = sum w t' (x - ref).
template <typename T>
struct CeSoftForwardOp {
  using A = acc_of<T>;
  static constexpr bool kLse = true, kReadsX = true, kReadsTarget = true, kTransform = false;
  const T* x;
  const T* target_probs;
  const T* w;
  SmoothingParams<A> sp;
  CeOutputs out;
  Tiling t;

  __device__ bool active(int64_t) const { return true; }
  __device__ A reference(const T* x_row) const { return sum_reference(static_cast<A>(x_row[0])); }
  template <int M>
  __device__ void add(RowStats<A>& st, const A (&xv)[M], const A (&tv)[M], int64_t c, A ref) const {
#pragma unroll
    for (int j = 0; j < M; ++j) {
      A wt = smoothed_target(tv[j], sp);
      if (w) wt = wt * static_cast<A>(w[c + j]);
      st.s1 += wt;
      st.s2 += wt * (xv[j] - ref);
    }
  }
  __device__ void finalize(int64_t r, const RowStats<A>& st) const {
    const LseParts<A> parts = lse_parts(LseState<A>{st.max, st.sum});
    write_loss<T>(out, r, lse_saved(parts), ce_soft_row_loss(parts, st.s1, st.s2, reference(x + row_index(t, r).x)));
  }
};

// Soft targets, first pass of backward: s1 = sum w t' per row, into row_sums.
template <typename T>
struct CeSoftRowSumOp {
  using A = acc_of<T>;
  static constexpr bool kLse = false, kReadsX = false, kReadsTarget = true, kTransform = false;
  const T* x;
  const T* target_probs;
  const T* w;
  SmoothingParams<A> sp;
  A* row_sums;
  Tiling t;

  __device__ bool active(int64_t) const { return true; }
  __device__ A reference(const T*) const { return A(0); }
  template <int M>
  __device__ void add(RowStats<A>& st, const A (&)[M], const A (&tv)[M], int64_t c, A) const {
#pragma unroll
    for (int j = 0; j < M; ++j) {
      const A tp = smoothed_target(tv[j], sp);
      st.s1 += w ? tp * static_cast<A>(w[c + j]) : tp;
    }
  }
  __device__ void finalize(int64_t r, const RowStats<A>& st) const { row_sums[r] = st.s1; }
};

// Loaded logits become what the scan op's formulas read: z = f(x) for an op with kTransform, else x.
template <typename Op, int M, typename A>
__device__ __forceinline__ void to_op_logits(const Op& op, A (&xv)[M]) {
  if constexpr (Op::kTransform) {
#pragma unroll
    for (int j = 0; j < M; ++j) xv[j] = transform_logit(xv[j], op.tf);
  }
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kBlock) row_stats_kernel(Op op, RowStats<acc_of<T>>* partials) {
  using A = acc_of<T>;
  constexpr int kVec = kVecOf<T>;
  const Tiling& t = op.t;
  const int G = t.group;
  const int lane = threadIdx.x & (G - 1);
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * (kBlock / G) + threadIdx.x / G;
  const bool live = unit < t.units;
  const int64_t k = live ? unit / t.rows : 0;
  const int64_t r = live ? unit - k * t.rows : 0;
  BlockedRowStats<A> acc = blocked_stats_empty<A>();
  if (live && op.active(r)) {
    const RowIndex ri = row_index(t, r);
    const T* x_row = op.x + ri.x;
    const A ref = op.reference(x_row);
    const int64_t c0 = k * t.chunk_len;
    const int64_t len = t.C - c0 < t.chunk_len ? t.C - c0 : t.chunk_len;
    const T* x = x_row + c0 * t.S;
    const T* tp = Op::kReadsTarget ? op.target_probs + ri.dense + c0 * t.S : nullptr;
    auto one = [&](int64_t c) {
      A xv[1] = {Op::kReadsX ? static_cast<A>(x[c * t.S]) : A(0)};
      A tv[1] = {Op::kReadsTarget ? static_cast<A>(tp[c * t.S]) : A(0)};
      to_op_logits(op, xv);
      acc.visit([&](RowStats<A>& st) {
        if constexpr (Op::kLse) lse_add<1>(st, xv);
        op.template add<1>(st, xv, tv, c0 + c, ref);
      });
    };
    if (t.S == 1) {
      auto vec = [&](int64_t c) {
        A xv[kVec] = {}, tv[kVec] = {};
        if constexpr (Op::kReadsX) load_pack(x + c, xv);
        if constexpr (Op::kReadsTarget) load_pack(tp + c, tv);
        to_op_logits(op, xv);
        acc.visit([&](RowStats<A>& st) {
          if constexpr (Op::kLse) lse_add<kVec>(st, xv);
          op.template add<kVec>(st, xv, tv, c0 + c, ref);
        });
      };
      const T* lead = Op::kReadsX ? x : tp;
      const int head = same_alignment(lead, Op::kReadsX ? tp : nullptr) ? vector_head(lead) : -1;
      visit_classes<T>(len, head, lane, G, one, vec);
    } else {
      for (int64_t c = 0; c < len; ++c) one(c);
    }
  }
  const RowStats<A> st = group_reduce(acc.value(), G);
  if (live && lane == 0) {
    if (t.chunks == 1) {
      op.finalize(r, st);
    } else {
      partials[r * t.chunks + k] = st;
    }
  }
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kBlock) merge_kernel(Op op, const RowStats<acc_of<T>>* partials) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (r >= op.t.rows) return;
  const RowStats<acc_of<T>>* p = partials + r * op.t.chunks;
  RowStats<acc_of<T>> st = p[0];
  for (int64_t k = 1; k < op.t.chunks; ++k) st = stats_merge(st, p[k]);
  op.finalize(r, st);
}

// ------------------------------------------------------------------------------------------------
// Elementwise ops: kReadsTarget, kInPlace (grad == x: loads must not use the read-only cache),
// coefs(r) (per-row values), apply<M>(coefs, x, t, c, out).
// ------------------------------------------------------------------------------------------------
// Class-index targets, backward, with the language-model options: the logits transform (kLogitTransform:
// the gradient for z times dz/dx) and the z-loss (its term joins the coefficient of p[c]). In place
// (kWritesOverLogits, the gradient written over the logits) every element is read, then written, by one
// thread, and nothing else of the logits is read: the per-row coefficients come from lse, the target and
// the upstream gradient, and the target class's own term is computed from its own element, so neither
// split rows nor the target logit need ordering between threads.
template <typename T, bool kLogitTransform, bool kWritesOverLogits>
struct CeHardBackwardOp {
  using A = acc_of<T>;
  static constexpr bool kReadsTarget = false, kInPlace = kWritesOverLogits;
  const T* x;
  const T* target_probs;  // unused
  T* grad;
  CeHardArgs a;
  const double* weight_sum;
  const double* lse;  // lse_saved
  DeviceGrad g;
  Tiling t;
  LogitTransform<A> tf;

  struct Coefs {
    TargetState state;
    int64_t y;
    LseSplit<A> lse;
    A w_y;
    bool load_weight;  // the class term w[c] is zero without smoothing, so weights are not read
    CeHardGradCoefs<A> k;
  };
  __device__ Coefs coefs(int64_t r) const {
    Coefs co{};
    co.y = read_target(a.target, a.target_is_byte, r);
    co.state = classify(co.y, a.ignore_index, t.C);
    if (co.state != TargetState::kLive) return co;
    const auto sp = device_smoothing<A>(a.label_smoothing, t.C, weight_sum);
    const T* w = static_cast<const T*>(a.weight);
    co.lse = split_lse<A>(lse[r]);
    co.w_y = weight_at(w, co.y);
    co.load_weight = sp.enabled && w != nullptr;
    co.k = ce_hard_grad_coefs(static_cast<A>(grad_value<T>(g, r)), co.w_y, sp);
    if (a.lm.lse_square_scale != 0) {
      co.k.prob += z_loss_prob_coef(static_cast<A>(z_grad_value<T>(g, r)), co.lse.hi,
                                    static_cast<A>(a.lm.lse_square_scale));
    }
    co.k.prob *= lse_lo_factor(co.lse);
    return co;
  }
  template <int M>
  __device__ void apply(const Coefs& co, const A (&xv)[M], const A (&)[M], int64_t c, A (&out)[M]) const {
    const T* w = static_cast<const T*>(a.weight);
#pragma unroll
    for (int j = 0; j < M; ++j) {
      if (co.state == TargetState::kIgnored) {
        out[j] = A(0);
      } else if (co.state == TargetState::kInvalid) {
        out[j] = A(NAN);
      } else {
        const bool on_target = c + j == co.y;
        const A w_c = !on_target && co.load_weight ? static_cast<A>(w[c + j]) : A(1);
        auto dz = [&](auto z) {
          return on_target ? ce_hard_grad_on_target(z, co.lse, co.w_y, co.k)
                           : ce_hard_grad_off_target(z, co.lse, w_c, co.k.prob, co.k.klass);
        };
        if constexpr (kLogitTransform) {
          out[j] = grad_for_x(xv[j], tf, dz);
        } else {
          out[j] = dz(xv[j]);
        }
      }
    }
  }
};

template <typename T>
struct CeSoftBackwardOp {
  using A = acc_of<T>;
  static constexpr bool kReadsTarget = true, kInPlace = false;
  const T* x;
  const T* target_probs;
  T* grad;
  const T* w;
  SmoothingParams<A> sp;
  const double* lse;  // lse_saved
  const A* row_sums;
  DeviceGrad g;
  Tiling t;

  struct Coefs {
    LseSplit<A> lse;
    A g, g_sum_wt;
  };
  __device__ Coefs coefs(int64_t r) const {
    const A gr = static_cast<A>(grad_value<T>(g, r));
    const LseSplit<A> split = split_lse<A>(lse[r]);
    return {split, gr, gr * row_sums[r] * lse_lo_factor(split)};
  }
  template <int M>
  __device__ void apply(const Coefs& co, const A (&xv)[M], const A (&tv)[M], int64_t c, A (&out)[M]) const {
#pragma unroll
    for (int j = 0; j < M; ++j) {
      A wt = smoothed_target(tv[j], sp);
      if (w) wt = wt * static_cast<A>(w[c + j]);
      out[j] = ce_soft_grad(xv[j], co.lse, wt, co.g_sum_wt, co.g);
    }
  }
};

template <typename T>
struct CeSoftTargetBackwardOp {
  using A = acc_of<T>;
  static constexpr bool kReadsTarget = false, kInPlace = false;
  const T* x;
  const T* target_probs;  // unused
  T* grad;
  const T* w;
  SmoothingParams<A> sp;
  const double* lse;  // lse_saved
  DeviceGrad g;
  Tiling t;

  struct Coefs {
    LseSplit<A> lse;
    A g_keep;
  };
  __device__ Coefs coefs(int64_t r) const {
    return {split_lse<A>(lse[r]), static_cast<A>(grad_value<T>(g, r)) * (A(1) - sp.eps)};
  }
  template <int M>
  __device__ void apply(const Coefs& co, const A (&xv)[M], const A (&)[M], int64_t c, A (&out)[M]) const {
#pragma unroll
    for (int j = 0; j < M; ++j) out[j] = ce_soft_target_grad(xv[j], co.lse, weight_at(w, c + j), co.g_keep);
  }
};

template <typename T, typename Op>
__global__ void __launch_bounds__(kBlock) row_elementwise_kernel(Op op) {
  using A = acc_of<T>;
  constexpr int kVec = kVecOf<T>;
  const Tiling& t = op.t;
  const int G = t.group;
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * (kBlock / G) + threadIdx.x / G;
  if (unit >= t.units) return;
  const int lane = threadIdx.x & (G - 1);
  const int64_t k = unit / t.rows, r = unit - k * t.rows;
  const auto co = op.coefs(r);
  const RowIndex ri = row_index(t, r);
  const int64_t c0 = k * t.chunk_len;
  const int64_t len = t.C - c0 < t.chunk_len ? t.C - c0 : t.chunk_len;
  const T* x = op.x + ri.x + c0 * t.S;
  const T* tp = Op::kReadsTarget ? op.target_probs + ri.dense + c0 * t.S : nullptr;
  T* out = op.grad + ri.dense + c0 * t.S;
  auto one = [&](int64_t c) {
    A xv[1] = {static_cast<A>(x[c * t.S])};
    A tv[1] = {Op::kReadsTarget ? static_cast<A>(tp[c * t.S]) : A(0)};
    A ov[1];
    op.template apply<1>(co, xv, tv, c0 + c, ov);
    out[c * t.S] = static_cast<T>(ov[0]);
  };
  if (t.S == 1) {
    auto vec = [&](int64_t c) {
      A xv[kVec], tv[kVec] = {}, ov[kVec];
      load_pack<!Op::kInPlace>(x + c, xv);
      if constexpr (Op::kReadsTarget) load_pack(tp + c, tv);
      op.template apply<kVec>(co, xv, tv, c0 + c, ov);
      store_pack(out + c, ov);
    };
    const bool aligned = same_alignment<T>(x, out) && same_alignment<T>(x, tp);
    visit_classes<T>(len, aligned ? vector_head(x) : -1, lane, G, one, vec);
  } else {
    for (int64_t c = 0; c < len; ++c) one(c);
  }
}

}  // namespace fused_ce::cuda
