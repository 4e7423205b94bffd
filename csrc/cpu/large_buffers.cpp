#include "cpu/large_buffers.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace fused_ce::cpu {
namespace {

constexpr size_t kLargeBytes = size_t(4) << 20;  // smaller outputs use torch's allocator
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMaxCachedBlocks = 2;

struct Block {
  void* ptr;
  size_t bytes;
};

class BlockCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].bytes == bytes) {
        void* p = free_[i].ptr;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        return p;
      }
    }
    return nullptr;
  }
  void give(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (enabled_ && free_.size() < kMaxCachedBlocks) {
        free_.push_back({ptr, bytes});
        return;
      }
    }
    std::free(ptr);
  }

 private:
  std::mutex mutex_;
  std::vector<Block> free_;
  const bool enabled_ = [] {
    const char* env = std::getenv("FUSED_CE_CPU_BUFFER_CACHE");
    return !(env && std::strcmp(env, "0") == 0);
  }();
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
BlockCache& cache() {
  static auto* c = new BlockCache();
  return *c;
}

void* allocate(size_t bytes) {
  if (void* p = cache().take(bytes)) return p;
  void* p = std::aligned_alloc(kHugePage, bytes);
  TORCH_CHECK(p != nullptr, "fused_ce: out of memory allocating ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure just means small pages
#endif
  return p;
}

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (nbytes < kLargeBytes) return at::empty(sizes, options);
  const size_t bytes = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = allocate(bytes);
  return at::from_blob(p, sizes, [bytes](void* ptr) { cache().give(ptr, bytes); }, options);
}

}  // namespace fused_ce::cpu
