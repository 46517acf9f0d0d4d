// The SIMT emulation (simt.h) itself: what its kernels compute, and the
// faults it reports where a GPU would fail or compute-sanitizer would
// complain. The kernels are simt_test_kernels.cu, run through
// simt_rewrite.py like ops.cu (simt_test, CHUNKFLOW_SIMT_TEST defined).
// simt_kernels_gpu_test builds the same kernels with nvcc and runs the
// tests of what they compute on a GPU: that the emulation computes what
// the hardware does (the mma fragment tables above all). Without a GPU it
// prints SKIPPED.
#include <algorithm>
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
  REQUIRE_GPU();
  const dim3 grid(3, 2, 2), block(5, 4, 3);
  const int n = 3 * 2 * 2 * 5 * 4 * 3;
  DeviceBuffer<int> out(std::vector<int>(n, 0));
  ASSERT_EQ(CountThreads(out.get(), grid, block), cudaSuccess);
  const std::vector<int> got = out.Host();
  for (int i = 0; i < n; ++i) ASSERT_EQ(got[i], 1) << i;
}

TEST(Simt, SharedMemoryThroughABarrier_IsTheOtherThreadsWrite) {
  REQUIRE_GPU();
  for (int n : {32, 96, 256}) {
    for (int shift : {1, -1}) {
      std::vector<float> in(n);
      for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i) + 0.5f;
      DeviceBuffer<float> din(in);
      auto out = DeviceBuffer<float>::Poisoned(2 * n);
      ASSERT_EQ(ShiftThroughShared(out.get(), din.get(), n, 2, shift, /*with_barrier=*/true),
                cudaSuccess);
      const std::vector<float> got = out.Host();
      for (int i = 0; i < 2 * n; ++i) {
        const int t = i % n, src = std::min(std::max(t + shift, 0), n - 1);
        ASSERT_EQ(got[i], in[src]) << "n " << n << " shift " << shift << " i " << i;
      }
    }
  }
}

#ifdef CHUNKFLOW_SIMT_TEST  // what only the emulation promises

// Without the barrier a GPU may or may not show the race. The emulation
// runs the reader before the writer in one of two blocks, whichever thread
// reads whichever's write, so it always does.
TEST(Simt, SharedMemoryWithoutTheBarrier_ShowsTheRace) {
  for (int n : {32, 96, 256}) {
    for (int shift : {1, -1}) {
      std::vector<float> in(n, 1.0f);
      DeviceBuffer<float> din(in);
      auto out = DeviceBuffer<float>::Poisoned(2 * n);
      ASSERT_EQ(ShiftThroughShared(out.get(), din.get(), n, 2, shift, /*with_barrier=*/false),
                cudaSuccess);
      int stale = 0;
      for (float x : out.Host()) stale += std::isnan(x) ? 1 : 0;
      EXPECT_GT(stale, 0) << "n " << n << " shift " << shift;
    }
  }
}

// Block 1 does not see what block 0 left in shared memory.
TEST(Simt, UnwrittenSharedMemory_IsNaNInEveryBlock) {
  const int n = 64;
  DeviceBuffer<float> out(std::vector<float>(2 * n, 0.0f));
  ASSERT_EQ(ReadUnwrittenShared(out.get(), n), cudaSuccess);
  const std::vector<float> got = out.Host();
  for (int i = 0; i < n; ++i) EXPECT_EQ(got[i], 1.0f) << i;
  for (int i = n; i < 2 * n; ++i) EXPECT_TRUE(std::isnan(got[i])) << i;
}

#endif  // CHUNKFLOW_SIMT_TEST

TEST(Simt, ShuffleXor_SumsEachWarp) {
  REQUIRE_GPU();
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

// Width 8: a lane reads an earlier segment's lane, or keeps its own value
// when its partner is in a later segment (CUDA's __shfl_xor_sync).
TEST(Simt, ShuffleXorWithWidth_ReadsOnlyEarlierSegments) {
  REQUIRE_GPU();
  auto out = DeviceBuffer<float>::Poisoned(32);
  ASSERT_EQ(ShuffleWithWidth(out.get()), cudaSuccess);
  const std::vector<float> got = out.Host();
  for (int lane = 0; lane < 32; ++lane) {
    EXPECT_EQ(got[lane], static_cast<float>(lane < 16 ? lane : lane - 16)) << lane;
  }
}

// The fragments are loaded element by element from the PTX ISA's tables;
// on a GPU (simt_kernels_gpu_test) the same kernel checks the tables
// against the hardware, here against the emulation.
TEST(Simt, MmaM16N8K16_IsTheMatrixProduct) {
  REQUIRE_GPU();
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

// ldmatrix.m8n8.x4 and its .trans, against the PTX ISA's "ldmatrix"
// fragment figure, element by element: lane L's register i holds row L / 4,
// columns 2 (L % 4) and 2 (L % 4) + 1 of matrix i (the lower column in the
// low half), or with .trans column L / 4, rows 2 (L % 4) and 2 (L % 4) + 1.
TEST(Simt, LdMatrixX4_FragmentsAsThePtxIsaLaysThemOut) {
  REQUIRE_GPU();
  std::vector<uint16_t> tile(256);
  for (int i = 0; i < 256; ++i) tile[i] = static_cast<uint16_t>(0x1000 + i);  // distinct
  DeviceBuffer<uint16_t> dt(tile);
  for (bool trans : {false, true}) {
    DeviceBuffer<uint32_t> out(std::vector<uint32_t>(128, 0xDEADBEEFu));
    ASSERT_EQ(LdMatrix(out.get(), dt.get(), trans, /*misalign=*/false), cudaSuccess);
    const std::vector<uint32_t> got = out.Host();
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const int r0 = 8 * (i & 1), c0 = 8 * (i >> 1);
        const int g = lane / 4, t = lane % 4;
        auto at = [&](int r, int c) { return static_cast<uint32_t>(tile[(r0 + r) * 16 + c0 + c]); };
        const uint32_t want = trans ? at(2 * t, g) | at(2 * t + 1, g) << 16
                                    : at(g, 2 * t) | at(g, 2 * t + 1) << 16;
        EXPECT_EQ(got[lane * 4 + i], want)
            << (trans ? "trans " : "") << "lane " << lane << " register " << i;
      }
    }
  }
}

// Two groups, the first waited for before the second: every chunk read
// after its wait and a barrier is the source's (zeros where no source
// bytes were asked for), in blocks of both parities.
TEST(Simt, CpAsync_LandsByTheWaitWithZeroFill) {
  REQUIRE_GPU();
  constexpr int kN = 64, kBlocks = 2;
  std::vector<float> in(2 * kN * 4);
  for (size_t i = 0; i < in.size(); ++i) in[i] = 1.0f + static_cast<float>(i);
  DeviceBuffer<float> din(in);
  auto out = DeviceBuffer<float>::Poisoned(kBlocks * kN * 8);
  ASSERT_EQ(CpAsync(out.get(), din.get(), kN, kBlocks, CpAsyncMode::kCorrect), cudaSuccess);
  const std::vector<float> got = out.Host();
  for (int b = 0; b < kBlocks; ++b) {
    for (int t = 0; t < kN; ++t) {
      const int u = (t + 32) % kN;
      for (int i = 0; i < 4; ++i) {
        const float first = u % 8 == 7 ? 0.0f : in[4 * u + i];
        EXPECT_EQ(got[8 * (b * kN + t) + i], first) << "block " << b << " thread " << t;
        EXPECT_EQ(got[8 * (b * kN + t) + 4 + i], in[4 * (kN + u) + i])
            << "block " << b << " thread " << t;
      }
    }
  }
}

#ifdef CHUNKFLOW_SIMT_TEST  // the emulation's fault reports

// Without the barrier after the wait, another warp's chunk is read before
// that warp's copy lands (at its wait, or, in odd blocks, at its issue -
// it has not run yet either way): the poison shows.
TEST(Simt, CpAsyncReadBeforeTheBarrier_ShowsTheRace) {
  constexpr int kN = 64, kBlocks = 2;
  DeviceBuffer<float> din(std::vector<float>(2 * kN * 4, 1.0f));
  auto out = DeviceBuffer<float>::Poisoned(kBlocks * kN * 8);
  ASSERT_EQ(CpAsync(out.get(), din.get(), kN, kBlocks, CpAsyncMode::kNoBarrier), cudaSuccess);
  int stale = 0;
  for (float x : out.Host()) stale += std::isnan(x) ? 1 : 0;
  EXPECT_GT(stale, 0) << "every read saw a landed copy: the race is hidden";
}

TEST(Simt, CpAsyncFaults_FailTheLaunch) {
  constexpr int kN = 64;
  DeviceBuffer<float> din(std::vector<float>(2 * kN * 4 + 8, 1.0f));
  auto out = DeviceBuffer<float>::Poisoned(kN * 8);
  for (CpAsyncMode mode :
       {CpAsyncMode::kNoWait, CpAsyncMode::kMisalignedDst, CpAsyncMode::kMisalignedSrc}) {
    EXPECT_EQ(CpAsync(out.get(), din.get(), kN, 1, mode), cudaErrorLaunchFailure)
        << "mode " << static_cast<int>(mode);
  }
}

TEST(Simt, LdMatrixMisalignedRow_FailsTheLaunch) {
  DeviceBuffer<uint16_t> dt(std::vector<uint16_t>(256, 0));
  DeviceBuffer<uint32_t> out(std::vector<uint32_t>(128, 0));
  EXPECT_EQ(LdMatrix(out.get(), dt.get(), false, /*misalign=*/true), cudaErrorLaunchFailure);
}

TEST(Simt, BadConfigurations_FailAsOnAGpu) {
  DeviceBuffer<int> out(std::vector<int>(2048, 0));
  EXPECT_EQ(CountThreads(out.get(), dim3(1), dim3(2048)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(CountThreads(out.get(), dim3(1), dim3(1, 1, 65)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(CountThreads(out.get(), dim3(1, 65536), dim3(1)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(CountThreads(out.get(), dim3(0), dim3(32)), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the error is returned once";
  EXPECT_EQ(CountThreads(out.get(), dim3(2), dim3(1024)), cudaSuccess);
  for (int x : out.Host()) ASSERT_EQ(x, 1) << "only the valid launch ran";
}

TEST(Simt, DynamicSharedMemory_NeedsTheAttributePast48KiB) {
  auto out = DeviceBuffer<float>::Poisoned(1);
  ASSERT_EQ(UseDynamicShared(out.get(), 4096, 0, false), cudaSuccess);
  EXPECT_EQ(out.Host()[0], 1024.0f);
  EXPECT_EQ(UseDynamicShared(out.get(), 64 << 10, 0, false), cudaErrorInvalidValue);
  EXPECT_EQ(UseDynamicShared(out.get(), 64 << 10, 32 << 10, false), cudaErrorInvalidValue);
  ASSERT_EQ(UseDynamicShared(out.get(), 64 << 10, 64 << 10, false), cudaSuccess);
  EXPECT_EQ(out.Host()[0], 16384.0f);
  EXPECT_EQ(UseDynamicShared(out.get(), 228 << 10, 228 << 10, false), cudaErrorInvalidValue)
      << "an attribute over sm_90's 227 KiB";
  EXPECT_EQ(UseDynamicShared(out.get(), 228 << 10, 227 << 10, false), cudaErrorInvalidValue)
      << "a launch over the attribute";
  ASSERT_EQ(UseDynamicShared(out.get(), 227 << 10, 227 << 10, false), cudaSuccess);
  EXPECT_EQ(out.Host()[0], 227.0f * 256);
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

// A write past the end that no grid check saw (host code here) is found
// when the block is freed.
TEST(Simt, WritePastTheEndSeenAtCudaFree) {
  float* p = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), 100 * sizeof(float)), cudaSuccess);
  p[100] = 0.0f;
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(Simt, DivergentBarrier_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(DivergentBarrier(out.get()), cudaErrorLaunchFailure);
}

TEST(Simt, ShuffleWithExitedLanes_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(ShuffleAfterExit(out.get()), cudaErrorLaunchFailure) << "mask names exited lanes";
  EXPECT_EQ(ShuffleFromExitedLane(out.get()), cudaErrorLaunchFailure) << "reads an exited lane";
}

TEST(Simt, ShuffleWaitingForLanesAtABarrier_FailsTheLaunch) {
  auto out = DeviceBuffer<float>::Poisoned(32);
  EXPECT_EQ(ShuffleAgainstBarrier(out.get()), cudaErrorLaunchFailure);
  // The next launch on the thread runs normally.
  DeviceBuffer<int> idx(std::vector<int>(64, 0));
  EXPECT_EQ(CountThreads(idx.get(), dim3(2), dim3(32)), cudaSuccess);
  for (int x : idx.Host()) ASSERT_EQ(x, 1);
}

#endif  // CHUNKFLOW_SIMT_TEST

}  // namespace
}  // namespace chunkflow::kernels::cuda::simt_test
