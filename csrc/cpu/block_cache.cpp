// block_cache.cpp — a CPU allocator that keeps freed large blocks for the next request of about their size
// (gtkernels.keep_freed_memory, gtkernels/cpu_heap.py says why). torch's default CPU allocator hands every block to
// glibc, which serves blocks above 32 MiB with a fresh mmap and unmaps them when freed: every large activation of
// every training step is then zero-filled by the kernel page by page (4.9 million faults per paper-width step at
// batch 1,024). Here a freed block of at least kMinCached bytes goes to a free list by size instead; a request
// takes the smallest free block of at least its size and at most 1/kSlackDiv more, else a new block from
// c10::alloc_cpu, 1/kHeadroomDiv larger than asked: the batches of a QM9 epoch differ in atom count by a few
// percent, up and down, and a block made for one serves the next. The free list holds at
// most limit bytes: beyond it the smallest free blocks go back to the system. Smaller blocks, and every block
// while the cache is not installed, take c10::alloc_cpu / c10::free_cpu directly, as the default allocator does.
// Not done here (the default allocator does them when asked): the zero/junk fill debug flags, NUMA moves, and
// reporting to the memory profiler.
//
// Ops (registered here, catch-all: no tensor arguments):
//   cpu_block_cache(int limit) -> int[]: limit >= 0 installs the allocator (once; later calls set the limit);
//     limit < 0 only reads. Returns [installed, cached bytes, live bytes, hits, misses, limit].
//   cpu_block_cache_empty() -> int: frees every cached block; returns the bytes freed.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinCached = size_t(1) << 20;  // 1 MiB: below it glibc's heap already reuses freed blocks
constexpr size_t kHeadroomDiv = 16;             // a new block is 1/16 larger than asked (rounded to 4 KiB pages)...
constexpr size_t kSlackDiv = 8;                 // ...and serves later requests down to 8/9 of its size

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached) {
      void* p = c10::alloc_cpu(n);
      return {p, p, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
    }
    void* p = take(n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate / raw_deallocate pair a pointer with this deleter: it tells the two kinds apart.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {1, int64_t(cached_), int64_t(live_bytes_), int64_t(hits_), int64_t(misses_), int64_t(limit_)};
  }

  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> g(mu_);
    limit_ = limit;
    evict_to(limit_);
  }

  size_t empty() {
    std::lock_guard<std::mutex> g(mu_);
    const size_t freed = cached_;
    evict_to(0);
    return freed;
  }

  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: blocks may be freed at exit
    return *cache;
  }

 private:
  void* take(size_t n) {
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first <= n + n / kSlackDiv) {
        void* p = it->second;
        const size_t size = it->first;
        free_.erase(it);
        cached_ -= size;
        live_[p] = size;
        live_bytes_ += size;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    const size_t size = (n + n / kHeadroomDiv + 4095) / 4096 * 4096;
    void* p = nullptr;
    try {
      p = c10::alloc_cpu(size);
    } catch (const c10::Error&) {  // out of memory: give the cached blocks back and try once more
      empty();
      p = c10::alloc_cpu(size);
    }
    std::lock_guard<std::mutex> g(mu_);
    live_[p] = size;
    live_bytes_ += size;
    return p;
  }

  // Returns true when p was one of this cache's live blocks (it is then cached or freed).
  bool give_back(void* p) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return false;
    const size_t size = it->second;
    live_.erase(it);
    live_bytes_ -= size;
    if (size > limit_) {
      c10::free_cpu(p);
      return true;
    }
    evict_to(limit_ - size);
    free_.emplace(size, p);
    cached_ += size;
    return true;
  }

  // Frees the smallest cached blocks until at most `target` bytes stay cached (mu_ held).
  void evict_to(size_t target) {
    while (cached_ > target && !free_.empty()) {
      auto it = free_.begin();
      cached_ -= it->first;
      c10::free_cpu(it->second);
      free_.erase(it);
    }
  }

  // The deleter of the large blocks, and raw_deleter() for every block (a small one is not in live_).
  static void release(void* p) {
    if (!instance().give_back(p)) c10::free_cpu(p);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;     // cached blocks by size
  std::unordered_map<void*, size_t> live_;  // blocks handed out, with their size
  size_t cached_ = 0, live_bytes_ = 0, limit_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

std::once_flag installed_flag;
bool installed = false;

std::vector<int64_t> cpu_block_cache(int64_t limit) {
  if (limit >= 0) {
    BlockCache& cache = BlockCache::instance();
    cache.set_limit(size_t(limit));
    std::call_once(installed_flag, [&] {
      c10::SetCPUAllocator(&cache, /*priority=*/10);  // above the default allocator's 0
      installed = true;
    });
  }
  if (!installed) return {0, 0, 0, 0, 0, 0};
  return BlockCache::instance().stats();
}

int64_t cpu_block_cache_empty() {
  return installed ? int64_t(BlockCache::instance().empty()) : 0;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gtkernels_C, m) {
  m.def("cpu_block_cache(int limit) -> int[]", &cpu_block_cache);
  m.def("cpu_block_cache_empty() -> int", &cpu_block_cache_empty);
}
