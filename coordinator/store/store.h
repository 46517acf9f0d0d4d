// The coordinator's durable state: one RocksDB database (a directory) holding
// jobs, the write-ahead step log with the dataset cursor, workers, checkpoints,
// fitted cost models and named counters. A restarted coordinator resumes from
// it alone. Every write is a synced WriteBatch: once a method returns OK the
// record survives a crash of the process or the machine.
//
//   absl::StatusOr<std::unique_ptr<Store>> store = Store::Open("/var/lib/chunkflow/db");
//   int64_t n = *(*store)->NextSequence("job");                 // 1, 2, ...
//   std::string id = absl::StrFormat("job-%06d", n);              // "job-000001"
//   (*store)->PutJob(job);
//   (*store)->PutPlannedStep(id, plan, cursor);                  // before sending
//   (*store)->CommitStep(id, plan.step(), commit);               // after all reports
//
// Resuming a job after a restart:
//   int64_t last = *store->LastCommittedStep(id);                // -1: none
//   std::optional<StepPlan> pending = *store->PlannedUncommitted(id);
//   if (pending) resend *pending;   // its cursor: store->GetStep(id, last + 1)->cursor
//   else plan step last + 1;        // from store->GetStep(id, last)->cursor (if last >= 0)
//
// ---------------------------------------------------------------------------
// Key scheme (format version 1). Keys are ASCII; <job>, <worker> and <name> are
// caller-chosen ids of 1..200 printable ASCII characters, no space or '/', so one
// id's keys never share a prefix with another's. Steps are zero-padded to 20
// digits (%020d) so byte order is numeric order. Values are protobuf messages
// (chunkflow.v1 ones, or the private ones in coordinator/store/store.proto).
//
//   meta/format_version           decimal ASCII, "1"
//   job/<job>                     chunkflow.v1.Job
//   step/<job>/<step>/plan        PlannedStepRecord: StepPlan bytes + cursor after it
//   step/<job>/<step>/commit      StepCommitRecord
//   committed/<job>               Counter: last committed step (absent: none)
//   worker/<worker>               chunkflow.v1.Worker
//   ckpt/<job>/<step>             CheckpointRecordValue
//   cost/<job>                    chunkflow.v1.CostModel
//   seq/<name>                    Counter: last value NextSequence returned
//
// ListJobs returns jobs in key order, i.e. by id: mint ids from NextSequence
// with zero padding ("job-000001") and key order is creation order.
//
// Step log rules: steps of a job are planned one at a time, in order, each
// after the previous one committed: PutPlannedStep(step) needs step ==
// LastCommittedStep() + 1, so at most one step is planned but uncommitted.
//
// Errors common to every method: INVALID_ARGUMENT for a malformed id or a
// negative step (the message names it); DATA_LOSS when a stored value does not
// parse (the message names the key); INTERNAL for any other RocksDB failure
// (I/O error, disk full), naming the operation and key.
//
// Thread-safe: RocksDB serialises single reads and writes; the store's
// check-then-write methods (PutPlannedStep, CommitStep, NextSequence) run
// under one mutex. Only one process may open a directory at a time.

#ifndef CHUNKFLOW_COORDINATOR_STORE_STORE_H_
#define CHUNKFLOW_COORDINATOR_STORE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/chunkflow.pb.h"

namespace rocksdb {
class DB;
}  // namespace rocksdb

namespace chunkflow::coordinator {

// The deterministic dataset cursor's position after a planned step.
struct CursorState {
  int64_t next_step = 0;  // the step whose batch the cursor yields next
  uint64_t seed = 0;
  int64_t global_batch = 0;  // documents per step
  // The dataset's documents when the step was planned (0: not recorded, as
  // by older coordinators): the epoch order depends on it.
  int64_t num_documents = 0;
  bool operator==(const CursorState& o) const {
    return next_step == o.next_step && seed == o.seed && global_batch == o.global_batch &&
           num_documents == o.num_documents;
  }
  bool operator!=(const CursorState& o) const { return !(*this == o); }
};

// What the coordinator records when every worker reported a step.
struct StepCommit {
  double loss = 0;           // global mean loss of the step
  int64_t tokens = 0;        // tokens trained
  double step_seconds = 0;   // wall time of the step
  std::string report_bytes;  // per-op timing summary, opaque to the store
  // Non-empty: the state after this step is saved there; the checkpoint
  // record is written in the commit's batch (a crash cannot keep one without
  // the other).
  std::string checkpoint_path;
};

struct StepRecord {
  chunkflow::v1::StepPlan plan;
  CursorState cursor;                // cursor after this step
  std::optional<StepCommit> commit;  // empty while planned but uncommitted
};

struct CheckpointRecord {
  int64_t step = 0;  // the checkpoint holds the state after this step
  std::string path;
};

class Store {
 public:
  // The key scheme above. A database written with a larger version is refused.
  static constexpr int64_t kFormatVersion = 1;

  // Opens the database in `dir`, creating the directory and database if
  // missing. Errors: FAILED_PRECONDITION when another process (or another
  // Store in this one) holds the database lock, when `dir` holds a database
  // of a newer format version (naming both versions), or when `dir` holds a
  // RocksDB database that is not a ChunkFlow store; DATA_LOSS when RocksDB
  // reports corruption; INVALID_ARGUMENT for an empty `dir`; INTERNAL for
  // other I/O failures (the message names `dir`).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir);

  // Closes the database and releases its lock.
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& dir() const { return dir_; }

  // ---- Jobs ----------------------------------------------------------------

  // Creates or replaces job.id(). Errors: INVALID_ARGUMENT (bad job.id()).
  absl::Status PutJob(const chunkflow::v1::Job& job);
  // Errors: NOT_FOUND naming the id; INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<chunkflow::v1::Job> GetJob(std::string_view id) const;
  // All jobs in id order. Errors: DATA_LOSS naming the first bad key.
  absl::StatusOr<std::vector<chunkflow::v1::Job>> ListJobs() const;

  // Increments the durable counter `counter` and returns its new value: 1 on
  // the first call, then 2, 3, ... across reopens. Errors: INVALID_ARGUMENT
  // (bad name); OUT_OF_RANGE at INT64_MAX; DATA_LOSS.
  absl::StatusOr<int64_t> NextSequence(std::string_view counter);

  // ---- Step log (write-ahead) ----------------------------------------------

  // Records the plan of step plan.step() of `job_id` and the cursor after it,
  // before the plan is sent to any worker. Re-putting the identical plan and
  // cursor is OK (idempotent). Errors: FAILED_PRECONDITION when plan.step() !=
  // LastCommittedStep() + 1, or when a different plan or cursor is already
  // recorded for that step; INVALID_ARGUMENT for a bad job id, a negative
  // step, or plan.job_id() set and different from `job_id`; DATA_LOSS.
  absl::Status PutPlannedStep(std::string_view job_id, const chunkflow::v1::StepPlan& plan,
                              const CursorState& cursor);

  // Records the commit of `step` and advances LastCommittedStep() to it, in one
  // synced batch. Errors: FAILED_PRECONDITION when `step` was never planned or
  // is already committed; INVALID_ARGUMENT; DATA_LOSS.
  absl::Status CommitStep(std::string_view job_id, int64_t step, const StepCommit& commit);

  // Forgets every step after `step` (committed or only planned, and their
  // checkpoint records) and makes
  // `step` the last committed one, in one synced batch: what the coordinator
  // does when a lost worker forces the job back to the checkpoint taken after
  // `step` (-1: back to the start). The steps after it will be planned again
  // from the cursor recorded with `step`. Errors: FAILED_PRECONDITION when
  // `step` is above LastCommittedStep(); INVALID_ARGUMENT (bad id, step < -1);
  // DATA_LOSS.
  absl::Status RewindTo(std::string_view job_id, int64_t step);

  // The plan, cursor and (if committed) commit of `step`. Errors: NOT_FOUND
  // naming job and step when it was never planned; INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<StepRecord> GetStep(std::string_view job_id, int64_t step) const;

  // The highest committed step, or -1 when none (also for an unknown job).
  // Errors: INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<int64_t> LastCommittedStep(std::string_view job_id) const;

  // The plan of step LastCommittedStep() + 1 if it is planned (what a restarted
  // coordinator resends), else nullopt. Errors: INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<std::optional<chunkflow::v1::StepPlan>> PlannedUncommitted(
      std::string_view job_id) const;

  // ---- Workers -------------------------------------------------------------

  // Creates or replaces worker.id(). Errors: INVALID_ARGUMENT (bad id).
  absl::Status PutWorker(const chunkflow::v1::Worker& worker);
  // Errors: NOT_FOUND naming the id; INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<chunkflow::v1::Worker> GetWorker(std::string_view id) const;
  // All workers in id order. Errors: DATA_LOSS naming the first bad key.
  absl::StatusOr<std::vector<chunkflow::v1::Worker>> ListWorkers() const;
  // Errors: NOT_FOUND naming the id; INVALID_ARGUMENT.
  absl::Status DeleteWorker(std::string_view id);

  // ---- Checkpoints ---------------------------------------------------------

  // Records that the state after `step` of `job_id` is saved at `path`
  // (replacing any record of the same step). Record only complete checkpoints.
  // Errors: INVALID_ARGUMENT (bad id, negative step, empty path).
  absl::Status PutCheckpoint(std::string_view job_id, int64_t step, std::string_view path);
  // The checkpoint with the highest step, or nullopt when none.
  // Errors: INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<std::optional<CheckpointRecord>> LatestCheckpoint(std::string_view job_id) const;

  // ---- Cost model ----------------------------------------------------------

  // Creates or replaces the fitted cost model of `job_id`.
  // Errors: INVALID_ARGUMENT (bad id).
  absl::Status PutCostModel(std::string_view job_id, const chunkflow::v1::CostModel& model);
  // Errors: NOT_FOUND (never fitted) naming the job; INVALID_ARGUMENT; DATA_LOSS.
  absl::StatusOr<chunkflow::v1::CostModel> GetCostModel(std::string_view job_id) const;

 private:
  Store(std::string dir, std::unique_ptr<rocksdb::DB> db);

  // Raw access. Get returns NOT_FOUND naming `key` when absent.
  absl::StatusOr<std::string> Get(const std::string& key) const;
  absl::Status Put(const std::string& key, const std::string& value);
  // Values of every key starting with `prefix`, in key order, with their keys.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(
      const std::string& prefix) const;

  // The committed-step counter; the caller holds mu_ so that the value stays
  // current until its write lands.
  absl::StatusOr<int64_t> LastCommittedStepLocked(std::string_view job_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  // Thread-safe itself; owned. The database is the state that mu_ protects:
  // no field is ABSL_GUARDED_BY, the step-log and counter keys are, by
  // convention, read-then-written only under mu_ (the *Locked helpers).
  std::unique_ptr<rocksdb::DB> db_;
  mutable absl::Mutex mu_;
};

}  // namespace chunkflow::coordinator

#endif  // CHUNKFLOW_COORDINATOR_STORE_STORE_H_
