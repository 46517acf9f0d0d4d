// Serves both metric sets with fixed sample values until SIGTERM or SIGINT;
// prints the bound port on the first line of stdout. Used by
// prometheus_scrape_test.sh; also handy to look at the exposition by hand:
//
//   bazel run //metrics:metrics_demo -- 127.0.0.1:9100 &
//   curl -s 127.0.0.1:9100/metrics | grep chunkflow_
//
// Recorded: 3 steps (chunkflow_steps_total 3) of 4096 tokens each, 2 workers
// running and 1 idle, 1 running job, 1 memory replan; on the worker side
// forward/recompute/backward of 2 chunks on stage 1, memory and 2 heartbeats.

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "metrics/metrics.h"

namespace {

absl::Status Record(chunkflow::metrics::CoordinatorMetrics& coordinator,
                    chunkflow::metrics::WorkerMetrics& worker) {
  for (double seconds : {1.5, 2.0, 2.5}) {
    if (absl::Status s = coordinator.OnStepCommitted(seconds, 4096, 0.25, 1.1); !s.ok()) return s;
  }
  if (absl::Status s = coordinator.SetWorkers({{"running", 2}, {"idle", 1}}); !s.ok()) return s;
  if (absl::Status s = coordinator.SetJobs({{"running", 1}}); !s.ok()) return s;
  if (absl::Status s = coordinator.OnReplan("memory"); !s.ok()) return s;
  for (int chunk = 0; chunk < 2; ++chunk) {
    for (const char* op : {"forward", "recompute", "backward"}) {
      if (absl::Status s = worker.OnOp(op, 1, 0.020 + 0.01 * chunk); !s.ok()) return s;
    }
  }
  if (absl::Status s = worker.SetMemory({64 << 20, 16 << 20, 4 << 20, 96 << 20}); !s.ok()) {
    return s;
  }
  worker.OnHeartbeat();
  worker.OnHeartbeat();
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) {
    std::cerr << "usage: metrics_demo [bind_address, default 127.0.0.1:0]\n";
    return 2;
  }
  std::string address = argc == 2 ? argv[1] : "127.0.0.1:0";

  // Block the stop signals before civetweb starts its threads, so that they
  // inherit the mask and sigwait below is the one place that receives them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto registry = std::make_shared<prometheus::Registry>();
  auto coordinator = chunkflow::metrics::CoordinatorMetrics::Create(registry);
  auto worker = chunkflow::metrics::WorkerMetrics::Create(registry);
  if (!coordinator.ok() || !worker.ok()) {
    std::cerr << "metrics_demo: " << coordinator.status() << " " << worker.status() << "\n";
    return 1;
  }
  if (absl::Status s = Record(**coordinator, **worker); !s.ok()) {
    std::cerr << "metrics_demo: " << s << "\n";
    return 1;
  }
  auto server = chunkflow::metrics::MetricsServer::Start(address, registry);
  if (!server.ok()) {
    std::cerr << "metrics_demo: " << server.status() << "\n";
    return 1;
  }
  std::cout << (*server)->port() << std::endl;  // flushes: the caller waits for it

  int received = 0;
  sigwait(&stop, &received);
  return 0;
}
