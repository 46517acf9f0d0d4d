// The caching allocator's bookkeeping, on host memory (no GPU needed): reuse,
// exact peaks, the budget, the retry after emptying the cache, bad frees,
// threads.

#include "kernels/cuda/allocator.h"

#include <cstdlib>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace chunkflow::kernels::cuda {
namespace {

// malloc with a capacity, counting what is outstanding.
class HostRaw final : public RawDeviceMemory {
 public:
  explicit HostRaw(int64_t capacity = 1LL << 40) : capacity_(capacity) {}
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    absl::MutexLock lock(&mu_);
    if (used_ + static_cast<int64_t>(bytes) > capacity_) {
      return absl::ResourceExhaustedError("out of (fake) device memory");
    }
    void* p = std::malloc(bytes);
    sizes_[p] = static_cast<int64_t>(bytes);
    used_ += static_cast<int64_t>(bytes);
    return p;
  }
  void Free(void* p) override {
    absl::MutexLock lock(&mu_);
    used_ -= sizes_.at(p);
    sizes_.erase(p);
    std::free(p);
  }
  int64_t used() {
    absl::MutexLock lock(&mu_);
    return used_;
  }

 private:
  absl::Mutex mu_;
  int64_t capacity_;
  int64_t used_ = 0;
  std::map<void*, int64_t> sizes_;
};

TEST(CachingAllocator, FreedBlocks_AreReused_UpToTwiceTheRequest) {
  HostRaw raw;
  CachingAllocator a(&raw, {});
  void* p = *a.Allocate(2000, "x");  // rounded to 2048
  EXPECT_EQ(a.in_use(), 2048);
  ASSERT_TRUE(a.Free(p).ok());
  EXPECT_EQ(a.in_use(), 0);
  EXPECT_EQ(a.reserved(), 2048);
  EXPECT_EQ(*a.Allocate(900, "y"), p) << "cached block reused (2048 <= 2 x 1024)";
  EXPECT_EQ(*a.BlockSize(p), 2048);
  EXPECT_EQ(a.in_use(), 2048) << "the block is what is held";
  EXPECT_EQ(a.raw_allocations(), 1);
  ASSERT_TRUE(a.Free(p).ok());
  void* q = *a.Allocate(100, "small");  // 512: the 2048 block is more than twice that
  EXPECT_NE(q, p);
  EXPECT_EQ(a.raw_allocations(), 2);
  ASSERT_TRUE(a.Free(q).ok());
}

TEST(CachingAllocator, PeakInUse_IsExact) {
  HostRaw raw;
  CachingAllocator a(&raw, {});
  std::mt19937_64 rng(3);
  std::vector<std::pair<void*, int64_t>> live;
  int64_t now = 0, peak = 0;
  for (int i = 0; i < 2000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const int64_t n = 1 + static_cast<int64_t>(rng() % 100000);
      const int64_t rounded = (n + 511) / 512 * 512;
      void* p = *a.Allocate(static_cast<size_t>(n), "random");
      const int64_t block = *a.BlockSize(p);
      ASSERT_GE(block, rounded);
      ASSERT_LE(block, 2 * rounded);
      live.push_back({p, block});
      now += block;
    } else {
      const size_t k = rng() % live.size();
      ASSERT_TRUE(a.Free(live[k].first).ok());
      now -= live[k].second;
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    }
    peak = std::max(peak, now);
    ASSERT_EQ(a.in_use(), now);
  }
  EXPECT_EQ(a.peak_in_use(), peak);
  EXPECT_GE(a.peak_reserved(), a.peak_in_use());
  a.ResetPeak();
  EXPECT_EQ(a.peak_in_use(), now);
  for (auto& [p, n] : live) ASSERT_TRUE(a.Free(p).ok());
}

TEST(CachingAllocator, Budget_RefusesNamingTheRequest_AfterEmptyingTheCache) {
  HostRaw raw;
  CachingAllocatorOptions o;
  o.budget_bytes = 4096;
  CachingAllocator a(&raw, o);
  void* p = *a.Allocate(3000, "activations of chunk 4");  // 3072
  absl::StatusOr<void*> q = a.Allocate(2000, "K of layer 7");  // 2048: 5120 > 4096
  EXPECT_EQ(q.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(q.status().message(), "K of layer 7")) << q.status();
  EXPECT_TRUE(absl::StrContains(q.status().message(), "budget 0.0 MiB")) << q.status();
  ASSERT_TRUE(a.Free(p).ok());  // cached; 3072 fits a 2048 request (at most twice): reused
  q = a.Allocate(2000, "K of layer 7");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, p);
  ASSERT_TRUE(a.Free(*q).ok());
  // 1000 -> 1024: the cached 3072 is too big to reuse, and 3072 + 1024 is
  // within the budget: a second block.
  void* r = *a.Allocate(1000, "small");
  EXPECT_EQ(raw.used(), 3072 + 1024);
  ASSERT_TRUE(a.Free(r).ok());
  // Best fit: 700 -> 1024 takes the cached 1024 block, 1100 -> 1536 the
  // cached 3072 one (at most twice the request).
  void* s1 = *a.Allocate(700, "reuse");
  EXPECT_EQ(s1, r);
  absl::StatusOr<void*> s2 = a.Allocate(1100, "after emptying");
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_EQ(*s2, p) << "3072 <= 2 x 1536: the cached block is reused, no emptying needed";
  ASSERT_TRUE(a.Free(s1).ok());
  ASSERT_TRUE(a.Free(*s2).ok());
  a.EmptyCache();
  EXPECT_EQ(raw.used(), 0);
  // Emptying for the budget: 3584 cached, a 1024 request does not reuse it
  // (3584 > 2048) and 3584 + 1024 > 4096.
  void* big = *a.Allocate(3500, "big");
  ASSERT_TRUE(a.Free(big).ok());
  absl::StatusOr<void*> t = a.Allocate(1000, "needs the cache emptied");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(raw.used(), 1024);
  EXPECT_LE(a.reserved(), 4096);
  ASSERT_TRUE(a.Free(*t).ok());
}

TEST(CachingAllocator, DeviceOutOfMemory_EmptiesTheCacheAndRetries) {
  HostRaw raw(8192);
  CachingAllocator a(&raw, {});
  void* p = *a.Allocate(4096, "a");
  ASSERT_TRUE(a.Free(p).ok());  // cached
  absl::StatusOr<void*> big = a.Allocate(6000, "b");  // 6144 + 4096 cached > 8192
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(raw.used(), 6144);
  absl::StatusOr<void*> more = a.Allocate(4096, "c");
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(more.status().message(), "out of (fake) device memory"));
  ASSERT_TRUE(a.Free(*big).ok());
}

// A stream-ordered pool's behaviour: freed memory stays with the pool (and
// counts against the device) until Trim hands it back.
class PooledRaw final : public RawDeviceMemory {
 public:
  explicit PooledRaw(int64_t capacity) : capacity_(capacity) {}
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    if (used_ + pooled_ + static_cast<int64_t>(bytes) > capacity_) {
      return absl::ResourceExhaustedError("out of (fake) device memory");
    }
    void* p = std::malloc(bytes);
    sizes_[p] = static_cast<int64_t>(bytes);
    used_ += static_cast<int64_t>(bytes);
    return p;
  }
  void Free(void* p) override {
    used_ -= sizes_.at(p);
    pooled_ += sizes_.at(p);
    sizes_.erase(p);
    std::free(p);
  }
  void Trim() override {
    pooled_ = 0;
    ++trims_;
  }
  int trims() const { return trims_; }

 private:
  int64_t capacity_;
  int64_t used_ = 0, pooled_ = 0;
  int trims_ = 0;
  std::map<void*, int64_t> sizes_;
};

TEST(CachingAllocator, DeviceOutOfMemory_TrimsThePoolBeforeRetrying) {
  PooledRaw raw(1 << 20);
  CachingAllocator a(&raw, {});
  void* p = *a.Allocate(600 << 10, "first");
  ASSERT_TRUE(a.Free(p).ok());  // cached
  // 700 KiB does not fit beside the cached 600 KiB; emptying the cache puts
  // them in the pool, which still holds them until trimmed.
  absl::StatusOr<void*> q = a.Allocate(700 << 10, "second");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(raw.trims(), 1);
  ASSERT_TRUE(a.Free(*q).ok());
}

TEST(CachingAllocator, BadFree_IsInvalidArgument) {
  HostRaw raw;
  CachingAllocator a(&raw, {});
  EXPECT_TRUE(a.Free(nullptr).ok());
  int local = 0;
  EXPECT_EQ(a.Free(&local).code(), absl::StatusCode::kInvalidArgument);
  void* p = *a.Allocate(10, "x");
  ASSERT_TRUE(a.Free(p).ok());
  EXPECT_EQ(a.Free(p).code(), absl::StatusCode::kInvalidArgument) << "double free";
}

TEST(CachingAllocator, Threads_KeepTheBooksStraight_AndTheDestructorReturnsTheCache) {
  HostRaw raw;
  {
    CachingAllocator a(&raw, {});
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&a, t] {
        std::mt19937_64 rng(t);
        std::vector<void*> mine;
        for (int i = 0; i < 3000; ++i) {
          if (mine.empty() || rng() % 2) {
            mine.push_back(*a.Allocate(1 + rng() % 5000, "thread"));
          } else {
            ASSERT_TRUE(a.Free(mine.back()).ok());
            mine.pop_back();
          }
        }
        for (void* p : mine) ASSERT_TRUE(a.Free(p).ok());
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(a.in_use(), 0);
    EXPECT_EQ(raw.used(), a.reserved());
  }
  EXPECT_EQ(raw.used(), 0) << "the destructor returned every cached block";
}

}  // namespace
}  // namespace chunkflow::kernels::cuda
