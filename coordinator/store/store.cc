#include "coordinator/store/store.h"

#include <cctype>
#include <filesystem>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/store/store.pb.h"
#include "google/protobuf/message.h"
#include "google/protobuf/util/message_differencer.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace chunkflow::coordinator {
namespace {

namespace pb = ::chunkflow::coordinator::store::v1;

constexpr char kFormatVersionKey[] = "meta/format_version";
constexpr size_t kMaxIdLength = 200;

// ===========================================================================
// Keys
// ===========================================================================

// `what` is "job id", "worker id" or "counter name", for the message.
absl::Status ValidateId(std::string_view what, std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" must be 1 to %d characters long, got %d", what, id, kMaxIdLength, id.size()));
  }
  for (char c : id) {
    if (c == '/' || c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s \"%s\" may hold only printable ASCII without '/' or spaces (the store's keys "
          "are built from it); found byte 0x%02x",
          what, absl::CHexEscape(absl::string_view(id.data(), id.size())),
          static_cast<unsigned char>(c)));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateStep(std::string_view job_id, int64_t step) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("step of job %s must be >= 0, got %d", job_id, step));
  }
  return absl::OkStatus();
}

// Debian's Abseil is built with its own absl::string_view (not std's), so
// absl::StrCat does not take std::string_view; StrFormat does.
std::string JobKey(std::string_view id) { return absl::StrFormat("job/%s", id); }
std::string WorkerKey(std::string_view id) { return absl::StrFormat("worker/%s", id); }
std::string CostKey(std::string_view id) { return absl::StrFormat("cost/%s", id); }
std::string SeqKey(std::string_view name) { return absl::StrFormat("seq/%s", name); }
std::string CommittedKey(std::string_view id) { return absl::StrFormat("committed/%s", id); }
std::string PlanKey(std::string_view id, int64_t step) {
  return absl::StrFormat("step/%s/%020d/plan", id, step);
}
std::string CommitKey(std::string_view id, int64_t step) {
  return absl::StrFormat("step/%s/%020d/commit", id, step);
}
std::string CheckpointPrefix(std::string_view id) { return absl::StrFormat("ckpt/%s/", id); }
std::string CheckpointKey(std::string_view id, int64_t step) {
  return absl::StrFormat("ckpt/%s/%020d", id, step);
}

// ===========================================================================
// Values and statuses
// ===========================================================================

rocksdb::WriteOptions SyncWrite() {
  rocksdb::WriteOptions options;
  options.sync = true;  // survive a machine crash, not only a process crash
  return options;
}

// A failed RocksDB call on `key` (or the whole database when key is empty).
absl::Status FromRocks(const rocksdb::Status& s, std::string_view op, std::string_view key,
                       std::string_view dir) {
  std::string where = key.empty() ? absl::StrFormat("coordinator store %s", dir)
                                  : absl::StrFormat("key \"%s\" in coordinator store %s", key, dir);
  std::string msg = absl::StrFormat("RocksDB %s of %s failed: %s", op, where, s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) {
    return absl::DataLossError(
        absl::StrCat(msg, "; the database is corrupt, restore it from a backup"));
  }
  return absl::InternalError(absl::StrCat(msg, "; check the disk (space, permissions, health)"));
}

absl::Status ParseValue(const std::string& key, const std::string& value,
                        google::protobuf::Message* msg) {
  if (!msg->ParseFromString(value)) {
    return absl::DataLossError(absl::StrFormat(
        "value under key \"%s\" (%d bytes) does not parse as %s: the store is corrupt or was "
        "written by other software; restore it from a backup or delete that key",
        key, value.size(), msg->GetTypeName()));
  }
  return absl::OkStatus();
}

std::string Serialize(const google::protobuf::Message& msg) {
  std::string out;
  msg.SerializeToString(&out);
  return out;
}

pb::CursorStateRecord ToRecord(const CursorState& c) {
  pb::CursorStateRecord r;
  r.set_next_step(c.next_step);
  r.set_seed(c.seed);
  r.set_global_batch(c.global_batch);
  r.set_num_documents(c.num_documents);
  return r;
}

CursorState FromRecord(const pb::CursorStateRecord& r) {
  return CursorState{r.next_step(), r.seed(), r.global_batch(), r.num_documents()};
}

// Parses the value of a plan key into its plan and cursor.
absl::Status ParsePlanned(const std::string& key, const std::string& value,
                          chunkflow::v1::StepPlan* plan, CursorState* cursor) {
  pb::PlannedStepRecord rec;
  if (absl::Status s = ParseValue(key, value, &rec); !s.ok()) return s;
  if (absl::Status s = ParseValue(key + " (field plan)", rec.plan(), plan); !s.ok()) return s;
  *cursor = FromRecord(rec.cursor());
  return absl::OkStatus();
}

}  // namespace

// ===========================================================================
// Open
// ===========================================================================

Store::Store(std::string dir, std::unique_ptr<rocksdb::DB> db)
    : dir_(std::move(dir)), db_(std::move(db)) {}

Store::~Store() {
  if (db_ != nullptr) db_->Close().PermitUncheckedError();  // releases LOCK; nothing to report to
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("coordinator store directory is empty");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);  // RocksDB creates only the last level
  if (ec) {
    return absl::InternalError(absl::StrFormat(
        "cannot create coordinator store directory %s: %s; check the path and its permissions", dir,
        ec.message()));
  }
  rocksdb::Options options;
  options.OptimizeForSmallDb();
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.keep_log_file_num = 10;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &raw);
  if (!s.ok()) {
    // RocksDB reports a held LOCK file as a plain IOError: "While lock file:
    // <dir>/LOCK: Resource temporarily unavailable" (another process) or "lock
    // hold by current process" (this one). No subcode marks it.
    if (s.IsIOError() && absl::StrContains(absl::AsciiStrToLower(s.ToString()), "lock")) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "coordinator store %s is locked: another process (or another open Store in this "
          "process) holds %s/LOCK; stop the other coordinator or use another directory "
          "(RocksDB: %s)",
          dir, dir, s.ToString()));
    }
    return FromRocks(s, "open", "", dir);
  }
  std::unique_ptr<Store> store(new Store(dir, std::unique_ptr<rocksdb::DB>(raw)));

  // Format version: written on creation, checked on every open.
  absl::StatusOr<std::string> version = store->Get(kFormatVersionKey);
  if (absl::IsNotFound(version.status())) {
    std::unique_ptr<rocksdb::Iterator> it(store->db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    if (!it->status().ok()) return FromRocks(it->status(), "scan", "", dir);
    if (it->Valid()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s holds a RocksDB database without key %s (first key \"%s\"): it is not a ChunkFlow "
          "coordinator store; point the coordinator at an empty or its own directory",
          dir, kFormatVersionKey, absl::CHexEscape(it->key().ToString())));
    }
    if (absl::Status w = store->Put(kFormatVersionKey, absl::StrCat(kFormatVersion)); !w.ok()) {
      return w;
    }
    return store;
  }
  if (!version.ok()) return version.status();
  int64_t v = 0;
  if (!absl::SimpleAtoi(*version, &v) || v < 1) {
    return absl::DataLossError(absl::StrFormat(
        "value under key \"%s\" in %s is \"%s\", not a format version >= 1; the store is corrupt",
        kFormatVersionKey, dir, absl::CHexEscape(*version)));
  }
  if (v > kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "coordinator store %s has format version %d but this coordinator reads format version "
        "%d at most; run a newer coordinator",
        dir, v, kFormatVersion));
  }
  return store;
}

// ===========================================================================
// Raw access
// ===========================================================================

absl::StatusOr<std::string> Store::Get(const std::string& key) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &value);
  if (s.IsNotFound()) return absl::NotFoundError(absl::StrFormat("no key \"%s\"", key));
  if (!s.ok()) return FromRocks(s, "get", key, dir_);
  return value;
}

absl::Status Store::Put(const std::string& key, const std::string& value) {
  rocksdb::Status s = db_->Put(SyncWrite(), key, value);
  return s.ok() ? absl::OkStatus() : FromRocks(s, "put", key, dir_);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Store::Scan(
    const std::string& prefix) const {
  // Every prefix ends in '/', so the keys under it end before prefix with '/'
  // bumped to '0'.
  std::string upper = prefix;
  upper.back() = static_cast<char>(upper.back() + 1);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions options;
  options.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options));
  std::vector<std::pair<std::string, std::string>> out;
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan", prefix, dir_);
  return out;
}

// ===========================================================================
// Jobs and counters
// ===========================================================================

absl::Status Store::PutJob(const chunkflow::v1::Job& job) {
  if (absl::Status s = ValidateId("job id", job.id()); !s.ok()) return s;
  return Put(JobKey(job.id()), Serialize(job));
}

absl::StatusOr<chunkflow::v1::Job> Store::GetJob(std::string_view id) const {
  if (absl::Status s = ValidateId("job id", id); !s.ok()) return s;
  std::string key = JobKey(id);
  absl::StatusOr<std::string> value = Get(key);
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(absl::StrFormat("no job with id %s in the store", id));
  }
  if (!value.ok()) return value.status();
  chunkflow::v1::Job job;
  if (absl::Status s = ParseValue(key, *value, &job); !s.ok()) return s;
  return job;
}

absl::StatusOr<std::vector<chunkflow::v1::Job>> Store::ListJobs() const {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows = Scan("job/");
  if (!rows.ok()) return rows.status();
  std::vector<chunkflow::v1::Job> jobs(rows->size());
  for (size_t i = 0; i < rows->size(); ++i) {
    if (absl::Status s = ParseValue((*rows)[i].first, (*rows)[i].second, &jobs[i]); !s.ok()) {
      return s;
    }
  }
  return jobs;
}

absl::StatusOr<int64_t> Store::NextSequence(std::string_view counter) {
  if (absl::Status s = ValidateId("counter name", counter); !s.ok()) return s;
  std::string key = SeqKey(counter);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> value = Get(key);
  pb::Counter c;
  if (value.ok()) {
    if (absl::Status s = ParseValue(key, *value, &c); !s.ok()) return s;
  } else if (!absl::IsNotFound(value.status())) {
    return value.status();
  }
  if (c.value() == std::numeric_limits<int64_t>::max()) {
    return absl::OutOfRangeError(
        absl::StrFormat("counter %s is exhausted (at INT64_MAX)", counter));
  }
  c.set_value(c.value() + 1);
  if (absl::Status s = Put(key, Serialize(c)); !s.ok()) return s;
  return c.value();
}

// ===========================================================================
// Step log
// ===========================================================================

absl::StatusOr<int64_t> Store::LastCommittedStepLocked(std::string_view job_id) const {
  std::string key = CommittedKey(job_id);
  absl::StatusOr<std::string> value = Get(key);
  if (absl::IsNotFound(value.status())) return -1;
  if (!value.ok()) return value.status();
  pb::Counter c;
  if (absl::Status s = ParseValue(key, *value, &c); !s.ok()) return s;
  return c.value();
}

absl::StatusOr<int64_t> Store::LastCommittedStep(std::string_view job_id) const {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  return LastCommittedStepLocked(job_id);
}

absl::Status Store::PutPlannedStep(std::string_view job_id, const chunkflow::v1::StepPlan& plan,
                                   const CursorState& cursor) {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  const int64_t step = plan.step();
  if (absl::Status s = ValidateStep(job_id, step); !s.ok()) return s;
  if (!plan.job_id().empty() && plan.job_id() != job_id) {
    return absl::InvalidArgumentError(
        absl::StrFormat("plan of step %d names job %s but is being stored under job %s", step,
                        plan.job_id(), job_id));
  }
  const std::string key = PlanKey(job_id, step);
  absl::MutexLock lock(&mu_);
  absl::StatusOr<int64_t> last = LastCommittedStepLocked(job_id);
  if (!last.ok()) return last.status();
  if (step != *last + 1) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot plan step %d of job %s: the last committed step is %d, so only step %d may be "
        "planned; steps are planned one at a time, each after the previous one commits",
        step, job_id, *last, *last + 1));
  }
  absl::StatusOr<std::string> existing = Get(key);
  if (existing.ok()) {
    chunkflow::v1::StepPlan old_plan;
    CursorState old_cursor;
    if (absl::Status s = ParsePlanned(key, *existing, &old_plan, &old_cursor); !s.ok()) return s;
    if (old_cursor == cursor &&
        google::protobuf::util::MessageDifferencer::Equals(old_plan, plan)) {
      return absl::OkStatus();  // the same write again
    }
    return absl::FailedPreconditionError(absl::StrFormat(
        "step %d of job %s is already planned with a different %s; a planned step is resent as "
        "recorded (PlannedUncommitted), never replanned",
        step, job_id, old_cursor == cursor ? "plan" : "cursor"));
  }
  if (!absl::IsNotFound(existing.status())) return existing.status();

  pb::PlannedStepRecord rec;
  plan.SerializeToString(rec.mutable_plan());
  *rec.mutable_cursor() = ToRecord(cursor);
  // One key holds plan and cursor, so the single put is atomic.
  return Put(key, Serialize(rec));
}

absl::Status Store::CommitStep(std::string_view job_id, int64_t step, const StepCommit& commit) {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  if (absl::Status s = ValidateStep(job_id, step); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<int64_t> last = LastCommittedStepLocked(job_id);
  if (!last.ok()) return last.status();
  if (step <= *last) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "step %d of job %s is already committed (last committed step %d)", step, job_id, *last));
  }
  const std::string plan_key = PlanKey(job_id, step);
  absl::StatusOr<std::string> planned = Get(plan_key);
  if (absl::IsNotFound(planned.status())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot commit step %d of job %s: it was never planned (last committed step %d); call "
        "PutPlannedStep before sending a step",
        step, job_id, *last));
  }
  if (!planned.ok()) return planned.status();

  pb::StepCommitRecord rec;
  rec.set_loss(commit.loss);
  rec.set_tokens(commit.tokens);
  rec.set_step_seconds(commit.step_seconds);
  rec.set_report_bytes(commit.report_bytes);
  pb::Counter committed;
  committed.set_value(step);
  const std::string commit_key = CommitKey(job_id, step);
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.Put(commit_key, Serialize(rec));
  if (s.ok()) s = batch.Put(CommittedKey(job_id), Serialize(committed));
  if (s.ok() && !commit.checkpoint_path.empty()) {
    pb::CheckpointRecordValue ckpt;
    ckpt.set_step(step);
    ckpt.set_path(commit.checkpoint_path);
    s = batch.Put(CheckpointKey(job_id, step), Serialize(ckpt));
  }
  if (s.ok()) s = db_->Write(SyncWrite(), &batch);
  return s.ok() ? absl::OkStatus() : FromRocks(s, "commit batch", commit_key, dir_);
}

absl::Status Store::RewindTo(std::string_view job_id, int64_t step) {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  if (step < -1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot rewind job %s to step %d (the lowest is -1)", job_id, step));
  }
  absl::MutexLock lock(&mu_);
  absl::StatusOr<int64_t> last = LastCommittedStepLocked(job_id);
  if (!last.ok()) return last.status();
  if (step > *last) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot rewind job %s to step %d: the last committed step is %d", job_id, step, *last));
  }
  rocksdb::WriteBatch batch;
  rocksdb::Status s;
  // Steps after `last` + 1 are never planned (PutPlannedStep's rule).
  for (int64_t t = step + 1; s.ok() && t <= *last + 1; ++t) {
    s = batch.Delete(PlanKey(job_id, t));
    if (s.ok()) s = batch.Delete(CommitKey(job_id, t));
    // A checkpoint of a forgotten step describes a state that no longer exists.
    if (s.ok()) s = batch.Delete(CheckpointKey(job_id, t));
  }
  pb::Counter committed;
  committed.set_value(step);
  if (s.ok()) {
    s = step >= 0 ? batch.Put(CommittedKey(job_id), Serialize(committed))
                  : batch.Delete(CommittedKey(job_id));
  }
  if (s.ok()) s = db_->Write(SyncWrite(), &batch);
  return s.ok() ? absl::OkStatus() : FromRocks(s, "rewind batch", CommittedKey(job_id), dir_);
}

absl::StatusOr<StepRecord> Store::GetStep(std::string_view job_id, int64_t step) const {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  if (absl::Status s = ValidateStep(job_id, step); !s.ok()) return s;
  const std::string plan_key = PlanKey(job_id, step);
  absl::StatusOr<std::string> planned = Get(plan_key);
  if (absl::IsNotFound(planned.status())) {
    return absl::NotFoundError(
        absl::StrFormat("job %s has no step %d in the step log (never planned)", job_id, step));
  }
  if (!planned.ok()) return planned.status();
  StepRecord out;
  if (absl::Status s = ParsePlanned(plan_key, *planned, &out.plan, &out.cursor); !s.ok()) return s;

  const std::string commit_key = CommitKey(job_id, step);
  absl::StatusOr<std::string> committed = Get(commit_key);
  if (absl::IsNotFound(committed.status())) return out;
  if (!committed.ok()) return committed.status();
  pb::StepCommitRecord rec;
  if (absl::Status s = ParseValue(commit_key, *committed, &rec); !s.ok()) return s;
  out.commit = StepCommit{rec.loss(), rec.tokens(), rec.step_seconds(), rec.report_bytes()};
  return out;
}

absl::StatusOr<std::optional<chunkflow::v1::StepPlan>> Store::PlannedUncommitted(
    std::string_view job_id) const {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<int64_t> last = LastCommittedStepLocked(job_id);
  if (!last.ok()) return last.status();
  const std::string key = PlanKey(job_id, *last + 1);
  absl::StatusOr<std::string> planned = Get(key);
  if (absl::IsNotFound(planned.status())) return std::optional<chunkflow::v1::StepPlan>();
  if (!planned.ok()) return planned.status();
  chunkflow::v1::StepPlan plan;
  CursorState cursor;
  if (absl::Status s = ParsePlanned(key, *planned, &plan, &cursor); !s.ok()) return s;
  return std::optional<chunkflow::v1::StepPlan>(std::move(plan));
}

// ===========================================================================
// Workers
// ===========================================================================

absl::Status Store::PutWorker(const chunkflow::v1::Worker& worker) {
  if (absl::Status s = ValidateId("worker id", worker.id()); !s.ok()) return s;
  return Put(WorkerKey(worker.id()), Serialize(worker));
}

absl::StatusOr<chunkflow::v1::Worker> Store::GetWorker(std::string_view id) const {
  if (absl::Status s = ValidateId("worker id", id); !s.ok()) return s;
  std::string key = WorkerKey(id);
  absl::StatusOr<std::string> value = Get(key);
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(absl::StrFormat("no worker with id %s in the store", id));
  }
  if (!value.ok()) return value.status();
  chunkflow::v1::Worker worker;
  if (absl::Status s = ParseValue(key, *value, &worker); !s.ok()) return s;
  return worker;
}

absl::StatusOr<std::vector<chunkflow::v1::Worker>> Store::ListWorkers() const {
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> rows = Scan("worker/");
  if (!rows.ok()) return rows.status();
  std::vector<chunkflow::v1::Worker> workers(rows->size());
  for (size_t i = 0; i < rows->size(); ++i) {
    if (absl::Status s = ParseValue((*rows)[i].first, (*rows)[i].second, &workers[i]); !s.ok()) {
      return s;
    }
  }
  return workers;
}

absl::Status Store::DeleteWorker(std::string_view id) {
  if (absl::Status s = ValidateId("worker id", id); !s.ok()) return s;
  std::string key = WorkerKey(id);
  absl::StatusOr<std::string> value = Get(key);
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(absl::StrFormat("cannot delete worker %s: not in the store", id));
  }
  if (!value.ok()) return value.status();
  rocksdb::Status s = db_->Delete(SyncWrite(), key);
  return s.ok() ? absl::OkStatus() : FromRocks(s, "delete", key, dir_);
}

// ===========================================================================
// Checkpoints and cost models
// ===========================================================================

absl::Status Store::PutCheckpoint(std::string_view job_id, int64_t step, std::string_view path) {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  if (absl::Status s = ValidateStep(job_id, step); !s.ok()) return s;
  if (path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("checkpoint path of job %s step %d is empty", job_id, step));
  }
  pb::CheckpointRecordValue rec;
  rec.set_step(step);
  rec.set_path(std::string(path));
  return Put(CheckpointKey(job_id, step), Serialize(rec));
}

absl::StatusOr<std::optional<CheckpointRecord>> Store::LatestCheckpoint(
    std::string_view job_id) const {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  const std::string prefix = CheckpointPrefix(job_id);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  // Steps are 20 ASCII digits, all below 0xff: the last key <= prefix + 0xff
  // is the highest step, if it still carries the prefix.
  it->SeekForPrev(prefix + '\xff');
  if (!it->status().ok()) return FromRocks(it->status(), "scan", prefix, dir_);
  if (!it->Valid() || !it->key().starts_with(prefix)) return std::optional<CheckpointRecord>();
  const std::string key = it->key().ToString();
  pb::CheckpointRecordValue rec;
  if (absl::Status s = ParseValue(key, it->value().ToString(), &rec); !s.ok()) return s;
  return std::optional<CheckpointRecord>(CheckpointRecord{rec.step(), rec.path()});
}

absl::Status Store::PutCostModel(std::string_view job_id, const chunkflow::v1::CostModel& model) {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  return Put(CostKey(job_id), Serialize(model));
}

absl::StatusOr<chunkflow::v1::CostModel> Store::GetCostModel(std::string_view job_id) const {
  if (absl::Status s = ValidateId("job id", job_id); !s.ok()) return s;
  std::string key = CostKey(job_id);
  absl::StatusOr<std::string> value = Get(key);
  if (absl::IsNotFound(value.status())) {
    return absl::NotFoundError(
        absl::StrFormat("job %s has no fitted cost model in the store (never fitted)", job_id));
  }
  if (!value.ok()) return value.status();
  chunkflow::v1::CostModel model;
  if (absl::Status s = ParseValue(key, *value, &model); !s.ok()) return s;
  return model;
}

}  // namespace chunkflow::coordinator
