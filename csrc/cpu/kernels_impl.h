// The CPU kernels, written once against at::vec and compiled once per instruction set: each
// kernels_<isa>.cpp includes this file with its own CPU_CAPABILITY (see setup.py), which selects the
// at::vec implementation and names the namespace, so the copies never collide.
//
// Two layouts share one online log-sum-exp scan (lse_scan):
//  * rows  (S == 1): a vector holds kLanes consecutive classes of one row; lanes are merged at the end.
//  * lanes (S > 1):  a vector holds kLanes positions d of the N-D layout for one class; each lane is
//                    its own row, and classes are kLanes... apart by the stride S.
// Either way each logit is read from memory once in the forward pass: the scan takes a block of
// kChunkSteps vectors, finds its max, then sums exp(x - max) over the same block while it is in L1.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "cpu/grain.h"
#include "cpu/kernel_table.h"
#include "cpu/vec_math.h"
#include "dtype_dispatch.h"
#include "rowmath.h"

#ifndef CPU_CAPABILITY
#error "compile kernels_impl.h with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512> (see setup.py)"
#endif

namespace fused_ce::cpu {
namespace CPU_CAPABILITY {

// Software prefetch distance for streamed reads. The hardware prefetcher alone leaves the loads of a
// streaming kernel waiting on memory on some machines (measured on a 2-core Xeon VM: bf16 backward at
// 4096x32000 took 64 ms without it and 28-45 ms with it, BCE fp32 4096x4096 32 ms and 20 ms); an explicit
// prefetch this far ahead hides the latency.
#ifndef FUSED_CE_PREFETCH_BYTES
#define FUSED_CE_PREFETCH_BYTES 2048
#endif
constexpr int64_t kPrefetchBytes = FUSED_CE_PREFETCH_BYTES;
#ifndef FUSED_CE_PREFETCH_STEPS
#define FUSED_CE_PREFETCH_STEPS 4
#endif
constexpr int64_t kPrefetchSteps = FUSED_CE_PREFETCH_STEPS;

template <typename T>
inline void prefetch_bytes_ahead(const T* p, int64_t bytes) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + bytes);
}

// Loads and stores between memory of scalar_t and vectors of the accumulation type.
template <typename scalar_t>
struct Io {
  using acc_t = typename AccOf<scalar_t>::type;
  using V = Vec<acc_t>;
  static constexpr int64_t kLanes = V::size();
  static constexpr bool kSame = std::is_same_v<scalar_t, acc_t>;

  // A load from a stream: also prefetches the stream kPrefetchBytes ahead.
  static V load(const scalar_t* p) {
    prefetch_bytes_ahead(p, kPrefetchBytes);
    return load_now(p);
  }
  static V load_now(const scalar_t* p) {
    if constexpr (kSame) {
      return V::loadu(p);
    } else {
      V out;
      at::vec::load_to_float(p, out);
      return out;
    }
  }
  static V load_partial(const scalar_t* p, int64_t n) {
    if constexpr (kSame) {
      return V::loadu(p, n);
    } else {
      scalar_t buf[kLanes] = {};
      std::copy(p, p + n, buf);
      return load_now(buf);
    }
  }
  static void store(scalar_t* p, V v, int64_t n = kLanes) {
    if constexpr (kSame) {
      v.store(p, n);
    } else {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        if (store_bf16_native(p, v, n)) return;
      }
#endif
      at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
    }
  }
  // Two vectors at once: for bf16/fp16 one conversion fills a whole reduced-precision vector.
  static void store2(scalar_t* p, V a, V b) {
    if constexpr (kSame) {
      a.store(p);
      b.store(p + kLanes);
    } else {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        if (store_bf16_native(p, a, b)) return;
      }
#endif
      at::vec::convert_from_float<scalar_t>(a, b).store(p);
    }
  }
};

// Writes f(p) for p in [0, steps) vectors starting at out, two vectors per store where possible.
template <typename scalar_t, typename F>
void store_steps(scalar_t* out, int64_t steps, F&& f) {
  using IO = Io<scalar_t>;
  int64_t p = 0;
  for (; p + 2 <= steps; p += 2) {
    const auto a = f(p);
    IO::store2(out + p * IO::kLanes, a, f(p + 1));
  }
  if (p < steps) IO::store(out + p * IO::kLanes, f(p));
}

// Vectors per block of the online max: 128 vectors are 4 KiB of fp32 rows under AVX2, well inside L1.
constexpr int64_t kChunkSteps = 128;

inline int64_t read_target(const void* target, bool is_byte, int64_t i) {
  return is_byte ? static_cast<int64_t>(static_cast<const uint8_t*>(target)[i])
                 : static_cast<const int64_t*>(target)[i];
}

template <typename scalar_t, typename acc_t = typename AccOf<scalar_t>::type>
inline acc_t weight_at(const scalar_t* w, int64_t c) {
  return w ? static_cast<acc_t>(w[c]) : acc_t(1);
}

// Vector view of one unit of work: a row (lanes = consecutive classes) or a block of N-D positions
// (lanes = positions, one class per step).
template <typename scalar_t>
struct RowsLayout {
  using IO = Io<scalar_t>;
  using V = typename IO::V;
  static constexpr bool kLanesShareRow = true;  // lanes are classes of one row
  int64_t steps;  // full vectors in the row; classes from steps * kLanes on are the scalar tail
  V load(const scalar_t* base, int64_t p) const { return IO::load(base + p * IO::kLanes); }
  V weight(const scalar_t* w, int64_t p) const { return IO::load(w + p * IO::kLanes); }
  void store(scalar_t* base, int64_t p, V v) const { IO::store(base + p * IO::kLanes, v); }
};

template <typename scalar_t>
struct LanesLayout {
  using IO = Io<scalar_t>;
  using V = typename IO::V;
  static constexpr bool kLanesShareRow = false;  // each lane is a row of its own
  using acc_t = typename IO::acc_t;
  int64_t steps;  // C
  int64_t S;      // stride between classes
  int64_t lanes;  // live lanes (the last block of positions may be partial)
  // Consecutive steps are S elements apart, so the prefetch runs kPrefetchSteps classes ahead.
  V load(const scalar_t* base, int64_t p) const {
    prefetch_bytes_ahead(base + p * S, kPrefetchSteps * S * int64_t(sizeof(scalar_t)));
    return lanes == IO::kLanes ? IO::load_now(base + p * S) : IO::load_partial(base + p * S, lanes);
  }
  V weight(const scalar_t* w, int64_t p) const { return V(static_cast<acc_t>(w[p])); }
  void store(scalar_t* base, int64_t p, V v) const { IO::store(base + p * S, v, lanes); }
};

// Rows of at least kPreciseMergeSteps vectors get the scan's and the merge's precise forms (lse_scan's shared
// start, merged_lane_parts in double); shorter ones keep the plain fp32 forms, whose cost there is a fifth of the
// row's (21 classes), and their first vector, which the shift comes from, is most of the row.
constexpr int64_t kPreciseMergeSteps = 8;

// What a layout's load gives the scans: a vector of logits (the value itself), or LogitParts of soft-capped ones
// (CappedLoads), whose exp(z - shift) is formed from the parts (rowmath.h says why).
template <typename V>
V value_of(V v) { return v; }
template <typename V>
V value_of(LogitParts<V> z) { return logit_value(z); }
template <typename V>
V minus_shift(V v, V shift) { return v - shift; }
template <typename V>
V minus_shift(LogitParts<V> z, V shift) { return math_fma(z.head, z.q, z.head - shift); }

// The largest of a vector's lanes, NaN when one lane is NaN.
template <typename V>
typename V::value_type lane_max(V v) {
  using T = typename V::value_type;
  return at::vec::vec_reduce_all<T>([](V a, V b) { return math_nan_max(a, b); }, v);
}

// lse_scan of soft-capped logits in lanes that are rows of their own (N-D positions): each block's max first,
// then its sum against it. A lane's terms near its max are then exps of exact differences; lse_scan's shared
// start (the first vector's largest logit) is not open to them, and each lane's first logit as the shift put the
// rounding of large differences into those terms (fp32 capped positions: loss and gradient up to 1.5 times as
// far from fp64 as torch's; issue 27). It costs a second tanh per logit (fp32 64x1024x64 capped forward, one
// thread: 3.1 -> 4.9 ms), so plain N-D logits keep lse_scan's one pass.
template <typename Layout, typename scalar_t, typename Extra>
LseState<typename Io<scalar_t>::V> lse_scan_per_position(const Layout& L, const scalar_t* x, Extra&& extra) {
  using V = typename Io<scalar_t>::V;
  using acc_t = typename Io<scalar_t>::acc_t;
  LseState<V> st{V(-std::numeric_limits<acc_t>::infinity()), V(acc_t(0))};
  for (int64_t p0 = 0; p0 < L.steps; p0 += kChunkSteps) {
    const int64_t p1 = std::min(L.steps, p0 + kChunkSteps);
    V block_max = st.max;
    for (int64_t p = p0; p < p1; ++p) block_max = math_running_max(block_max, value_of(L.load(x, p)));
    st = lse_rescale(st, block_max);
    const V shift = lse_shift(block_max);
    // One lane sums all of its row's terms, so the sum is compensated (Kahan): a plain fp32 running sum of C
    // terms drifts by up to C / 2 ulp (positions of 1024 classes: lse 5e-7 from fp64).
    V sum = st.sum, carry(acc_t(0));
    for (int64_t p = p0; p < p1; ++p) {
      const auto loaded = L.load(x, p);
      const V term = math_exp(minus_shift(loaded, shift)) - carry;
      const V next = sum + term;
      carry = (next - sum) - term;
      sum = next;
      extra(p, value_of(loaded));
    }
    st.sum = sum - carry;
  }
  return st;
}

// Online log-sum-exp over the layout's steps; `extra(p, x)` sees every loaded vector once (for the
// smoothing and soft-target sums), so the whole forward is a single pass over memory.
//
// Each block of kChunkSteps vectors is read once: its exps are summed against the current reference (per
// lane: the first vector's value, later a block's max that went above it) while the block's max is found
// alongside. Terms above the reference are fine while they stay below exp(kRedoAbove): the block's sum
// cannot overflow, and an fp32 sum is equally precise at any scale. Terms far below it are negligible, as
// the reference's own term, exp(0) = 1, is in the sum. Only a block whose max exceeds the reference by more
// than kRedoAbove in some lane (rare after the first block) is summed again, from L1, against its own max.
// Measured on a 2-core EPYC VM (4096x32000 forward, median of 5 processes): fp32 25.4 -> 14.1 ms and bf16
// 21.8 -> 13.4 ms against a max pass and then a sum pass over each block.
template <typename Layout, typename scalar_t, typename Extra>
LseState<typename Io<scalar_t>::V> lse_scan(const Layout& L, const scalar_t* x, Extra&& extra) {
  using V = typename Io<scalar_t>::V;
  using acc_t = typename Io<scalar_t>::acc_t;
  constexpr acc_t kRedoAbove = acc_t(20);
  constexpr int kAllLanes = (1 << V::size()) - 1;
  if constexpr (!Layout::kLanesShareRow && !std::is_same_v<decltype(L.load(x, 0)), V>) {
    return lse_scan_per_position(L, x, extra);
  }
  LseState<V> st{V(-std::numeric_limits<acc_t>::infinity()), V(acc_t(0))};
  if (L.steps == 0) return st;
  st.max = value_of(L.load(x, 0));
  // Lanes that are classes of one row start from the first vector's largest logit, not each from its own: the
  // terms near the row's max, which hold most of its sum, are then exps of small differences, exact to rounding,
  // where a large z - shift rounded to fp32 (ulp 9.5e-7 from 8 on) put up to half its ulp into a dominant term
  // (issue 27).
  if constexpr (Layout::kLanesShareRow) {
    if (L.steps >= kPreciseMergeSteps) {
      st.max = V(lane_max(st.max));
    }
  }
  for (int64_t p0 = 0; p0 < L.steps; p0 += kChunkSteps) {
    const int64_t p1 = std::min(L.steps, p0 + kChunkSteps);
    const V shift = lse_shift(st.max);
    V block_max = st.max;
    V sum = st.sum;
    for (int64_t p = p0; p < p1; ++p) {
      const auto loaded = L.load(x, p);
      const V xv = value_of(loaded);
      block_max = math_running_max(block_max, xv);
      sum = sum + math_exp_scan_term(minus_shift(loaded, shift));
      extra(p, xv);
    }
    // Per lane; false where the first logit was NaN (the sum carries every NaN) and for -inf after -inf.
    if ((block_max - st.max > V(kRedoAbove)).zero_mask() == kAllLanes) {
      st.sum = sum;
      continue;
    }
    st = lse_rescale(st, block_max);
    const V redo_shift = lse_shift(block_max);
    sum = st.sum;
    for (int64_t p = p0; p < p1; ++p) sum = sum + math_exp(minus_shift(L.load(x, p), redo_shift));
    st.sum = sum;
  }
  return st;
}

// A running sum of vectors added up in blocks of kBlock terms (rowmath.h, kBlockedSumTerms, says why).
template <typename V>
struct BlockedSum {
  static constexpr int kBlock = kBlockedSumTerms;
  V total = V(typename V::value_type(0));
  V block = V(typename V::value_type(0));
  int count = 0;
  void add(V v) {
    block = block + v;
    if (++count == kBlock) {
      total = total + block;
      block = V(typename V::value_type(0));
      count = 0;
    }
  }
  V value() const { return total + block; }
};

template <typename V>
typename V::value_type lane_sum(V v) {
  using T = typename V::value_type;
  return at::vec::vec_reduce_all<T>([](V a, V b) { return a + b; }, v);
}

// A row's lse from the per-lane states of its scan: the lanes' largest shift m (NaN when one lane's is NaN), every
// lane's sum rescaled to it by one vector exp (1 where a lane's shift is m, as it is for every lane unless a block
// was summed again), added up and its log taken. Merging lane by lane took two scalar exps per lane, 32 per row
// under AVX-512: with 1000 classes a row, they and the scalar tail below cost about as much as the row's own
// logits (measured: 16384x1000 against 16384x1008 fp32). `saved` gets the lse the backward reads (lse_saved),
// and the parts (the loss's) add up to it. For rows of kPreciseMergeSteps vectors and more the lanes are added
// up and the log taken in double: m may sit well below the row's max, where the fp32 sum (near e^(max - m) / p
// for a row whose largest probability is p) and its log rounded by up to 2^-23 relative, which reached every
// probability of the row (issue 27); the parts are then the lse's hi and lo.
template <typename acc_t, typename V>
LseParts<acc_t> merged_lane_parts(const LseState<V>& st, int64_t steps, double& saved) {
  constexpr int64_t kN = V::size();
  const acc_t m = lane_max(st.max);
  const V scaled = lse_rescale(st, V(m)).sum;
  if (steps < kPreciseMergeSteps) {
    const LseParts<acc_t> parts = lse_parts(LseState<acc_t>{m, lane_sum(scaled)});
    saved = lse_saved(parts);
    return parts;
  }
  acc_t lanes[kN];
  scaled.store(lanes);
  double total = 0.0;
  for (int64_t l = 0; l < kN; ++l) total += static_cast<double>(lanes[l]);
  saved = static_cast<double>(lse_shift(m)) + std::log(total);
  const LseSplit<acc_t> split = split_lse<acc_t>(saved);
  return {split.hi, split.lo};
}

// The last n < kLanes classes of a row (those past its whole vectors) in one vector, transformed when
// kTransform, as the forward's scan loads them.
template <bool kTransform, typename scalar_t, typename acc_t>
typename Io<scalar_t>::V row_tail_logits(const scalar_t* x, int64_t n, const LogitTransform<acc_t>& tf) {
  const auto z = Io<scalar_t>::load_partial(x, n);  // lanes from n on: 0
  if constexpr (kTransform) {
    return transform_logit(z, tf);
  } else {
    return z;
  }
}

// The last n < kLanes classes of a row as a per-lane state: lane l holds
// class l's logit, transformed when kTransform, with sum exp(0) = 1, and the lanes from n on are empty
// (-inf, 0). lse_merge of it into the scan's state counts those classes in vector arithmetic, where
// lse_push took two scalar exps per class.
template <bool kTransform, typename scalar_t, typename acc_t>
LseState<typename Io<scalar_t>::V> row_tail_state(const scalar_t* x, int64_t n, const LogitTransform<acc_t>& tf) {
  using V = typename Io<scalar_t>::V;
  return {V::set(V(neg_inf<acc_t>()), row_tail_logits<kTransform>(x, n, tf), n), V::set(V(acc_t(0)), V(acc_t(1)), n)};
}

// Per lane: the first logit where finite, else 0 (see sum_reference).
template <typename V>
V lanes_reference(V first) {
  using T = typename V::value_type;
  return V::blendv(V(T(0)), first, (first - first) == V(T(0)));
}

template <typename acc_t>
struct LaneArrays {
  static constexpr int64_t kMax = Vec<acc_t>::size();
  acc_t v[kMax];
  template <typename V>
  explicit LaneArrays(V x) { x.store(v); }
  acc_t operator[](int64_t l) const { return v[l]; }
};

// at::parallel_for calls its body from two places: inline when the range runs serially, and inside the
// OpenMP region otherwise. With the body inlined at both, the compiler may contract a * b + c into an FMA
// in one copy and not in the other, and results then depend on the number of threads (measured: the AVX2
// soft-target gradient of a 40x3000 fp32 input differed in the last bit between 1 and 2 threads). One
// out-of-line body rounds the same way whichever place calls it. "noinline" alone still lets GCC clone
// the body (kernels_avx2.o held an ".isra" clone of each) and IPA-CP may specialize a clone for one call
// site, e.g. the serial one where begin is 0, optimized on its own; "noipa" rules clones out, so
// exactly one copy exists.
#if defined(__GNUC__) && !defined(__clang__)
#define FUSED_CE_SINGLE_COPY __attribute__((noipa))
#else
#define FUSED_CE_SINGLE_COPY __attribute__((noinline))
#endif
template <typename F>
struct OutOfLine {
  const F& f;
  FUSED_CE_SINGLE_COPY void operator()(int64_t begin, int64_t end) const { f(begin, end); }
};

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, OutOfLine<F>{f});
}

// Loops over the units of a (N, C, S) problem: rows when S == 1, blocks of kLanes positions otherwise.
// body(n, s0, lanes) with lanes == 0 meaning "a row".
template <typename scalar_t, typename Body>
void for_each_unit(const LogitsView& v, Body&& body) {
  constexpr int64_t kLanes = Io<scalar_t>::kLanes;
  if (v.S == 1) {
    parallel_for(0, v.N, grain_units(v.C), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) body(n, int64_t(0), int64_t(0));
    });
    return;
  }
  const int64_t blocks = (v.S + kLanes - 1) / kLanes;
  parallel_for(0, v.N * blocks, grain_units(v.C * kLanes), [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / blocks;
      const int64_t s0 = (u % blocks) * kLanes;
      body(n, s0, std::min(kLanes, v.S - s0));
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Language-model options: the logits transform z = f(x) (rowmath.h, LogitTransform) applied where the
// class-index kernels load logits, so the formulas below see z wherever they saw x.
// ------------------------------------------------------------------------------------------------
template <typename Layout, typename acc_t>
struct TransformedLoads : Layout {
  using Base = Layout;
  LogitTransform<acc_t> tf;
  template <typename scalar_t>
  auto load(const scalar_t* base, int64_t p) const { return transform_logit(Layout::load(base, p), tf); }
};

// The scans' loads of soft-capped logits: LogitParts.
template <typename Layout, typename acc_t>
struct CappedLoads : Layout {
  LogitTransform<acc_t> tf;
  template <typename scalar_t>
  auto load(const scalar_t* base, int64_t p) const { return capped_parts(Layout::load(base, p), tf); }
};

// The layout as the class-index kernels read logits through it: plain, or transformed.
template <bool kTransform, typename Layout, typename acc_t>
auto logits_layout(const Layout& L, const LogitTransform<acc_t>& tf) {
  if constexpr (kTransform) {
    return TransformedLoads<Layout, acc_t>{L, tf};
  } else {
    return L;
  }
}

template <bool kTransform, typename scalar_t, typename acc_t>
acc_t logit_at(scalar_t x, const LogitTransform<acc_t>& tf) {
  if constexpr (kTransform) {
    return transform_logit(static_cast<acc_t>(x), tf);
  } else {
    return static_cast<acc_t>(x);
  }
}

// The target's logit as a row's loss reads it: transformed, as parts (rowmath.h, LogitParts).
template <bool kTransform, typename scalar_t, typename acc_t>
auto target_logit(scalar_t x, const LogitTransform<acc_t>& tf) {
  if constexpr (kTransform) {
    return transform_to_parts(static_cast<acc_t>(x), tf);
  } else {
    return static_cast<acc_t>(x);
  }
}

// lse_scan of the (possibly transformed) logits.
template <bool kTransform, typename Layout, typename scalar_t, typename acc_t, typename Extra>
LseState<typename Io<scalar_t>::V> logits_lse_scan(const Layout& L, const scalar_t* x,
                                                   const LogitTransform<acc_t>& tf, Extra&& extra) {
  if constexpr (kTransform) {
    if (tf.capped) return lse_scan(CappedLoads<typename Layout::Base, acc_t>{L, tf}, x, extra);
  }
  return lse_scan(L, x, extra);
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy, class-index targets (with the language-model options when kTransform, or when the
// z-loss is on, which needs no template: it is per-row arithmetic)
// ------------------------------------------------------------------------------------------------
template <typename scalar_t, bool kSmooth, bool kWeighted, bool kTransform>
void ce_hard_forward_t(const CeHardArgs& a, void* lse_out_v, void* loss_out_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  const auto* w = static_cast<const scalar_t*>(a.weight);
  auto* lse_out = static_cast<double*>(lse_out_v);  // lse_saved
  auto* loss_out = static_cast<acc_t*>(loss_out_v);
  auto* z_out = static_cast<acc_t*>(a.lm.z_loss_rows);
  const int64_t C = a.logits.C, S = a.logits.S;
  const auto sp = make_smoothing<acc_t>(a.label_smoothing, C, static_cast<acc_t>(a.weight_sum));
  const auto tf = make_logit_transform<acc_t>(a.lm.logit_scale, a.lm.softcap);
  const acc_t z_scale = static_cast<acc_t>(a.lm.lse_square_scale);
  // Row i's outputs (saved: the lse for the backward); ignored rows get zeros.
  auto write_row = [&](int64_t i, bool counted, LseParts<acc_t> lse, double saved, acc_t loss) {
    lse_out[i] = counted ? saved : 0.0;
    loss_out[i] = counted ? loss : acc_t(0);
    if (z_out) z_out[i] = counted ? z_loss_row(lse_value(lse), z_scale) : acc_t(0);
  };
  const LseParts<acc_t> no_lse{acc_t(0), acc_t(0)};

  for_each_unit<scalar_t>(a.logits, [&](int64_t n, int64_t s0, int64_t lanes) {
    const scalar_t* x = logits + n * a.logits.stride_n + s0;
    if (lanes == 0) {  // one row
      const int64_t t = read_target(a.target, a.target_is_byte, n);
      if (t == a.ignore_index) {
        write_row(n, false, no_lse, 0.0, acc_t(0));
        return;
      }
      const acc_t ref = kSmooth ? sum_reference(logit_at<kTransform>(x[0], tf)) : acc_t(0);
      const V vref(ref);
      BlockedSum<V> swx;
      const auto L = logits_layout<kTransform>(RowsLayout<scalar_t>{C / kLanes}, tf);
      LseState<V> vst = logits_lse_scan<kTransform>(L, x, tf, [&](int64_t p, V xv) {
        if constexpr (kSmooth) swx.add(kWeighted ? L.weight(w, p) * (xv - vref) : xv - vref);
      });
      const int64_t tail = L.steps * kLanes;
      if (tail < C) vst = lse_merge(vst, row_tail_state<kTransform>(x + tail, C - tail, tf));
      acc_t swx_s = kSmooth ? lane_sum(swx.value()) : acc_t(0);
      if constexpr (kSmooth) {
        for (int64_t c = tail; c < C; ++c) swx_s += weight_at(w, c) * (logit_at<kTransform>(x[c], tf) - ref);
      }
      double saved = 0.0;
      const LseParts<acc_t> lse = merged_lane_parts<acc_t>(vst, L.steps, saved);
      write_row(n, true, lse, saved, ce_hard_row_loss(lse, target_logit<kTransform>(x[t], tf), weight_at(w, t), swx_s, ref, sp));
      return;
    }
    // a block of N-D positions
    int64_t t[kLanes];
    bool any = false;
    for (int64_t l = 0; l < lanes; ++l) {
      t[l] = read_target(a.target, a.target_is_byte, n * S + s0 + l);
      any |= t[l] != a.ignore_index;
    }
    const auto L = logits_layout<kTransform>(LanesLayout<scalar_t>{C, S, lanes}, tf);
    V vref(acc_t(0));
    BlockedSum<V> swx;
    LseState<V> st{V(acc_t(0)), V(acc_t(1))};
    if (any) {
      if (kSmooth) vref = lanes_reference(L.load(x, 0));
      st = logits_lse_scan<kTransform>(L, x, tf, [&](int64_t p, V xv) {
        if constexpr (kSmooth) swx.add(kWeighted ? L.weight(w, p) * (xv - vref) : xv - vref);
      });
    }
    const LseParts<V> parts = lse_parts(st);
    const LaneArrays<acc_t> shift(parts.shift), log_sum(parts.log_sum), ref(vref), sx(swx.value());
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t i = n * S + s0 + l;
      if (t[l] == a.ignore_index) {
        write_row(i, false, no_lse, 0.0, acc_t(0));
        continue;
      }
      const LseParts<acc_t> lse{shift[l], log_sum[l]};
      const acc_t loss = ce_hard_row_loss(lse, target_logit<kTransform>(x[t[l] * S + l], tf), weight_at(w, t[l]),
                                          sx[l], ref[l], sp);
      write_row(i, true, lse, lse_saved(lse), loss);
    }
  });
}

// With the z-loss on, its gradient only adds to the coefficient of p[c] (rowmath.h, z_loss_prob_coef); with
// the transform, the gradient for z is multiplied by dz/dx. When a.logits.data == grad (the in-place
// backward), every element is loaded before it is stored over and the target logit before its row.
template <typename scalar_t, bool kSmooth, bool kWeighted, bool kTransform>
void ce_hard_backward_t(const CeHardArgs& a, const void* lse_in_v, RowGrad g, void* grad_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  const auto* w = static_cast<const scalar_t*>(a.weight);
  const auto* lse_in = static_cast<const double*>(lse_in_v);  // lse_saved
  auto* grad = static_cast<scalar_t*>(grad_v);  // contiguous (N, C, S)
  const int64_t C = a.logits.C, S = a.logits.S;
  const auto sp = make_smoothing<acc_t>(a.label_smoothing, C, static_cast<acc_t>(a.weight_sum));
  auto row_g = [&](int64_t i) {
    return static_cast<acc_t>((g.per_row ? g.per_row[i] : 1.0) * g.scale);
  };
  const auto tf = make_logit_transform<acc_t>(a.lm.logit_scale, a.lm.softcap);
  const acc_t z_scale = static_cast<acc_t>(a.lm.lse_square_scale);
  const bool z_loss = a.lm.lse_square_scale != 0.0;
  auto coefs = [&](int64_t i, int64_t t, LseSplit<acc_t> lse) {
    auto k = ce_hard_grad_coefs(row_g(i), weight_at(w, t), sp);
    if (z_loss) {
      k.prob += z_loss_prob_coef(static_cast<acc_t>((g.per_row ? g.per_row[i] : 1.0) * g.z_scale), lse.hi, z_scale);
    }
    k.prob *= lse_lo_factor(lse);
    return k;
  };
  // The gradient for x of loaded logits x (a vector or a scalar): dz(z) is the one for z, given z (capped: as
  // LogitParts, so that log p carries no rounding of z), times dz/dx.
  auto for_x = [&](auto x, auto&& dz) {
    if constexpr (kTransform) {
      return grad_for_x(x, tf, dz);
    } else {
      return dz(x);
    }
  };
  // Without smoothing the class term is zero, so the weight vector need not be loaded.
  constexpr bool kLoadWeight = kSmooth && kWeighted;

  for_each_unit<scalar_t>(a.logits, [&](int64_t n, int64_t s0, int64_t lanes) {
    const scalar_t* x = logits + n * a.logits.stride_n + s0;
    scalar_t* out = grad + n * C * S + s0;
    if (lanes == 0) {
      const int64_t t = read_target(a.target, a.target_is_byte, n);
      const RowsLayout<scalar_t> L{C / kLanes};  // the logits as loaded; for_x transforms them
      if (t == a.ignore_index) {
        if (!a.grad_zeroed) std::fill(out, out + C, scalar_t(0));
        return;
      }
      const LseSplit<acc_t> lse = split_lse<acc_t>(lse_in[n]);
      const acc_t xt = static_cast<acc_t>(x[t]);
      const auto k = coefs(n, t, lse);
      const LseSplit<V> vlse{V(lse.hi), V(lse.lo)};
      const V vprob(k.prob), vklass(k.klass), one(acc_t(1));
      store_steps(out, L.steps, [&](int64_t p) {
        const V wv = kLoadWeight ? L.weight(w, p) : one;
        return for_x(L.load(x, p), [&](auto z) { return ce_hard_grad_off_target(z, vlse, wv, vprob, vklass); });
      });
      // The classes past the whole vectors: one partial vector (a scalar loop took an exp per class).
      const int64_t tail = L.steps * kLanes;
      if (tail < C) {
        const int64_t m = C - tail;
        const V wv = kLoadWeight ? IO::load_partial(w + tail, m) : one;
        IO::store(out + tail, for_x(IO::load_partial(x + tail, m), [&](auto z) {
          return ce_hard_grad_off_target(z, vlse, wv, vprob, vklass);
        }), m);
      }
      const acc_t wt = weight_at(w, t);
      out[t] = static_cast<scalar_t>(for_x(xt, [&](auto z) { return ce_hard_grad_on_target(z, lse, wt, k); }));
      return;
    }
    int64_t t[kLanes];
    acc_t hi_l[kLanes] = {}, lo_l[kLanes] = {}, prob_l[kLanes] = {}, klass_l[kLanes] = {}, live_l[kLanes] = {},
          xt_l[kLanes] = {};
    CeHardGradCoefs<acc_t> k[kLanes];
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t i = n * S + s0 + l;
      t[l] = read_target(a.target, a.target_is_byte, i);
      if (t[l] == a.ignore_index) continue;
      const LseSplit<acc_t> lse = split_lse<acc_t>(lse_in[i]);
      k[l] = coefs(i, t[l], lse);
      xt_l[l] = static_cast<acc_t>(x[t[l] * S + l]);
      hi_l[l] = lse.hi;
      lo_l[l] = lse.lo;
      prob_l[l] = k[l].prob;
      klass_l[l] = k[l].klass;
      live_l[l] = acc_t(1);
    }
    const LanesLayout<scalar_t> L{C, S, lanes};
    const LseSplit<V> vlse{V::loadu(hi_l), V::loadu(lo_l)};
    const V vprob = V::loadu(prob_l), vklass = V::loadu(klass_l);
    const auto live = V::loadu(live_l) == V(acc_t(1));
    const V zero(acc_t(0)), one(acc_t(1));
    for (int64_t c = 0; c < C; ++c) {
      const V wv = kLoadWeight ? L.weight(w, c) : one;
      const V d = for_x(L.load(x, c), [&](auto z) { return ce_hard_grad_off_target(z, vlse, wv, vprob, vklass); });
      L.store(out, c, V::blendv(zero, d, live));  // ignored positions get exactly 0
    }
    for (int64_t l = 0; l < lanes; ++l) {
      if (t[l] == a.ignore_index) continue;
      const LseSplit<acc_t> lse{hi_l[l], lo_l[l]};
      const acc_t wt = weight_at(w, t[l]);
      out[t[l] * S + l] =
          static_cast<scalar_t>(for_x(xt_l[l], [&](auto z) { return ce_hard_grad_on_target(z, lse, wt, k[l]); }));
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy, class-probability targets (logits and target contiguous, same layout)
// ------------------------------------------------------------------------------------------------
template <typename scalar_t, bool kWeighted>
void ce_soft_forward_t(const CeSoftArgs& a, void* lse_out_v, void* loss_out_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  const auto* target = static_cast<const scalar_t*>(a.target);
  const auto* w = static_cast<const scalar_t*>(a.weight);
  auto* lse_out = static_cast<double*>(lse_out_v);  // lse_saved
  auto* loss_out = static_cast<acc_t*>(loss_out_v);
  const int64_t C = a.logits.C, S = a.logits.S;
  const auto sp = make_smoothing<acc_t>(a.label_smoothing, C, static_cast<acc_t>(a.weight_sum));

  for_each_unit<scalar_t>(a.logits, [&](int64_t n, int64_t s0, int64_t lanes) {
    const int64_t offset = n * C * S + s0;
    const scalar_t* x = logits + offset;
    const scalar_t* tt = target + offset;
    BlockedSum<V> swt, swtx;
    auto accumulate = [&](const auto& L, V vref) {
      return [&, vref](int64_t p, V xv) {
        V wt = smoothed_target(L.load(tt, p), sp);
        if constexpr (kWeighted) wt = wt * L.weight(w, p);
        swt.add(wt);
        swtx.add(wt * (xv - vref));
      };
    };
    if (lanes == 0) {
      const acc_t ref = sum_reference(static_cast<acc_t>(x[0]));
      const RowsLayout<scalar_t> L{C / kLanes};
      LseState<V> vst = lse_scan(L, x, accumulate(L, V(ref)));
      const int64_t tail = L.steps * kLanes;
      if (tail < C) vst = lse_merge(vst, row_tail_state<false>(x + tail, C - tail, LogitTransform<acc_t>{}));
      acc_t swt_s = lane_sum(swt.value()), swtx_s = lane_sum(swtx.value());
      for (int64_t c = tail; c < C; ++c) {
        const acc_t wt = weight_at(w, c) * smoothed_target(static_cast<acc_t>(tt[c]), sp);
        swt_s += wt;
        swtx_s += wt * (static_cast<acc_t>(x[c]) - ref);
      }
      const LseParts<acc_t> lse = merged_lane_parts<acc_t>(vst, L.steps, lse_out[n]);
      loss_out[n] = ce_soft_row_loss(lse, swt_s, swtx_s, ref);
      return;
    }
    const LanesLayout<scalar_t> L{C, S, lanes};
    const V vref = lanes_reference(L.load(x, 0));
    const LseParts<V> parts = lse_parts(lse_scan(L, x, accumulate(L, vref)));
    const LaneArrays<acc_t> shift(parts.shift), log_sum(parts.log_sum), ref(vref), st(swt.value()), stx(swtx.value());
    for (int64_t l = 0; l < lanes; ++l) {
      const LseParts<acc_t> lse{shift[l], log_sum[l]};
      lse_out[n * S + s0 + l] = lse_saved(lse);
      loss_out[n * S + s0 + l] = ce_soft_row_loss(lse, st[l], stx[l], ref[l]);
    }
  });
}

// Gradient for the logits (kTargetGrad false) or for the target (true).
template <typename scalar_t, bool kWeighted, bool kTargetGrad>
void ce_soft_backward_t(const CeSoftArgs& a, const void* lse_in_v, RowGrad g, void* grad_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  const auto* target = static_cast<const scalar_t*>(a.target);
  const auto* w = static_cast<const scalar_t*>(a.weight);
  const auto* lse_in = static_cast<const double*>(lse_in_v);  // lse_saved
  auto* grad = static_cast<scalar_t*>(grad_v);
  const int64_t C = a.logits.C, S = a.logits.S;
  const auto sp = make_smoothing<acc_t>(a.label_smoothing, C, static_cast<acc_t>(a.weight_sum));
  auto row_g = [&](int64_t i) {
    return static_cast<acc_t>((g.per_row ? g.per_row[i] : 1.0) * g.scale);
  };

  // One unit: lanes of per-row values (lse, g) in vectors, applied along the layout's steps.
  auto run = [&](const auto& L, const scalar_t* x, const scalar_t* tt, scalar_t* out, LseSplit<V> vlse, V vg) {
    if constexpr (kTargetGrad) {
      const V g_keep = vg * V(acc_t(1) - sp.eps);
      for (int64_t p = 0; p < L.steps; ++p) {
        const V wv = kWeighted ? L.weight(w, p) : V(acc_t(1));
        L.store(out, p, ce_soft_target_grad(L.load(x, p), vlse, wv, g_keep));
      }
    } else {
      BlockedSum<V> swt;
      for (int64_t p = 0; p < L.steps; ++p) {
        const V t = smoothed_target(L.load(tt, p), sp);
        swt.add(kWeighted ? t * L.weight(w, p) : t);
      }
      return swt.value();  // the caller finishes the sum (rows) and then calls apply
    }
    return V(acc_t(0));
  };
  auto apply = [&](const auto& L, const scalar_t* x, const scalar_t* tt, scalar_t* out, LseSplit<V> vlse, V vg, V g_swt) {
    for (int64_t p = 0; p < L.steps; ++p) {
      V wt = smoothed_target(L.load(tt, p), sp);
      if constexpr (kWeighted) wt = wt * L.weight(w, p);
      L.store(out, p, ce_soft_grad(L.load(x, p), vlse, wt, g_swt, vg));
    }
  };

  for_each_unit<scalar_t>(a.logits, [&](int64_t n, int64_t s0, int64_t lanes) {
    const int64_t offset = n * C * S + s0;
    const scalar_t* x = logits + offset;
    const scalar_t* tt = target + offset;
    scalar_t* out = grad + offset;
    if (lanes == 0) {
      const LseSplit<acc_t> lse = split_lse<acc_t>(lse_in[n]);
      const LseSplit<V> vlse{V(lse.hi), V(lse.lo)};
      const acc_t gn = row_g(n);
      const RowsLayout<scalar_t> L{C / kLanes};
      const int64_t tail = L.steps * kLanes;
      if constexpr (kTargetGrad) {
        run(L, x, tt, out, vlse, V(gn));
        for (int64_t c = tail; c < C; ++c) {
          out[c] = static_cast<scalar_t>(ce_soft_target_grad(
              static_cast<acc_t>(x[c]), lse, weight_at(w, c), gn * (acc_t(1) - sp.eps)));
        }
      } else {
        acc_t swt = lane_sum(run(L, x, tt, out, vlse, V(gn)));
        for (int64_t c = tail; c < C; ++c) swt += weight_at(w, c) * smoothed_target(static_cast<acc_t>(tt[c]), sp);
        const acc_t g_swt = gn * swt * lse_lo_factor(lse);
        apply(L, x, tt, out, vlse, V(gn), V(g_swt));
        for (int64_t c = tail; c < C; ++c) {
          const acc_t wt = weight_at(w, c) * smoothed_target(static_cast<acc_t>(tt[c]), sp);
          out[c] = static_cast<scalar_t>(ce_soft_grad(static_cast<acc_t>(x[c]), lse, wt, g_swt, gn));
        }
      }
      return;
    }
    acc_t hi_l[kLanes] = {}, lo_l[kLanes] = {}, g_l[kLanes] = {}, factor_l[kLanes] = {};
    for (int64_t l = 0; l < lanes; ++l) {
      const LseSplit<acc_t> lse = split_lse<acc_t>(lse_in[n * S + s0 + l]);
      hi_l[l] = lse.hi;
      lo_l[l] = lse.lo;
      factor_l[l] = lse_lo_factor(lse);
      g_l[l] = row_g(n * S + s0 + l);
    }
    const LanesLayout<scalar_t> L{C, S, lanes};
    const LseSplit<V> vlse{V::loadu(hi_l), V::loadu(lo_l)};
    const V vg = V::loadu(g_l);
    const V swt = run(L, x, tt, out, vlse, vg);
    if constexpr (!kTargetGrad) apply(L, x, tt, out, vlse, vg, vg * swt * V::loadu(factor_l));
  });
}

// ------------------------------------------------------------------------------------------------
// Binary cross-entropy with logits, elementwise over the flat input
// ------------------------------------------------------------------------------------------------
// A broadcast operand over one run of consecutive elements: contiguous values, or one value.
template <typename scalar_t>
struct Operand {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  const scalar_t* ptr;  // non-null: contiguous over the run
  acc_t value;          // otherwise
  V load(int64_t j) const { return ptr ? IO::load(ptr + j) : V(value); }
  acc_t at(int64_t j) const { return ptr ? static_cast<acc_t>(ptr[j]) : value; }
};

// How many elements from i on keep the operand contiguous (or constant), and the operand for them.
template <typename scalar_t>
int64_t operand_run(const Broadcast& b, int64_t i, int64_t limit, Operand<scalar_t>& op) {
  using acc_t = typename Io<scalar_t>::acc_t;
  const auto* data = static_cast<const scalar_t*>(b.data);
  if (!data) {
    op = {nullptr, acc_t(1)};
    return limit;
  }
  const int64_t q = i / b.div;
  const int64_t idx = q % b.mod;
  if (b.div == 1 && b.mod > 1) {  // contiguous until the index wraps
    op = {data + idx, acc_t(0)};
    return std::min(limit, b.mod - idx);
  }
  op = {nullptr, static_cast<acc_t>(data[idx])};  // constant until the next block of div elements
  return b.div == 1 ? limit : std::min(limit, (q + 1) * b.div - i);
}

// Calls f(i, len, w, pw) over [i0, i1) split into runs where both operands are simple.
template <typename scalar_t, typename F>
void for_each_run(const BceArgs& a, int64_t i0, int64_t i1, F&& f) {
  for (int64_t i = i0; i < i1;) {
    Operand<scalar_t> w, pw;
    int64_t len = operand_run(a.weight, i, i1 - i, w);
    len = operand_run(a.pos_weight, i, len, pw);
    f(i, len, w, pw);
    i += len;
  }
}

template <typename scalar_t, typename F>
void for_each_bce_chunk(const BceArgs& a, F&& f) {
  const int64_t chunks = (a.numel + kBceChunk - 1) / kBceChunk;
  parallel_for(0, chunks, grain_units(kBceChunk), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) f(k, k * kBceChunk, std::min(a.numel, (k + 1) * kBceChunk));
  });
}

// kUnweighted: neither weight nor pos_weight (the formulas without them, rowmath.h).
template <typename scalar_t, bool kUnweighted>
void bce_forward_t(const BceArgs& a, bool elementwise, void* out_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* x = static_cast<const scalar_t*>(a.input);
  const auto* y = static_cast<const scalar_t*>(a.target);
  auto elem = [&](auto xv, auto yv, auto wv, auto pwv) {
    if constexpr (kUnweighted) {
      return bce_loss_unweighted(xv, yv);
    } else {
      return bce_loss(xv, yv, wv, pwv);
    }
  };
  for_each_bce_chunk<scalar_t>(a, [&](int64_t k, int64_t i0, int64_t i1) {
    V vsum(acc_t(0));
    acc_t sum = 0;
    for_each_run<scalar_t>(a, i0, i1, [&](int64_t i, int64_t len, const Operand<scalar_t>& w, const Operand<scalar_t>& pw) {
      const int64_t vecs = len / kLanes;
      auto loss = [&](int64_t v) {
        const int64_t j = v * kLanes;
        return elem(IO::load(x + i + j), IO::load(y + i + j), w.load(j), pw.load(j));
      };
      if (elementwise) {
        store_steps(static_cast<scalar_t*>(out_v) + i, vecs, loss);
      } else {
        for (int64_t v = 0; v < vecs; ++v) vsum = vsum + loss(v);
      }
      int64_t j = vecs * kLanes;
      for (; j < len; ++j) {
        const acc_t l = elem(static_cast<acc_t>(x[i + j]), static_cast<acc_t>(y[i + j]), w.at(j), pw.at(j));
        if (elementwise) {
          static_cast<scalar_t*>(out_v)[i + j] = static_cast<scalar_t>(l);
        } else {
          sum += l;
        }
      }
    });
    if (!elementwise) static_cast<double*>(out_v)[k] = static_cast<double>(lane_sum(vsum)) + static_cast<double>(sum);
  });
}

template <typename scalar_t, bool kTargetGrad, bool kUnweighted>
void bce_backward_t(const BceArgs& a, const void* grad_v, double scale, void* out_v) {
  using IO = Io<scalar_t>;
  using acc_t = typename IO::acc_t;
  using V = typename IO::V;
  constexpr int64_t kLanes = IO::kLanes;
  const auto* x = static_cast<const scalar_t*>(a.input);
  const auto* y = static_cast<const scalar_t*>(a.target);
  const auto* g = static_cast<const scalar_t*>(grad_v);
  auto* out = static_cast<scalar_t*>(out_v);
  const acc_t s = static_cast<acc_t>(scale);
  auto elem = [&](auto xv, auto yv, auto wv, auto pwv) {
    if constexpr (kTargetGrad) {
      return bce_grad_target(xv, wv, pwv);
    } else if constexpr (kUnweighted) {
      return bce_grad_input_unweighted(xv, yv);
    } else {
      return bce_grad_input(xv, yv, wv, pwv);
    }
  };
  for_each_bce_chunk<scalar_t>(a, [&](int64_t, int64_t i0, int64_t i1) {
    for_each_run<scalar_t>(a, i0, i1, [&](int64_t i, int64_t len, const Operand<scalar_t>& w, const Operand<scalar_t>& pw) {
      const int64_t vecs = len / kLanes;
      store_steps(out + i, vecs, [&](int64_t v) {
        const int64_t j = v * kLanes;
        const V gv = g ? IO::load(g + i + j) * V(s) : V(s);
        return elem(IO::load(x + i + j), IO::load(y + i + j), w.load(j), pw.load(j)) * gv;
      });
      int64_t j = vecs * kLanes;
      for (; j < len; ++j) {
        const acc_t gs = g ? static_cast<acc_t>(g[i + j]) * s : s;
        out[i + j] = static_cast<scalar_t>(
            elem(static_cast<acc_t>(x[i + j]), static_cast<acc_t>(y[i + j]), w.at(j), pw.at(j)) * gs);
      }
    });
  });
}

// ------------------------------------------------------------------------------------------------
// dtype and option dispatch into the templates above
// ------------------------------------------------------------------------------------------------
// Calls f(scalar_t{}, kSmooth, kWeighted, kTransform) with the flags as std::integral_constant values.
template <typename F>
void dispatch_ce_hard(const CeHardArgs& a, F&& f) {
  const bool smooth = a.label_smoothing > 0, weighted = a.weight != nullptr;
  const bool transform = make_logit_transform<double>(a.lm.logit_scale, a.lm.softcap).active;
  using yes = std::true_type;
  using no = std::false_type;
  dispatch_dtype(a.dtype, [&](auto tag) {
    auto with_transform = [&](auto kTransform) {
      if (smooth && weighted) return f(tag, yes{}, yes{}, kTransform);
      if (smooth) return f(tag, yes{}, no{}, kTransform);
      return f(tag, no{}, no{}, kTransform);  // without smoothing, weights only matter via w[y]
    };
    if (transform) return with_transform(yes{});
    return with_transform(no{});
  });
}

inline void ce_hard_forward(const CeHardArgs& a, void* lse, void* loss) {
  dispatch_ce_hard(a, [&](auto tag, auto smooth, auto weighted, auto transform) {
    ce_hard_forward_t<decltype(tag), smooth(), weighted(), transform()>(a, lse, loss);
  });
}

inline void ce_hard_backward(const CeHardArgs& a, const void* lse, RowGrad g, void* grad) {
  dispatch_ce_hard(a, [&](auto tag, auto smooth, auto weighted, auto transform) {
    ce_hard_backward_t<decltype(tag), smooth(), weighted(), transform()>(a, lse, g, grad);
  });
}

inline void ce_soft_forward(const CeSoftArgs& a, void* lse, void* loss) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (a.weight) return ce_soft_forward_t<scalar_t, true>(a, lse, loss);
    return ce_soft_forward_t<scalar_t, false>(a, lse, loss);
  });
}

inline void ce_soft_backward(const CeSoftArgs& a, const void* lse, RowGrad g, void* grad) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (a.weight) return ce_soft_backward_t<scalar_t, true, false>(a, lse, g, grad);
    return ce_soft_backward_t<scalar_t, false, false>(a, lse, g, grad);
  });
}

inline void ce_soft_target_backward(const CeSoftArgs& a, const void* lse, RowGrad g, void* grad) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (a.weight) return ce_soft_backward_t<scalar_t, true, true>(a, lse, g, grad);
    return ce_soft_backward_t<scalar_t, false, true>(a, lse, g, grad);
  });
}

inline bool bce_unweighted(const BceArgs& a) { return a.weight.data == nullptr && a.pos_weight.data == nullptr; }

inline void bce_forward(const BceArgs& a, bool elementwise, void* out) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    if (bce_unweighted(a)) return bce_forward_t<decltype(tag), true>(a, elementwise, out);
    bce_forward_t<decltype(tag), false>(a, elementwise, out);
  });
}

inline void bce_backward(const BceArgs& a, const void* grad, double scale, void* out) {
  dispatch_dtype(a.dtype, [&](auto tag) {
    if (bce_unweighted(a)) return bce_backward_t<decltype(tag), false, true>(a, grad, scale, out);
    bce_backward_t<decltype(tag), false, false>(a, grad, scale, out);
  });
}

// The target's gradient is rarely asked for: one generic instance.
inline void bce_target_backward(const BceArgs& a, const void* grad, double scale, void* out) {
  dispatch_dtype(a.dtype, [&](auto tag) { bce_backward_t<decltype(tag), true, false>(a, grad, scale, out); });
}

inline const KernelTable& table() {
  static const KernelTable t{
      ce_hard_forward, ce_hard_backward, ce_soft_forward, ce_soft_backward, ce_soft_target_backward,
      bce_forward,     bce_backward,     bce_target_backward};
  return t;
}

}  // namespace CPU_CAPABILITY
}  // namespace fused_ce::cpu
