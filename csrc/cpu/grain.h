// How much work one CPU parallel task gets, for the kernels and the op glue alike.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fused_ce::cpu {

// ATen's at::internal::GRAIN_SIZE (ATen/TensorIterator.h, too heavy for the kernel files; ops_cpu.cpp
// checks that the two agree). ATen gives every parallel task at least this many elements, so an input
// below it runs on the calling thread and opens no OpenMP region: on a busy machine a region's second
// thread can be descheduled and hold up the whole call for a scheduler time slice.
constexpr int64_t kGrainSize = 32768;

// Units per parallel task, for units of `elements_per_unit` elements each. The grain only decides which
// thread runs a unit, never how a sum is split, so results stay bitwise identical whatever the number
// of threads.
inline int64_t grain_units(int64_t elements_per_unit) {
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, elements_per_unit));
}

}  // namespace fused_ce::cpu
