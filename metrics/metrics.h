// Prometheus metrics of the coordinator and the workers, and the HTTP server
// that exposes them at /metrics (prometheus-cpp 1.0.1, text format 0.0.4).
//
// Naming follows the architecture notes: every name starts with chunkflow_, values
// are in base units (seconds, bytes), counters end in _total, and no label
// carries a step, chunk, sequence or worker id. Every label has a fixed, small
// set of values, checked here (an unknown value is INVALID_ARGUMENT, and
// nothing is recorded), so the number of series is bounded.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   std::unique_ptr<CoordinatorMetrics> m = *CoordinatorMetrics::Create(registry);
//   std::unique_ptr<MetricsServer> server = *MetricsServer::Start("0.0.0.0:9100", registry);
//   m->OnStepCommitted(/*seconds=*/12.5, /*tokens=*/1 << 20, /*bubble=*/0.18,
//                      /*imbalance=*/1.04).IgnoreError();  // or log the status
//   absl::Status s = m->SetWorkers({{"running", 8}, {"dead", 1}});  // absent states: 0
//
// Thread safety: every method may be called from any thread at any time,
// also while a scrape is running (prometheus-cpp metrics are atomic or locked).
//
// Exceptions: prometheus-cpp and civetweb throw (bad names, a family name
// registered twice with different types, a port that cannot be bound). Every
// call into them that can throw is wrapped here; none escapes this library.

#ifndef CHUNKFLOW_METRICS_METRICS_H_
#define CHUNKFLOW_METRICS_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace chunkflow::metrics {

// ---------------------------------------------------------------------------
// Label values and buckets
// ---------------------------------------------------------------------------

// chunkflow_workers{state}. Mirrors chunkflow.v1.WorkerState, except that
// WORKER_STATE_TRAINING is exported as "running".
inline constexpr std::string_view kWorkerStates[] = {"idle", "assigned", "running", "draining",
                                                     "dead"};
// chunkflow_jobs{state}. Mirrors chunkflow.v1.JobState.
inline constexpr std::string_view kJobStates[] = {"pending", "running", "completed", "failed",
                                                  "cancelled"};
// chunkflow_replans_total{reason}: the memory budget forced a new K or chunk
// size, a refit changed the cost model the next steps balance with, or an
// admin changed the schedule (UpdateSchedule).
inline constexpr std::string_view kReplanReasons[] = {"memory", "cost_model", "admin"};
// chunkflow_op_seconds{op} and chunkflow_chunks_total{op}.
inline constexpr std::string_view kOps[] = {"forward", "backward", "recompute"};
// chunkflow_memory_bytes{kind}.
inline constexpr std::string_view kMemoryKinds[] = {"activations", "state", "scratch"};
// chunkflow_op_seconds{stage} takes "0" .. "kMaxStages - 1".
inline constexpr int kMaxStages = 64;

// Bucket upper bounds of chunkflow_step_seconds and chunkflow_op_seconds:
// exponential, 1 ms * 2^i for i = 0..19, i.e. 0.001, 0.002, 0.004, ..., 262.144,
// 524.288 s (~8.7 min), then +Inf. One op of a small chunk on a GPU takes
// milliseconds, a full step of a 256K-token batch on CPUs takes minutes; a
// factor of 2 per bucket keeps histogram_quantile within 2x across that range
// with 21 series per histogram.
std::vector<double> TimeBuckets();

// ---------------------------------------------------------------------------
// MetricsServer: serves one registry at http://<bind_address>/metrics
// ---------------------------------------------------------------------------

class MetricsServer {
 public:
  // bind_address: "host:port" (IPv4, or "[v6]:port") or "port"; port 0 picks a
  // free port, read it back with port(). Serves with 2 civetweb threads.
  // Errors: INVALID_ARGUMENT for an address that is not of that form (empty,
  // a list, a port outside 0..65535); UNAVAILABLE naming the address when it
  // cannot be bound (port in use, host not local); INVALID_ARGUMENT for a
  // null registry.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      std::string_view bind_address, std::shared_ptr<prometheus::Registry> registry);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();  // stops serving; in-flight scrapes finish first

  int port() const { return port_; }  // the bound port, never 0

 private:
  MetricsServer(std::shared_ptr<prometheus::Registry> registry,
                std::unique_ptr<prometheus::Exposer> exposer, int port);

  // The exposer holds only a weak_ptr to the registry: keep it alive here.
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_;
};

// ---------------------------------------------------------------------------
// CoordinatorMetrics
// ---------------------------------------------------------------------------
//
//   chunkflow_steps_total                  counter    steps committed
//   chunkflow_tokens_trained_total         counter    tokens of committed steps
//   chunkflow_step_seconds                 histogram  wall time of one step
//   chunkflow_bubble_ratio                 gauge      last step, 0..1
//   chunkflow_dp_imbalance                 gauge      last step, max/mean >= 1
//   chunkflow_workers{state}               gauge      registered workers
//   chunkflow_jobs{state}                  gauge      jobs known to the store
//   chunkflow_replans_total{reason}        counter    replanning events
//
// Every labelled series exists (at 0) from Create on, so rate() and absent()
// work from the first scrape.
class CoordinatorMetrics {
 public:
  // Registers the families above on `registry` (kept alive by this object).
  // Two metric sets on one registry share the families and series.
  // Errors: ALREADY_EXISTS naming the metric when the registry holds a family
  // of that name with another type or labels; INVALID_ARGUMENT for a null
  // registry.
  static absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> Create(
      std::shared_ptr<prometheus::Registry> registry);

  CoordinatorMetrics(const CoordinatorMetrics&) = delete;
  CoordinatorMetrics& operator=(const CoordinatorMetrics&) = delete;

  // One committed step: its wall time, the tokens it trained, its bubble
  // ratio (idle share of (dp, stage) slots, SimResult::bubble_ratio or the
  // measured one) and dp imbalance (max / mean of per-rank busy time).
  // Errors: INVALID_ARGUMENT naming the value for a negative or non-finite
  // seconds or imbalance, negative tokens, or a bubble outside [0, 1].
  absl::Status OnStepCommitted(double seconds, int64_t tokens, double bubble, double imbalance);

  // Sets chunkflow_workers / chunkflow_jobs from a full count by state;
  // states absent from the map are set to 0. Errors: INVALID_ARGUMENT naming
  // an unknown state or a negative count (then nothing is changed).
  absl::Status SetWorkers(const std::map<std::string, int>& by_state);
  absl::Status SetJobs(const std::map<std::string, int>& by_state);

  // Errors: INVALID_ARGUMENT naming an unknown reason ("memory", "cost_model").
  absl::Status OnReplan(std::string_view reason);

 private:
  CoordinatorMetrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* steps_ = nullptr;
  prometheus::Counter* tokens_ = nullptr;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Gauge* bubble_ratio_ = nullptr;
  prometheus::Gauge* dp_imbalance_ = nullptr;
  std::map<std::string, prometheus::Gauge*, std::less<>> workers_;  // by state
  std::map<std::string, prometheus::Gauge*, std::less<>> jobs_;     // by state
  std::map<std::string, prometheus::Counter*, std::less<>> replans_;  // by reason
};

// ---------------------------------------------------------------------------
// WorkerMetrics
// ---------------------------------------------------------------------------
//
//   chunkflow_op_seconds{op, stage}        histogram  time of one op on one chunk
//   chunkflow_chunks_total{op}             counter    ops (chunks) executed
//   chunkflow_memory_bytes{kind}           gauge      current device memory
//   chunkflow_memory_peak_bytes            gauge      high-water mark of the total
//   chunkflow_heartbeats_total             counter    heartbeats sent
//
// chunkflow_op_seconds series appear on the first op of each (op, stage).

// Device memory in bytes by kind. peak_bytes: the allocator's high-water mark
// if known (0 if not); the exported peak is the max of every peak_bytes and
// every total of the three kinds seen so far.
struct MemorySample {
  int64_t activations_bytes = 0;
  int64_t state_bytes = 0;  // state store: K/V of earlier chunks and their grads
  int64_t scratch_bytes = 0;
  int64_t peak_bytes = 0;
};

class WorkerMetrics {
 public:
  // Same contract as CoordinatorMetrics::Create.
  static absl::StatusOr<std::unique_ptr<WorkerMetrics>> Create(
      std::shared_ptr<prometheus::Registry> registry);

  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // One op ("forward", "backward", "recompute") of one chunk on pipeline stage
  // `stage`, taking `seconds`. Errors: INVALID_ARGUMENT naming the op, the
  // stage (outside [0, kMaxStages)) or the seconds (negative or non-finite).
  absl::Status OnOp(std::string_view op, int stage, double seconds);

  // Errors: INVALID_ARGUMENT naming a negative field (then nothing changes).
  absl::Status SetMemory(const MemorySample& sample);

  void OnHeartbeat();

  // A step that put `sequences` sequences' K/V state in pinned host memory
  // (GPU workers, --offload_state), `pinned_mid_step_bytes` of it pinned
  // during the ops because the step-start prediction missed it. Errors:
  // INVALID_ARGUMENT for a negative count (then nothing changes).
  absl::Status OnStateOffloaded(int64_t sequences, int64_t pinned_mid_step_bytes = 0);

 private:
  WorkerMetrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* op_seconds_family_ = nullptr;
  std::map<std::string, prometheus::Counter*, std::less<>> chunks_;  // by op
  std::map<std::string, prometheus::Gauge*, std::less<>> memory_;   // by kind
  prometheus::Gauge* memory_peak_ = nullptr;
  prometheus::Counter* heartbeats_ = nullptr;
  prometheus::Counter* offloaded_ = nullptr;
  prometheus::Counter* pinned_mid_step_ = nullptr;

  absl::Mutex mu_;
  // Family::Add allocates a fresh Histogram per call even when the series
  // exists; cache the series per (op, stage) instead.
  std::map<std::pair<int, int>, prometheus::Histogram*> op_seconds_  // (op index, stage)
      ABSL_GUARDED_BY(mu_);
  double peak_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace chunkflow::metrics

#endif  // CHUNKFLOW_METRICS_METRICS_H_
