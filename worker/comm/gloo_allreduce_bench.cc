// All-reduce speed of the Gloo communicator: `ranks` threads of one process
// over loopback TCP, a table of median time per AllReduceSum by size,
// beside gloo::allreduce (Gloo's own ring algorithm on a context of its
// own) as the reference in the same run: the communicator runs its own ring
// over unbound buffers (so that Abort can reach every wait), and this says
// what that costs.
//   bazel run -c opt //worker/comm:gloo_allreduce_bench -- [ranks] [iters]
// algbw = bytes / time; busbw = algbw * 2 (ranks - 1) / ranks (what each
// link carries in a ring, comparable across rank counts).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gloo/allreduce.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/hash_store.h"
#include "gloo/transport/tcp/device.h"
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
  // The reference: Gloo's ring all-reduce on its own full mesh.
  gloo::rendezvous::HashStore gloo_store;
  std::vector<std::shared_ptr<gloo::rendezvous::Context>> gloo_contexts(ranks);
  threads.clear();
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      gloo::transport::tcp::attr attr;
      attr.hostname = "127.0.0.1";
      auto context = std::make_shared<gloo::rendezvous::Context>(r, ranks);
      std::shared_ptr<gloo::transport::Device> device = gloo::transport::tcp::CreateDevice(attr);
      context->connectFullMesh(gloo_store, device);
      gloo_contexts[r] = std::move(context);
    });
  }
  for (auto& t : threads) t.join();

  // Median seconds of `iters` timed rounds (after 2 warm-up rounds) of
  // run(rank, data) on every rank at once.
  auto time = [&](int64_t n, const std::function<void(int, float*)>& run) {
    std::vector<std::vector<float>> data(ranks, std::vector<float>(n, 1.0f));
    std::vector<double> seconds;
    for (int it = 0; it < iters + 2; ++it) {
      threads.clear();
      const absl::Time start = absl::Now();
      for (int r = 0; r < ranks; ++r) {
        threads.emplace_back([&, r] { run(r, data[r].data()); });
      }
      for (auto& t : threads) t.join();
      if (it >= 2) seconds.push_back(absl::ToDoubleSeconds(absl::Now() - start));
    }
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 2];
  };

  std::printf("%10s %6s %12s %12s %12s %14s %12s\n", "floats", "ranks", "median_ms",
              "algbw_GB/s", "busbw_GB/s", "gloo_ring_ms", "time_vs_gloo");
  for (int64_t n :
       {int64_t{1000}, int64_t{100000}, int64_t{1000000}, int64_t{10000000}}) {
    const double ours = time(n, [&](int r, float* data) {
      absl::Status s = comms[r]->AllReduceSum(data, n);
      if (!s.ok()) errors[r] = s.ToString();
    });
    for (const std::string& e : errors) {
      if (!e.empty()) {
        std::fprintf(stderr, "%s\n", e.c_str());
        return 1;
      }
    }
    const double gloo_ring = time(n, [&](int r, float* data) {
      gloo::AllreduceOptions opts(gloo_contexts[r]);
      opts.setOutput(data, static_cast<size_t>(n));
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      opts.setReduceFunction([](void* c, const void* a, const void* b, size_t count) {
        float* out = static_cast<float*>(c);
        const float* x = static_cast<const float*>(a);
        const float* y = static_cast<const float*>(b);
        for (size_t i = 0; i < count; ++i) out[i] = x[i] + y[i];
      });
      gloo::allreduce(opts);
    });
    const double algbw = n * sizeof(float) / ours / 1e9;
    std::printf("%10lld %6d %12.3f %12.3f %12.3f %14.3f %11.2fx\n", static_cast<long long>(n),
                ranks, ours * 1e3, algbw, algbw * 2.0 * (ranks - 1) / ranks, gloo_ring * 1e3,
                ours / gloo_ring);
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
