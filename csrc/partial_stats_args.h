// The description of one call of the vocabulary-parallel cross-entropy's slice ops (partial_stats_schema.h),
// filled by the CPU and CUDA glue and read by their kernels: raw pointers and sizes only, as in kernel_args.h.
#pragma once

#include <cstdint>

#include "kernel_args.h"

namespace fused_ce {

struct PartialStatsArgs {
  at::ScalarType dtype;
  LogitsView logits;     // this rank's slice: C classes of every row
  const void* target;    // N*S global class indices
  bool target_is_byte;   // uint8 instead of int64
  const void* weight;    // the slice's C class weights of `dtype`, or nullptr
  int64_t class_offset;  // global index of the slice's first class
  int64_t ignore_index;
  double logit_scale;    // the language-model options' logits transform (rowmath.h, make_logit_transform)
  double softcap;        // 0: no soft-capping
};

}  // namespace fused_ce
