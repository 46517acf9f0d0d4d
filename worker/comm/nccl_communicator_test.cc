// GPU test: runs size-1 communicators on one GPU and 2 ranks (2 threads, 2
// GPUs) where there are two; prints SKIPPED and skips visibly (GTEST_SKIP,
// recorded in the test XML) where there is no CUDA device. Argument checks
// run everywhere.
#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <atomic>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
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

// Tests of what only the NCCL host emulation promises.
#define SKIP_UNLESS_EMULATED(what)                                         \
  do {                                                                     \
    cudaDeviceProp prop_;                                                  \
    ASSERT_EQ(cudaGetDeviceProperties(&prop_, 0), cudaSuccess);            \
    if (std::string(prop_.name) != "host emulation") {                     \
      std::cout << "SKIPPED: the host emulation's " << (what) << std::endl; \
      GTEST_SKIP() << "the host emulation's " << (what);                   \
    }                                                                      \
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

// Each direction its own communicator (as the pipeline links are): both
// ranks start their send first, then receive; the sends stay in flight on
// their own streams, so neither waits for the other. One thread per rank.
TEST(NcclCommunicatorTest,
     StartSendThenRecv_LinkPerDirection_BothRanksSendFirstAndBothArrive) {
  SKIP_UNLESS_GPUS(2);
  constexpr int kSize = 2;
  constexpr int64_t kN = 1 << 16;
  InMemoryKeyValueStore store;
  // links[r][0]: r's outgoing link (r is rank 0), links[r][1]: incoming.
  std::vector<std::vector<std::unique_ptr<Communicator>>> links(kSize);
  std::vector<std::vector<float>> input = {RandomVector(kN, 20),
                                           RandomVector(kN, 21)};
  std::vector<std::vector<float>> received(kSize);
  RunOnRanks(kSize, [&](int r) {
    links[r].resize(2);
    // Join in the same order on both ranks: "0to1" first.
    for (int from : {0, 1}) {
      const int my_rank = r == from ? 0 : 1;
      auto comm = CreateNcclCommunicator(
          my_rank, 2, from == 0 ? "test/link0to1" : "test/link1to0", &store, r);
      ASSERT_TRUE(comm.ok()) << comm.status();
      links[r][r == from ? 0 : 1] = std::move(*comm);
    }
    ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
    DeviceBuffer out(kN), in(kN);
    out.Upload(input[r]);
    auto send = links[r][0]->StartSend(out.get(), kN, /*peer=*/1, /*tag=*/7);
    ASSERT_TRUE(send.ok()) << send.status();
    auto recv = links[r][1]->StartRecv(in.get(), kN, /*peer=*/0, /*tag=*/7);
    ASSERT_TRUE(recv.ok()) << recv.status();
    absl::Status rs = (*recv)->Wait();
    ASSERT_TRUE(rs.ok()) << rs;
    absl::Status ss = (*send)->Wait();
    ASSERT_TRUE(ss.ok()) << ss;
    EXPECT_TRUE((*send)->Done());
    EXPECT_TRUE((*recv)->Done());
    received[r] = in.Download();
  });
  RunOnRanks(kSize, [&](int r) { links[r].clear(); });
  EXPECT_EQ(received[0], input[1]);
  EXPECT_EQ(received[1], input[0]);
}

// NCCL refuses two ranks of one communicator on one device.
TEST(NcclCommunicatorTest, Create_TwoRanksOnOneDevice_Refused) {
  SKIP_UNLESS_GPUS(1);
  InMemoryKeyValueStore store;
  std::vector<absl::Status> status(2);
  RunOnRanks(2, [&](int r) {
    auto comm = CreateNcclCommunicator(r, 2, "test/dup", &store, 0,
                                       absl::Seconds(3));
    status[r] = comm.status();
  });
  EXPECT_FALSE(status[0].ok());
  EXPECT_FALSE(status[1].ok());
  EXPECT_TRUE(absl::StrContains(status[0].message(), "Duplicate GPU") ||
              absl::StrContains(status[1].message(), "Duplicate GPU"))
      << status[0] << " / " << status[1];
}

// Emulation only (on a GPU a small send may complete into NCCL's buffers
// before the receive is posted): ops on one communicator run in stream
// order, so two ranks that each put a send ahead of their receive on ONE
// communicator wait for each other until the timeout. This is the pattern
// the step runner avoids with a communicator per link direction; the
// emulation must catch it.
TEST(NcclCommunicatorTest, StartSendThenRecv_OneCommunicator_EmulationDeadlocks) {
  SKIP_UNLESS_GPUS(2);
  SKIP_UNLESS_EMULATED("stream order");
  InMemoryKeyValueStore store;
  std::vector<std::unique_ptr<Communicator>> comms(2);
  std::vector<absl::Status> recv_status(2);
  RunOnRanks(2, [&](int r) {
    auto comm = CreateNcclCommunicator(r, 2, "test/one_comm", &store, r,
                                       absl::Milliseconds(300));
    ASSERT_TRUE(comm.ok()) << comm.status();
    comms[r] = std::move(*comm);
    ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
    DeviceBuffer out(16), in(16);
    auto send = comms[r]->StartSend(out.get(), 16, 1 - r, 0);
    ASSERT_TRUE(send.ok()) << send.status();
    recv_status[r] = comms[r]->Recv(in.get(), 16, 1 - r, 0);
  });
  // One rank times out; the other sees its abort (or times out too).
  EXPECT_FALSE(recv_status[0].ok());
  EXPECT_FALSE(recv_status[1].ok());
  EXPECT_TRUE(recv_status[0].code() == absl::StatusCode::kDeadlineExceeded ||
              recv_status[1].code() == absl::StatusCode::kDeadlineExceeded)
      << recv_status[0] << " / " << recv_status[1];
  RunOnRanks(2, [&](int r) { comms[r].reset(); });
}

// Emulation only: a device that runs one NCCL kernel at a time, in the
// order they reach the front of their streams (CHUNKFLOW_EMULATED_NCCL_SLOTS=1; NCCL's documentation warns that
// communicators used concurrently rely on their kernels running together):
// even with a communicator per direction, both ranks' sends hold their
// device's one slot while the receives that would match them wait behind.
// With two slots (enough for the step runner's tests; see step_runner_test)
// the same exchange completes, as in the test above.
TEST(NcclCommunicatorTest, CrossingSends_OneNcclKernelPerDevice_EmulationDeadlocks) {
  SKIP_UNLESS_GPUS(2);
  SKIP_UNLESS_EMULATED("kernel slots");
  for (const char* slots : {"1", "2"}) {
    setenv("CHUNKFLOW_EMULATED_NCCL_SLOTS", slots, 1);
    InMemoryKeyValueStore store;
    std::vector<std::vector<std::unique_ptr<Communicator>>> links(2);
    std::vector<absl::Status> recv_status(2);
    RunOnRanks(2, [&](int r) {
      links[r].resize(2);
      for (int from : {0, 1}) {
        // Short where the deadlock is expected, long where it must not be.
        auto comm = CreateNcclCommunicator(
            r == from ? 0 : 1, 2, from == 0 ? "test/slots0to1" : "test/slots1to0", &store, r,
            std::string(slots) == "1" ? absl::Milliseconds(300) : absl::Seconds(30));
        ASSERT_TRUE(comm.ok()) << comm.status();
        links[r][r == from ? 0 : 1] = std::move(*comm);
      }
      ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
      DeviceBuffer out(16), in(16);
      auto send = links[r][0]->StartSend(out.get(), 16, /*peer=*/1, 0);
      ASSERT_TRUE(send.ok()) << send.status();
      recv_status[r] = links[r][1]->Recv(in.get(), 16, /*peer=*/0, 0);
      if (recv_status[r].ok()) recv_status[r] = (*send)->Wait();
    });
    RunOnRanks(2, [&](int r) { links[r].clear(); });
    unsetenv("CHUNKFLOW_EMULATED_NCCL_SLOTS");
    if (std::string(slots) == "1") {
      EXPECT_FALSE(recv_status[0].ok() && recv_status[1].ok());
      EXPECT_TRUE(recv_status[0].code() == absl::StatusCode::kDeadlineExceeded ||
                  recv_status[1].code() == absl::StatusCode::kDeadlineExceeded)
          << recv_status[0] << " / " << recv_status[1];
    } else {
      EXPECT_TRUE(recv_status[0].ok()) << recv_status[0];
      EXPECT_TRUE(recv_status[1].ok()) << recv_status[1];
    }
  }
}

// Emulation only: NCCL does not support several threads issuing to the
// communicators of one device (the step runner's old sender thread per
// link did); the emulation refuses it, so CI catches a regression.
TEST(NcclCommunicatorTest, Send_SecondThreadOnOneDevice_EmulationRefuses) {
  SKIP_UNLESS_GPUS(2);
  SKIP_UNLESS_EMULATED("thread check");
  InMemoryKeyValueStore store;
  // Two links between ranks 0 (device 0) and 1 (device 1).
  std::vector<std::vector<std::unique_ptr<Communicator>>> links(2);
  RunOnRanks(2, [&](int r) {
    for (const char* name : {"test/threads_a", "test/threads_b"}) {
      auto comm = CreateNcclCommunicator(r, 2, name, &store, r);
      ASSERT_TRUE(comm.ok()) << comm.status();
      links[r].push_back(std::move(*comm));
    }
  });
  ASSERT_EQ(links[0].size(), 2u);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  DeviceBuffer a(4), b(4);
  auto first = links[0][0]->StartSend(a.get(), 4, 1, 0);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::Status second;
  std::thread([&] {
    cudaSetDevice(0);
    second = links[0][1]->Send(b.get(), 4, 1, 0);
  }).join();
  EXPECT_EQ(second.code(), absl::StatusCode::kInternal) << second;
  EXPECT_THAT(std::string(second.message()), HasSubstr("two threads"));
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  DeviceBuffer c(4);
  std::thread([&] {
    cudaSetDevice(1);
    EXPECT_TRUE(links[1][0]->Recv(c.get(), 4, 0, 0).ok());
  }).join();
  EXPECT_TRUE((*first)->Wait().ok());
  first->reset();
  RunOnRanks(2, [&](int r) { links[r].clear(); });
}

// Emulation only (how a real peer's failure surfaces depends on NCCL's
// transport): a rank whose receive times out aborts its communicator, its
// later calls fail with FAILED_PRECONDITION naming the first error, and the
// peer's next operation reports the remote error instead of hanging.
TEST(NcclCommunicatorTest, Wait_PeerAborted_PeerSeesRemoteErrorAndBothBreak) {
  SKIP_UNLESS_GPUS(2);
  SKIP_UNLESS_EMULATED("abort semantics");
  InMemoryKeyValueStore store;
  std::vector<std::unique_ptr<Communicator>> comms(2);
  absl::Status timed_out, later, remote;
  RunOnRanks(2, [&](int r) {
    auto comm = CreateNcclCommunicator(r, 2, "test/abort", &store, r,
                                       absl::Milliseconds(300));
    ASSERT_TRUE(comm.ok()) << comm.status();
    comms[r] = std::move(*comm);
  });
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  DeviceBuffer buf1(8);
  timed_out = comms[1]->Recv(buf1.get(), 8, /*peer=*/0, /*tag=*/1);
  later = comms[1]->Barrier();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  DeviceBuffer buf0(8);
  remote = comms[0]->Recv(buf0.get(), 8, /*peer=*/1, /*tag=*/2);
  EXPECT_EQ(timed_out.code(), absl::StatusCode::kDeadlineExceeded) << timed_out;
  EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition) << later;
  EXPECT_THAT(std::string(later.message()), HasSubstr("did not complete"));
  EXPECT_EQ(remote.code(), absl::StatusCode::kUnavailable) << remote;
  EXPECT_THAT(std::string(remote.message()), HasSubstr("rank 1"));
}

// The init of a communicator whose second rank never joins (a rank lost
// during a job's setup) ends when the abort flag is set, not at the 60 s
// timeout.
TEST(NcclCommunicatorTest, Create_AbortSetWhileRanksJoin_AbortedAtOnce) {
  SKIP_UNLESS_GPUS(1);
  InMemoryKeyValueStore store;
  std::atomic<bool> abort{false};
  std::thread aborter([&] {
    absl::SleepFor(absl::Milliseconds(300));
    abort = true;
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateNcclCommunicator(0, 2, "test/abort_init", &store, 0, absl::Seconds(60), &abort);
  const absl::Duration took = absl::Now() - start;
  aborter.join();
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kAborted) << comm.status();
  EXPECT_THAT(std::string(comm.status().message()), HasSubstr("ncclCommInitRankConfig"));
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(10));
}

// Abort from another thread ends a receive the peer never satisfies long
// before the 60 s timeout; later calls are refused with the reason.
TEST(NcclCommunicatorTest, Abort_WhileRecvWaits_AbortedAtOnce) {
  SKIP_UNLESS_GPUS(2);
  InMemoryKeyValueStore store;
  std::vector<std::unique_ptr<Communicator>> comms(2);
  RunOnRanks(2, [&](int r) {
    auto comm = CreateNcclCommunicator(r, 2, "test/abort_wait", &store, r, absl::Seconds(60));
    ASSERT_TRUE(comm.ok()) << comm.status();
    comms[r] = std::move(*comm);
  });
  absl::Status recv;
  absl::Duration took;
  std::thread waiter([&] {
    ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
    DeviceBuffer buf(8);
    const absl::Time start = absl::Now();
    recv = comms[1]->Recv(buf.get(), 8, /*peer=*/0, /*tag=*/1);
    took = absl::Now() - start;
  });
  absl::SleepFor(absl::Milliseconds(300));
  comms[1]->Abort(absl::AbortedError("job 4 generation 1: aborted by the coordinator"));
  waiter.join();
  EXPECT_EQ(recv.code(), absl::StatusCode::kAborted) << recv;
  EXPECT_THAT(std::string(recv.message()), HasSubstr("aborted by the coordinator"));
  EXPECT_LT(took, absl::Seconds(10));
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  absl::Status later = comms[1]->Barrier();
  EXPECT_EQ(later.code(), absl::StatusCode::kAborted) << later;
  EXPECT_THAT(std::string(later.message()), HasSubstr("Barrier() on rank 1"));
  EXPECT_THAT(std::string(later.message()), HasSubstr("aborted by the coordinator"));
  comms[1]->Abort(absl::AbortedError("again"));  // a second Abort keeps the first reason
  absl::Status after = comms[1]->Barrier();
  EXPECT_EQ(after.code(), absl::StatusCode::kAborted) << after;
  EXPECT_THAT(std::string(after.message()), HasSubstr("aborted by the coordinator"));
  EXPECT_THAT(std::string(after.message()), ::testing::Not(HasSubstr("again")));
  comms.clear();
}

}  // namespace
}  // namespace chunkflow::comm
