// Why large outputs get their own allocator: the first touch of a fresh logits-sized buffer costs a page
// fault per 4 KiB page (the kernel maps and zeroes each one), more than the whole fused backward at
// 4096x32000. Transparent huge pages cut the faults 512-fold. The kernel gives them to an anonymous
// mapping when THP is 'always', or 'madvise' and the range is advised MADV_HUGEPAGE, and only for whole
// 2 MiB-aligned pages, hence the alignment and the size rounded up to 2 MiB (torch does the same for
// its own tensors under THP_MEM_ALLOC_ENABLE=1).
//
// Each buffer is its own mmap and is munmapped when the storage dies, so the memory goes back to the
// system at once. (An earlier version kept freed buffers for reuse instead; users saw RSS stay up by
// one or two gradients after their tensors were gone. malloc would not do either: glibc raises its mmap
// threshold after a large free, and blocks under 32 MiB may then stay in the heap after free.)
//
// The tensors are ordinary resizable CPU tensors whose storage names this allocator, so resize_,
// pickling, .numpy() and set_ keep working; a resize asks the same allocator for the new block.
#include "cpu/large_buffers.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace fused_ce::cpu {
namespace {

constexpr size_t kLargeBytes = size_t(4) << 20;  // smaller outputs use torch's allocator
constexpr size_t kHugePage = size_t(2) << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Whether the kernel would back an advised mapping with huge pages: the active mode in
// /sys/kernel/mm/transparent_hugepage/enabled is the one in brackets, e.g. "always [madvise] never".
// 'never', or no such file (THP not built in, not Linux), leaves large buffers to torch's allocator.
// FUSED_CE_CPU_HUGE_PAGES=0 does the same (read once, at the first large allocation).
bool huge_pages_usable() {
  static const bool usable = [] {
    const char* env = std::getenv("FUSED_CE_CPU_HUGE_PAGES");
    if (env && std::strcmp(env, "0") == 0) return false;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes;
    std::getline(f, modes);
    return modes.find("[always]") != std::string::npos || modes.find("[madvise]") != std::string::npos;
#else
    return false;
#endif
  }();
  return usable;
}

struct Mapping {
  void* ptr;
  size_t bytes;
};

void unmap(void* ctx) {
  auto* m = static_cast<Mapping*>(ctx);
  munmap(m->ptr, m->bytes);
  delete m;
}

// A 2 MiB-aligned anonymous mapping of `n` bytes rounded up to 2 MiB: map 2 MiB more than needed,
// then unmap the misaligned head and the excess tail.
c10::DataPtr map_huge(size_t n) {
  const size_t bytes = round_up(n, kHugePage);
  const size_t reserve = bytes + kHugePage;
  void* raw = mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK_WITH(OutOfMemoryError, raw != MAP_FAILED, "fused_ce: CPU out of memory trying to allocate ",
                   n, " bytes: ", std::strerror(errno));
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = round_up(base, kHugePage);
  if (aligned > base) munmap(raw, aligned - base);
  const uintptr_t end = base + reserve, used_end = aligned + bytes;
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  void* p = reinterpret_cast<void*>(aligned);
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: if refused, the mapping just gets small pages
  return {p, new Mapping{p, bytes}, &unmap, c10::Device(c10::DeviceType::CPU)};
}

class LargeBufferAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kLargeBytes || !huge_pages_usable()) return c10::GetCPUAllocator()->allocate(n);
    return map_huge(n);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// Never destroyed: storages may be freed during interpreter shutdown, after static destructors.
LargeBufferAllocator* allocator() {
  static auto* a = new LargeBufferAllocator();
  return a;
}

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options, bool* zeroed) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (zeroed != nullptr) *zeroed = false;
  if (nbytes < kLargeBytes) return at::empty(sizes, options);
  at::Tensor out = at::detail::empty_generic(sizes, allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             c10::typeMetaToScalarType(options.dtype()), c10::nullopt);
  // map_huge's own mappings (not the fallback to torch's allocator) are anonymous, so they start zero-filled.
  if (zeroed != nullptr) *zeroed = out.storage().data_ptr().get_deleter() == &unmap;
  return out;
}

}  // namespace fused_ce::cpu
