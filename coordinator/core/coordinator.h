// The coordinator's logic, free of RPC types: jobs, workers, rank assignment,
// the step loop with its write-ahead log, heartbeats, failure handling and
// adaptive replanning. service.h puts gRPC in front of it; tests drive it
// directly with fake workers and a fake clock.
//
// Threading: every public method is thread-safe and returns quickly. Messages
// for workers and job watchers are produced under the coordinator's lock and
// delivered after it is released, through sinks that only queue (the gRPC
// reactors), so no lock is ever held across a reaction.
//
// The step loop (per job):
//   PENDING --dp x pp idle workers--> assign ranks (RankAssignment +
//   CommBootstrap, generation g) --> RUNNING:
//     plan step s from the cursor --> Store::PutPlannedStep (synced) -->
//     StepPlanForWorker to every rank --> one StepReport per rank -->
//     Store::CommitStep --> refit the cost model, check memory --> plan s+1
//   ... --> COMPLETED (workers released) | CANCELLED | FAILED.
// A lost worker (no heartbeat for heartbeat_timeout, or a new incarnation)
// or a worker error during a step sends the job back to its latest
// checkpoint (Store::RewindTo), releases every rank and waits in PENDING for
// dp x pp workers again; after kMaxConsecutiveResets resets without a
// committed step the job FAILS with the last error.
//
// Restart: Create() reloads jobs and workers from the store. A RUNNING job
// waits up to heartbeat_timeout for its workers to reconnect claiming their
// ranks (Hello.job_id/stage/dp_index/generation); then the planned but
// uncommitted step is resent (workers that already applied it answer with
// their kept report) and the loop continues. Ranks that do not return count
// as lost.

#ifndef CHUNKFLOW_COORDINATOR_CORE_COORDINATOR_H_
#define CHUNKFLOW_COORDINATOR_CORE_COORDINATOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/core/job_spec.h"
#include "coordinator/cursor.h"
#include "coordinator/planner/cost_fit.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"
#include "coordinator/store/store.h"
#include "metrics/metrics.h"
#include "proto/chunkflow.pb.h"

namespace chunkflow::coordinator {

// Where messages to one connected worker go. Send queues and never blocks;
// Close ends the stream with `status` after the queued messages.
class WorkerSink {
 public:
  virtual ~WorkerSink() = default;
  virtual void Send(const chunkflow::v1::CoordinatorMessage& msg) = 0;
  virtual void Close(const absl::Status& status) = 0;
};

// Where a WatchJob caller's events go; same contract as WorkerSink.
class JobEventSink {
 public:
  virtual ~JobEventSink() = default;
  virtual void Send(const chunkflow::v1::JobEvent& event) = 0;
  virtual void Close(const absl::Status& status) = 0;
  // True once the watcher went away (the coordinator then forgets the sink).
  virtual bool Closed() const { return false; }
};

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

Clock* RealClock();

struct CoordinatorOptions {
  Store* store = nullptr;        // required, outlives the coordinator
  Clock* clock = nullptr;        // null: RealClock()
  metrics::CoordinatorMetrics* metrics = nullptr;  // optional
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  // Handed to workers: bounds each communicator operation and rendezvous.
  // Long, as in PyTorch (10 min): a rank waits legitimately for a slower
  // one (a long chain, dp skew, a stage still loading a large checkpoint),
  // and a lost or frozen rank is handled sooner anyway: the heartbeat
  // timeout resets the job and its ABORT ends the others' waits. What this
  // bounds alone is a hang the heartbeats do not see (a device kernel that
  // never returns while the process still beats).
  absl::Duration comm_timeout = absl::Seconds(600);
  // Op samples kept per job for the cost-model refit (oldest dropped).
  int64_t max_cost_samples = 4096;
  // A lost worker that holds no rank is forgotten (its record deleted) this
  // long after it was last heard: replaced pods and restarted unnamed
  // workers would otherwise pile up as DEAD records.
  absl::Duration dead_worker_retention = absl::Hours(1);
};

class Coordinator {
 public:
  static constexpr int kMaxConsecutiveResets = 3;

  // Errors: INVALID_ARGUMENT (no store, non-positive durations); the store's
  // errors while reloading.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();

  // ---- WorkerService -------------------------------------------------------

  // Errors: INVALID_ARGUMENT (no device kind, zero incarnation, bad name).
  // The same name and incarnation again is a reconnect: the old stream ends.
  absl::StatusOr<chunkflow::v1::RegisterResponse> Register(
      const chunkflow::v1::RegisterRequest& request);
  // The first message of a Connect stream. Errors: NOT_FOUND (unknown worker
  // id: register first), UNAUTHENTICATED (incarnation differs from the
  // registered one).
  absl::Status Connect(const chunkflow::v1::Hello& hello, std::shared_ptr<WorkerSink> sink);
  // Every later message of the stream. Errors (the stream is then closed):
  // INVALID_ARGUMENT for a message that contradicts the worker's assignment.
  absl::Status OnMessage(const std::string& worker_id, const chunkflow::v1::WorkerMessage& msg);
  // The stream of `sink` ended. The worker keeps its rank until the
  // heartbeat timeout, so it may reconnect.
  void OnDisconnect(const std::string& worker_id, const WorkerSink* sink);
  absl::Status KvSet(const std::string& key, const std::string& value);
  // Errors: NOT_FOUND while unset.
  absl::StatusOr<std::string> KvGet(const std::string& key);

  // Checks heartbeat deadlines (call every heartbeat_interval or so).
  void Tick();

  // ---- AdminService --------------------------------------------------------

  absl::StatusOr<chunkflow::v1::Job> SubmitJob(const chunkflow::v1::JobSpec& spec);
  absl::StatusOr<chunkflow::v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<std::vector<chunkflow::v1::Job>> ListJobs();
  absl::StatusOr<chunkflow::v1::Job> CancelJob(const std::string& job_id, const std::string& reason);
  std::vector<chunkflow::v1::Worker> ListWorkers();
  absl::StatusOr<chunkflow::v1::Worker> DrainWorker(const std::string& worker_id);
  absl::StatusOr<chunkflow::v1::Job> UpdateSchedule(const std::string& job_id,
                                                    const chunkflow::v1::ScheduleParams& params);
  // Asks for a checkpoint after the next planned step (the step in flight,
  // if any, is already sent). The request is saved with the job and holds
  // until a checkpoint commits. Errors: NOT_FOUND; FAILED_PRECONDITION when
  // the job has finished or has no checkpoint_dir.
  absl::StatusOr<chunkflow::v1::Job> CheckpointJob(const std::string& job_id);
  // Sends the job's current state at once, then one event per committed step
  // and state change; closes the sink when the job ends. Errors: NOT_FOUND.
  absl::Status WatchJob(const std::string& job_id, std::shared_ptr<JobEventSink> sink);
  // The step log of the job (committed steps, then the planned one if any).
  // Errors: NOT_FOUND; the store's.
  absl::StatusOr<std::vector<chunkflow::v1::StepSummary>> ListSteps(const std::string& job_id);

 private:
  struct WorkerEntry;
  struct JobEntry;
  // Messages produced under the lock, delivered after it.
  struct Outbox {
    std::vector<std::pair<std::shared_ptr<WorkerSink>, chunkflow::v1::CoordinatorMessage>> to_workers;
    std::vector<std::pair<std::shared_ptr<WorkerSink>, absl::Status>> close_workers;
    std::vector<std::pair<std::shared_ptr<JobEventSink>, chunkflow::v1::JobEvent>> events;
    std::vector<std::shared_ptr<JobEventSink>> close_watchers;
    void Deliver();
  };

  class Section;
  explicit Coordinator(const CoordinatorOptions& options);
  absl::Status Load();

  // All *Locked methods run with mu_ held and append to `out`.
  void ScheduleLocked(Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AssignLocked(JobEntry* job, std::vector<WorkerEntry*> workers, Outbox* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartStepLocked(JobEntry* job, Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendStepLocked(JobEntry* job, Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // False when the job failed instead.
  bool SendStepToRankLocked(JobEntry* job, int32_t rank, Outbox* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OnReportLocked(WorkerEntry* w, const chunkflow::v1::StepReport& r, Outbox* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CommitLocked(JobEntry* job, Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ResetJobLocked(JobEntry* job, const std::string& why, Outbox* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rewinds the step log to `target` (Store::RewindTo) and the job's totals
  // with it, read back from the log: steps committed, tokens trained
  // and the last loss (the target step's; 0 before any).
  absl::Status RewindLocked(JobEntry* job, int64_t target) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the job's steps committed, tokens trained and last loss from its
  // step log; true when they changed.
  absl::StatusOr<bool> TotalsFromLogLocked(JobEntry* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // TotalsFromLogLocked at a restart: an event and a save when they differed.
  absl::Status ReconcileTotalsLocked(JobEntry* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishJobLocked(JobEntry* job, chunkflow::v1::JobState state, const std::string& why,
                       Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseRanksLocked(JobEntry* job, chunkflow::v1::Control::Action action,
                          const std::string& why, Outbox* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLostLocked(WorkerEntry* w, const std::string& why, Outbox* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records `message` in the job's events and sends it to the watchers;
  // a committed checkpoint's event also carries its path.
  void EventLocked(JobEntry* job, const std::string& message, Outbox* out,
                   const std::string& checkpoint_path = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveJobLocked(JobEntry* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SaveWorkerLocked(WorkerEntry* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  chunkflow::v1::JobEvent BaseEventLocked(const JobEntry& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobEntry*> FindJobLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens the dataset, cursor and cost prior of `job` (resolving its spec
  // unless `resolved` is given). Touches only `job`: no lock needed.
  absl::Status OpenJob(JobEntry* job, std::unique_ptr<ResolvedJob> resolved);
  void PruneWatchersLocked(JobEntry* job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  absl::Mutex deliver_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<WorkerEntry>> workers_ ABSL_GUARDED_BY(mu_);
  absl::Time last_tick_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Mutex kv_mu_ ABSL_ACQUIRED_AFTER(mu_);
  absl::flat_hash_map<std::string, std::string> kv_ ABSL_GUARDED_BY(kv_mu_);
};

}  // namespace chunkflow::coordinator

#endif  // CHUNKFLOW_COORDINATOR_CORE_COORDINATOR_H_
