// All-reduce speed of the Gloo communicator: `ranks` threads of one process
// over loopback TCP, a table of median time per AllReduceSum by size.
//   bazel run -c opt //worker/comm:gloo_allreduce_bench -- [ranks] [iters]
// algbw = bytes / time; busbw = algbw * 2 (ranks - 1) / ranks (what each
// link carries in a ring, comparable across rank counts).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::comm {
namespace {

int Main(int ranks, int iters) {
  InMemoryKeyValueStore store;
  std::vector<std::unique_ptr<Communicator>> comms(ranks);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(ranks);
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      GlooOptions o;
      o.rank = r;
      o.size = ranks;
      o.prefix = "bench";
      auto c = CreateGlooCommunicator(o, &store);
      if (c.ok()) {
        comms[r] = std::move(*c);
      } else {
        errors[r] = c.status().ToString();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) {
    if (!e.empty()) {
      std::fprintf(stderr, "%s\n", e.c_str());
      return 1;
    }
  }
  std::printf("%10s %6s %12s %12s %12s\n", "floats", "ranks", "median_ms",
              "algbw_GB/s", "busbw_GB/s");
  for (int64_t n :
       {int64_t{1000}, int64_t{100000}, int64_t{1000000}, int64_t{10000000}}) {
    std::vector<std::vector<float>> data(ranks, std::vector<float>(n, 1.0f));
    std::vector<double> seconds;
    for (int it = 0; it < iters + 2; ++it) {  // 2 warm-up rounds
      threads.clear();
      const absl::Time start = absl::Now();
      for (int r = 0; r < ranks; ++r) {
        threads.emplace_back([&, r] {
          absl::Status s = comms[r]->AllReduceSum(data[r].data(), n);
          if (!s.ok()) errors[r] = s.ToString();
        });
      }
      for (auto& t : threads) t.join();
      if (it >= 2)
        seconds.push_back(absl::ToDoubleSeconds(absl::Now() - start));
    }
    for (const std::string& e : errors) {
      if (!e.empty()) {
        std::fprintf(stderr, "%s\n", e.c_str());
        return 1;
      }
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    const double algbw = n * sizeof(float) / median / 1e9;
    std::printf("%10lld %6d %12.3f %12.3f %12.3f\n", static_cast<long long>(n),
                ranks, median * 1e3, algbw, algbw * 2.0 * (ranks - 1) / ranks);
  }
  return 0;
}

}  // namespace
}  // namespace chunkflow::comm

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 4;
  const int iters = argc > 2 ? std::atoi(argv[2]) : 20;
  if (ranks < 1 || iters < 1) {
    std::fprintf(stderr, "usage: gloo_allreduce_bench [ranks>=1] [iters>=1]\n");
    return 2;
  }
  return chunkflow::comm::Main(ranks, iters);
}
