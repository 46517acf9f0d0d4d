// The SIMT emulation (simt.h) itself: what its kernels compute, and the
// faults it reports as a GPU (or compute-sanitizer) would. The kernels are
// simt_test_kernels.cu, run through simt_rewrite.py like ops.cu.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/simt_test_kernels.h"
#include "kernels/cuda/test_util.h"

namespace chunkflow::kernels::cuda::simt_test {
namespace {

using testing::DeviceBuffer;
using testing::HostFromBf16;
using testing::HostToBf16;

TEST(Simt, EveryThreadOfEveryBlockRunsOnce) {
  const dim3 grid(3, 2, 2), block(5, 4, 3);
  const int n = 3 * 2 * 2 * 5 * 4 * 3;
  auto out = DeviceBuffer<int>::Poisoned(n);
  ASSERT_EQ(WriteIndices(out.get(), grid, block), cudaSuccess);
  const std::vector<int> got = out.Host();
  for (int i = 0; i < n; ++i) ASSERT_EQ(got[i], i);
}

TEST(Simt, SharedMemoryThroughABarrier_IsTheOtherThreadsWrite) {
  for (int n : {32, 96, 256}) {
    std::vector<float> in(n);
    for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i) + 0.5f;
    DeviceBuffer<float> din(in);
    auto out = DeviceBuffer<float>::Poisoned(n);
    ASSERT_EQ(RotateThroughShared(out.get(), din.get(), n, /*with_barrier=*/true), cudaSuccess);
    const std::vector<float> got = out.Host();
    for (int i = 0; i < n; ++i) ASSERT_EQ(got[i], in[(i + 1) % n]) << "n " << n << " i " << i;
  }
}

// Without the barrier a GPU may or may not show the race; the emulation
// runs the reader before the writer, so it always does.
TEST(Simt, SharedMemoryWithoutTheBarrier_ShowsTheRace) {
  for (int n : {32, 96, 256}) {
    std::vector<float> in(n, 1.0f);
    DeviceBuffer<float> din(in);
    auto out = DeviceBuffer<float>::Poisoned(n);
    ASSERT_EQ(RotateThroughShared(out.get(), din.get(), n, /*with_barrier=*/false), cudaSuccess);
    const std::vector<float> got = out.Host();
    int stale = 0;
    for (float x : got) stale += std::isnan(x) ? 1 : 0;
    EXPECT_GT(stale, 0) << "n " << n;
  }
}

TEST(Simt, UnwrittenSharedMemory_IsNaN) {
  auto out = DeviceBuffer<float>::Poisoned(64);
  std::vector<float> zeros(64, 0.0f);
  ASSERT_EQ(cudaMemcpy(out.get(), zeros.data(), 64 * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(ReadUnwrittenShared(out.get(), 64), cudaSuccess);
  for (float x : out.Host()) EXPECT_TRUE(std::isnan(x));
}

TEST(Simt, ShuffleXor_SumsEachWarp) {
  const int n = 96;
  std::vector<float> in(n);
  std::vector<double> in64(n);
  for (int i = 0; i < n; ++i) {
    in[i] = static_cast<float>(i);
    in64[i] = 1e-3 * i;
  }
  DeviceBuffer<float> din(in);
  DeviceBuffer<double> din64(in64);
  auto out = DeviceBuffer<float>::Poisoned(n);
  auto out64 = DeviceBuffer<double>::Poisoned(n);
  ASSERT_EQ(WarpSums(out.get(), din.get(), n), cudaSuccess);
  ASSERT_EQ(WarpSumsDouble(out64.get(), din64.get(), n), cudaSuccess);
  const std::vector<float> got = out.Host();
  const std::vector<double> got64 = out64.Host();
  for (int i = 0; i < n; ++i) {
    const int w = i / 32;
    // sum of 32w .. 32w + 31
    EXPECT_EQ(got[i], static_cast<float>(32 * 32 * w + 31 * 16)) << i;
    EXPECT_NEAR(got64[i], 1e-3 * (32 * 32 * w + 31 * 16), 1e-9) << i;
  }
}

TEST(Simt, MmaM16N8K16_IsTheMatrixProduct) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<uint16_t> a(16 * 16), b(16 * 8);
  std::vector<float> c(16 * 8);
  for (auto& x : a) x = HostToBf16(u(rng));
  for (auto& x : b) x = HostToBf16(u(rng));
  for (auto& x : c) x = u(rng);
  DeviceBuffer<uint16_t> da(a), db(b);
  DeviceBuffer<float> dc(c);
  auto dd = DeviceBuffer<float>::Poisoned(16 * 8);
  ASSERT_EQ(Mma(dd.get(), da.get(), db.get(), dc.get()), cudaSuccess);
  const std::vector<float> d = dd.Host();
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double want = c[i * 8 + j];
      for (int k = 0; k < 16; ++k) {
        want += static_cast<double>(HostFromBf16(a[i * 16 + k])) * HostFromBf16(b[k * 8 + j]);
      }
      EXPECT_NEAR(d[i * 8 + j], want, 1e-4) << "row " << i << " col " << j;
    }
  }
}

TEST(Simt, BadConfigurations_FailAsOnAGpu) {
  auto out = DeviceBuffer<int>::Poisoned(4096);
  EXPECT_EQ(WriteIndices(out.get(), dim3(1), dim3(2048)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(WriteIndices(out.get(), dim3(1), dim3(1, 1, 65)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(WriteIndices(out.get(), dim3(1, 65536), dim3(1)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(WriteIndices(out.get(), dim3(0), dim3(32)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the error is returned once";
  EXPECT_EQ(WriteIndices(out.get(), dim3(2), dim3(1024)), cudaSuccess);
}

TEST(Simt, DynamicSharedMemory_NeedsTheAttributePast48KiB) {
  auto out = DeviceBuffer<float>::Poisoned(1);
  ASSERT_EQ(UseDynamicShared(out.get(), 4096, 0, false), cudaSuccess);
  EXPECT_EQ(out.Host()[0], 1024.0f);
  EXPECT_EQ(UseDynamicShared(out.get(), 64 << 10, 0, false), cudaErrorInvalidValue);
  EXPECT_EQ(UseDynamicShared(out.get(), 64 << 10, 32 << 10, false), cudaErrorInvalidValue);
  ASSERT_EQ(UseDynamicShared(out.get(), 64 << 10, 64 << 10, false), cudaSuccess);
  EXPECT_EQ(out.Host()[0], 16384.0f);
  EXPECT_EQ(UseDynamicShared(out.get(), 228 << 10, 0, false), cudaErrorInvalidValue);
  EXPECT_EQ(UseDynamicShared(out.get(), 228 << 10, 228 << 10, false), cudaErrorInvalidValue)
      << "over sm_90's 227 KiB";
}

TEST(Simt, WritePastDynamicSharedMemory_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(1);
  EXPECT_EQ(UseDynamicShared(out.get(), 4096, 0, /*overrun=*/true), cudaErrorLaunchFailure);
}

// A cudaMalloc block is followed by guard bytes; a kernel that writes into
// them fails its launch, once.
TEST(Simt, WritePastACudaMallocBlock_FailsTheLaunch) {
  for (int n : {64, 1000}) {  // the end on a 256-byte boundary, and inside the padding
    auto out = DeviceBuffer<float>::Poisoned(n);
    EXPECT_EQ(WriteOnePast(out.get(), n - 1), cudaSuccess) << n;
    EXPECT_EQ(WriteOnePast(out.get(), n), cudaErrorLaunchFailure) << n;
    EXPECT_EQ(WriteOnePast(out.get(), n - 1), cudaSuccess) << "reported once; n " << n;
  }
}

TEST(Simt, DivergentBarrier_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(DivergentBarrier(out.get()), cudaErrorLaunchFailure);
}

TEST(Simt, ShuffleWithExitedLanes_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(ShuffleAfterExit(out.get()), cudaErrorLaunchFailure);
}

TEST(Simt, ShuffleWaitingForLanesAtABarrier_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(ShuffleAgainstBarrier(out.get()), cudaErrorLaunchFailure);
  // The next launch on the thread runs normally.
  auto idx = DeviceBuffer<int>::Poisoned(64);
  EXPECT_EQ(WriteIndices(idx.get(), dim3(2), dim3(32)), cudaSuccess);
  EXPECT_EQ(idx.Host()[63], 63);
}

}  // namespace
}  // namespace chunkflow::kernels::cuda::simt_test
