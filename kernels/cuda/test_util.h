// Test helpers of the GPU tests: whether a GPU is there (and the visible
// skip when not), and device copies of host vectors that can be poisoned.

#ifndef CHUNKFLOW_KERNELS_CUDA_TEST_UTIL_H_
#define CHUNKFLOW_KERNELS_CUDA_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace chunkflow::kernels::cuda::testing {

inline bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// Skips the test, visibly, on a machine without a GPU.
#define REQUIRE_GPU()                                                                     \
  do {                                                                                    \
    if (!::chunkflow::kernels::cuda::testing::HaveGpu()) {                                \
      std::printf("SKIPPED: no CUDA device (kernels/cuda tests need a GPU)\n");           \
      GTEST_SKIP() << "no CUDA device";                                                   \
    }                                                                                     \
  } while (0)

// Round-to-nearest-even to bf16 on the host, as __float2bfloat16_rn does,
// and back.
inline uint16_t HostToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
inline float HostFromBf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A device copy of a host vector; Poisoned(n) is n elements of 0xFF bytes
// (NaN for floats), so an element a kernel never writes shows.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : n_(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr_), bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  static DeviceBuffer Poisoned(size_t n) {
    DeviceBuffer b{std::vector<T>(n)};
    EXPECT_EQ(cudaMemset(b.ptr_, 0xFF, b.bytes()), cudaSuccess);
    return b;
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() { return ptr_; }
  std::vector<T> Host() const {
    std::vector<T> out(n_);
    EXPECT_EQ(cudaMemcpy(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  size_t bytes() const { return n_ * sizeof(T); }
  T* ptr_ = nullptr;
  size_t n_;
};

}  // namespace chunkflow::kernels::cuda::testing

#endif  // CHUNKFLOW_KERNELS_CUDA_TEST_UTIL_H_
