// GPU test: runs size-1 communicators on one GPU and 2 ranks (2 threads, 2
// GPUs) where there are two; prints SKIPPED and skips visibly (GTEST_SKIP,
// recorded in the test XML) where there is no CUDA device. Argument checks
// run everywhere.
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/comm/communicator.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::comm {
namespace {

using ::testing::HasSubstr;

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

#define SKIP_UNLESS_GPUS(n)                                                  \
  do {                                                                       \
    const int count_ = CudaDeviceCount();                                    \
    if (count_ == 0) {                                                       \
      std::cout << "SKIPPED: no CUDA device (nccl_communicator_test needs "  \
                   "a GPU)"                                                  \
                << std::endl;                                                \
      GTEST_SKIP() << "no CUDA device (nccl_communicator_test needs a GPU)"; \
    }                                                                        \
    if (count_ < (n)) {                                                      \
      std::cout << "SKIPPED: " << count_ << " CUDA device(s), this test "    \
                << "needs " << (n) << std::endl;                             \
      GTEST_SKIP() << count_ << " CUDA device(s), this test needs " << (n);  \
    }                                                                        \
  } while (false)

// Device buffer of floats, freed on scope exit (current device at creation).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr_),
                         std::max<int64_t>(n, 1) * sizeof(float)),
              cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  float* get() { return ptr_; }
  void Upload(const std::vector<float>& v) {
    ASSERT_EQ(
        cudaMemcpy(ptr_, v.data(), n_ * sizeof(float), cudaMemcpyHostToDevice),
        cudaSuccess);
    // A pageable-memory copy may return before its DMA lands.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  std::vector<float> Download() {
    std::vector<float> v(n_);
    EXPECT_EQ(
        cudaMemcpy(v.data(), ptr_, n_ * sizeof(float), cudaMemcpyDeviceToHost),
        cudaSuccess);
    return v;
  }

 private:
  int64_t n_;
  float* ptr_ = nullptr;
};

void RunOnRanks(int size, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) threads.emplace_back(fn, r);
  for (std::thread& t : threads) t.join();
}

std::vector<float> RandomVector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ---------------------------------------------------------------------------
// Everywhere (no GPU needed)
// ---------------------------------------------------------------------------

TEST(NcclCommunicatorTest, Create_InvalidArguments_InvalidArgumentNamingValue) {
  InMemoryKeyValueStore store;
  auto bad_rank = CreateNcclCommunicator(2, 2, "p", &store, 0);
  EXPECT_EQ(bad_rank.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_rank.status().message()), HasSubstr("rank 2"));
  auto no_store = CreateNcclCommunicator(0, 1, "p", nullptr, 0);
  EXPECT_EQ(no_store.status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_device = CreateNcclCommunicator(0, 1, "p", &store, -3);
  EXPECT_EQ(bad_device.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_device.status().message()),
              HasSubstr("CUDA device -3"));
}

TEST(NcclCommunicatorTest,
     Create_DeviceIndexPastCount_InvalidArgumentOrUnavailableWithoutGpu) {
  InMemoryKeyValueStore store;
  auto comm = CreateNcclCommunicator(0, 1, "p", &store, 1000);
  if (CudaDeviceCount() == 0) {
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kUnavailable)
        << comm.status();
    EXPECT_THAT(std::string(comm.status().message()),
                HasSubstr("no CUDA device"));
  } else {
    EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument)
        << comm.status();
    EXPECT_THAT(std::string(comm.status().message()),
                HasSubstr("CUDA device 1000 is outside"));
  }
}

// ---------------------------------------------------------------------------
// One GPU: single-rank communicators
// ---------------------------------------------------------------------------

TEST(NcclCommunicatorTest, AllReduceSumAndBarrier_SingleRank_IdentityAndOk) {
  SKIP_UNLESS_GPUS(1);
  InMemoryKeyValueStore store;
  auto comm = CreateNcclCommunicator(0, 1, "test/nccl1", &store, 0);
  ASSERT_TRUE(comm.ok()) << comm.status();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  const std::vector<float> host = RandomVector(1000, 1);
  DeviceBuffer buf(host.size());
  buf.Upload(host);
  absl::Status s = (*comm)->AllReduceSum(buf.get(), host.size());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(buf.Download(), host);
  EXPECT_TRUE((*comm)->Barrier().ok());
  // Host memory is rejected, and the communicator stays usable.
  std::vector<float> on_host(4);
  absl::Status host_ptr = (*comm)->AllReduceSum(on_host.data(), 4);
  EXPECT_EQ(host_ptr.code(), absl::StatusCode::kInvalidArgument) << host_ptr;
  EXPECT_THAT(std::string(host_ptr.message()), HasSubstr("host memory"));
  EXPECT_TRUE((*comm)->Barrier().ok());
}

// ---------------------------------------------------------------------------
// Two GPUs: two ranks in two threads
// ---------------------------------------------------------------------------

TEST(NcclCommunicatorTest,
     AllReduceSumSendRecvBarrier_TwoRanks_SumBitIdenticalAndMessagesArrive) {
  SKIP_UNLESS_GPUS(2);
  constexpr int kSize = 2;
  constexpr int64_t kN = 1 << 20;
  InMemoryKeyValueStore store;
  std::vector<std::unique_ptr<Communicator>> comms(kSize);
  std::vector<std::vector<float>> result(kSize), received(kSize);
  std::vector<std::vector<float>> input = {RandomVector(kN, 10),
                                           RandomVector(kN, 11)};
  RunOnRanks(kSize, [&](int r) {
    auto comm = CreateNcclCommunicator(r, kSize, "test/nccl2", &store, r);
    ASSERT_TRUE(comm.ok()) << comm.status();
    comms[r] = std::move(*comm);
    ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
    DeviceBuffer grads(kN);
    grads.Upload(input[r]);
    absl::Status s = comms[r]->AllReduceSum(grads.get(), kN);
    ASSERT_TRUE(s.ok()) << s;
    result[r] = grads.Download();
    // Rank 0 sends its input to rank 1, then rank 1 answers (issue order).
    DeviceBuffer msg(kN);
    if (r == 0) {
      msg.Upload(input[0]);
      ASSERT_TRUE(comms[0]->Send(msg.get(), kN, 1, /*tag=*/3).ok());
      ASSERT_TRUE(comms[0]->Recv(msg.get(), kN, 1, /*tag=*/4).ok());
    } else {
      ASSERT_TRUE(comms[1]->Recv(msg.get(), kN, 0, /*tag=*/3).ok());
      ASSERT_TRUE(comms[1]->Send(msg.get(), kN, 0, /*tag=*/4).ok());
    }
    received[r] = msg.Download();
    ASSERT_TRUE(comms[r]->Barrier().ok());
  });
  // Destroy together: finalizing waits for the peer.
  RunOnRanks(kSize, [&](int r) { comms[r].reset(); });
  ASSERT_EQ(result[0].size(), static_cast<size_t>(kN));
  ASSERT_EQ(result[1].size(), static_cast<size_t>(kN));
  EXPECT_EQ(std::memcmp(result[0].data(), result[1].data(), kN * sizeof(float)),
            0);
  int64_t bad = 0;
  for (int64_t i = 0; i < kN; ++i) {
    const double exact = double{input[0][i]} + double{input[1][i]};
    const double scale = std::abs(double{input[0][i]}) + std::abs(input[1][i]);
    if (std::abs(result[0][i] - exact) > 1e-6 * scale) ++bad;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(received[1], input[0]);
  EXPECT_EQ(received[0], input[0]);  // echoed back by rank 1
}

}  // namespace
}  // namespace chunkflow::comm
