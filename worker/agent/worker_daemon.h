// The worker daemon: one process per device. Registers with the coordinator,
// keeps a Connect stream open (reconnecting with the same incarnation when it
// breaks, so a restarted coordinator finds it again), sends heartbeats, and
// runs what the coordinator sends, in order, on one job thread:
//
//   RankAssignment + CommBootstrap  ->  communicators (Gloo over the
//       coordinator's key-value store), StepRunner for the stage, weights
//       from the checkpoint / model directory / seeded init
//   StepPlanForWorker               ->  StepRunner::RunStep, checkpoint shard
//       (dp rank 0) when asked, StepReport with per-op times and peak memory
//   Control ABORT / RELEASE         ->  drop the job's state, become idle
//   Control SHUTDOWN                ->  Run() returns
//
// An ABORT or RELEASE (and SHUTDOWN, and Stop) also acts at once, from the
// stream thread: it aborts the held job's communicators
// (Communicator::Abort) and its rendezvous, so a step or a setup waiting in
// them for a lost rank fails now rather than at the job's communication
// timeout, and the worker can take the job's next assignment.
//
// A plan for a step it already applied (resent after a coordinator restart)
// is answered with the report it kept; a step error is reported as a
// WorkerError and the job state is dropped (the communicators are broken).
//
//   WorkerDaemonOptions o;  o.coordinator = "127.0.0.1:50051";
//   absl::StatusOr<std::unique_ptr<WorkerDaemon>> w = WorkerDaemon::Create(o);
//   absl::Status s = (*w)->Run();   // until Stop() or a SHUTDOWN control

#ifndef CHUNKFLOW_WORKER_AGENT_WORKER_DAEMON_H_
#define CHUNKFLOW_WORKER_AGENT_WORKER_DAEMON_H_

#include <iostream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::worker {

// A channel to the coordinator: 64 MiB messages, reconnects within a second,
// and HTTP/2 keepalive pings (10 s, 5 s timeout; the coordinator permits
// them), so a coordinator that vanished without closing the connection is
// noticed in ~15 s. The workers' channel, and the admin commands' (whose
// watch streams last as long as a job).
std::shared_ptr<grpc::Channel> CoordinatorChannel(const std::string& target);

struct WorkerDaemonOptions {
  std::string coordinator = "127.0.0.1:50051";  // host:port of WorkerService
  std::string name;  // stable worker name (pod name); empty: the coordinator picks
  // Address Gloo listens on for peer connections (an interface name or a
  // local address).
  std::string host = "127.0.0.1";
  // Prometheus /metrics; empty: none.
  std::string metrics_listen;
  std::ostream* log = &std::cerr;
  // Stop after this long without reaching the coordinator (0: retry forever).
  absl::Duration give_up_after = absl::ZeroDuration();
  // "cpu": the CPU engine, Gloo links. "cuda": the CUDA engine on
  // `cuda_device` (bf16 GEMMs unless precision is "fp32"), its links Gloo
  // staged through host memory (`links` "gloo", the default; workers may
  // share a GPU) or NCCL on device memory (`links` "nccl", one GPU per
  // worker; one thread drives every communicator, one per link direction;
  // tested over the NCCL host emulation, not yet on GPUs: docs/cuda.md).
  std::string device = "cpu";
  int cuda_device = 0;
  std::string precision = "bf16";
  std::string links = "gloo";
  // "cuda": where a sequence's K/V state lives: "auto" (on the device while
  // it fits the device's memory, else pinned host memory), "never" or
  // "always" (engine::cuda::StateOffload).
  std::string offload_state = "auto";
};

class WorkerDaemon {
 public:
  // Errors: INVALID_ARGUMENT (empty coordinator address; device, precision,
  // links or offload_state not one of their values); UNAVAILABLE (device "cuda" without a
  // CUDA device); the metrics server's errors.
  static absl::StatusOr<std::unique_ptr<WorkerDaemon>> Create(const WorkerDaemonOptions& options);
  virtual ~WorkerDaemon() = default;

  // Serves until Stop() or a SHUTDOWN control (OK), or until the coordinator
  // stayed unreachable for give_up_after (UNAVAILABLE).
  virtual absl::Status Run() = 0;
  virtual void Stop() = 0;
  virtual int metrics_port() const = 0;
};

// The coordinator's key-value store over gRPC (WorkerService.KvSet/KvGet):
// Get polls (5 ms growing to 100 ms) until the key is set or `timeout`.
std::unique_ptr<comm::KeyValueStore> CreateRemoteKeyValueStore(const std::string& coordinator);

}  // namespace chunkflow::worker

#endif  // CHUNKFLOW_WORKER_AGENT_WORKER_DAEMON_H_
