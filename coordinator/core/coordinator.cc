#include "coordinator/core/coordinator.h"

#include <algorithm>
#include <map>
#include <cmath>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "coordinator/planner/plan_proto.h"
#include "coordinator/planner/planner.h"
#include "coordinator/planner/simulator.h"
#include "nlohmann/json.hpp"
#include "worker/engine/engine.h"
#include "worker/engine/params.h"

namespace chunkflow::coordinator {
namespace v1 = ::chunkflow::v1;

namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

// Job events kept in the Job record (the newest); per-step events go only to
// watchers.
constexpr int kMaxJobEvents = 100;
constexpr int64_t kMinChunkSize = 64;

// Whether step `step` of `job` saves a checkpoint: the last step, every
// checkpoint_every-th, and the next one after a CheckpointJob request.
bool CheckpointAfter(const v1::Job& job, int64_t step) {
  const v1::JobSpec& spec = job.spec();
  return !spec.checkpoint_dir().empty() &&
         (step + 1 == spec.steps() || job.checkpoint_requested() ||
          (spec.checkpoint_every() > 0 && (step + 1) % spec.checkpoint_every() == 0));
}

bool Finished(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

std::string StateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_PENDING: return "pending";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_COMPLETED: return "completed";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

std::string WorkerStateName(v1::WorkerState s) {
  switch (s) {
    case v1::WORKER_STATE_IDLE: return "idle";
    case v1::WORKER_STATE_ASSIGNED: return "assigned";
    case v1::WORKER_STATE_TRAINING: return "running";  // metrics.h's label
    case v1::WORKER_STATE_DRAINING: return "draining";
    case v1::WORKER_STATE_DEAD: return "dead";
    default: return "unspecified";
  }
}

int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

// The dataset cursor keys a store id may not contain (store.h): printable
// ASCII without '/' or space.
absl::Status ValidateWorkerName(const std::string& name) {
  if (name.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker_name is ", name.size(), " characters; at most 128"));
  }
  for (char c : name) {
    if (c <= ' ' || c > '~' || c == '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "worker_name '", name, "' may hold printable ASCII only, without '/' or spaces"));
    }
  }
  return absl::OkStatus();
}

planner::CostModel FromProto(const v1::CostModel& m) {
  planner::CostModel c;
  c.backward_ratio = m.backward_ratio();
  for (const v1::StageCost& s : m.stages()) {
    c.stages.push_back({s.linear_s_per_token(), s.quadratic_s_per_pair(), s.fixed_s()});
  }
  return c;
}

v1::CostModel ToProto(const planner::CostModel& c) {
  v1::CostModel m;
  m.set_backward_ratio(c.backward_ratio);
  for (const planner::StageCost& s : c.stages) {
    v1::StageCost* out = m.add_stages();
    out->set_linear_s_per_token(s.linear_s_per_token);
    out->set_quadratic_s_per_pair(s.quadratic_s_per_pair);
    out->set_fixed_s(s.fixed_s);
  }
  return m;
}

std::string CheckpointPath(const v1::JobSpec& spec, const std::string& job_id, int64_t step) {
  return absl::StrFormat("%s/%s/step-%06d", spec.checkpoint_dir(), job_id, step);
}

std::string MiB(int64_t bytes) {
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

}  // namespace

Clock* RealClock() {
  static SystemClock* clock = new SystemClock();
  return clock;
}

struct Coordinator::WorkerEntry {
  v1::Worker info;
  std::shared_ptr<WorkerSink> sink;  // null while disconnected
  absl::Time last_seen;
  bool draining = false;
  bool rejoined = false;  // claimed its rank again after a coordinator restart
  int64_t last_step = -1;  // from Hello: last step whose update it applied
  bool connected() const { return sink != nullptr; }
};

struct Coordinator::JobEntry {
  v1::Job job;
  std::unique_ptr<ResolvedJob> resolved;
  std::optional<DatasetCursor> cursor;
  planner::CostModel prior, cost;
  planner::MemoryModel memory;
  std::vector<planner::OpSample> samples;
  std::vector<std::string> ranks;  // worker id per dp * pp + stage; empty: unassigned
  bool awaiting_rejoin = false;
  // The step in flight.
  bool in_flight = false;
  bool checkpoint_after = false;  // decided when the step is first sent
  v1::StepPlan plan;
  planner::Plan plan_struct;
  absl::Time sent_at;
  std::map<int32_t, v1::StepReport> reports;  // by rank
  std::set<int32_t> checkpoint_stages;
  int consecutive_resets = 0;
  std::vector<std::shared_ptr<JobEventSink>> watchers;
  // Progress for the ETA: steps committed since the ranks were assigned.
  absl::Time run_started;
  int64_t steps_at_run_start = 0;

  int32_t dp() const { return job.spec().dp(); }
  int32_t pp() const { return job.spec().pp(); }
  int32_t world() const { return dp() * pp(); }
};

// Holds mu_ for its scope. On leaving, it takes deliver_mu_ before releasing
// mu_ and delivers the outbox after: outboxes reach the sinks in the order
// they were filled, so a worker never sees a newer assignment's messages
// before an older step's. The sinks only queue, so delivery is quick.
class Coordinator::Section {
 public:
  Section(Coordinator* c, Outbox* out) ABSL_NO_THREAD_SAFETY_ANALYSIS : c_(c), out_(out) {
    c_->mu_.Lock();
  }
  ~Section() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    c_->deliver_mu_.Lock();
    c_->mu_.Unlock();
    out_->Deliver();
    c_->deliver_mu_.Unlock();
  }

 private:
  Coordinator* c_;
  Outbox* out_;
};

void Coordinator::Outbox::Deliver() {
  for (auto& [sink, msg] : to_workers) sink->Send(msg);
  for (auto& [sink, status] : close_workers) sink->Close(status);
  for (auto& [sink, event] : events) sink->Send(event);
  for (auto& sink : close_watchers) sink->Close(absl::OkStatus());
}

Coordinator::Coordinator(const CoordinatorOptions& options)
    : options_(options), clock_(options.clock != nullptr ? options.clock : RealClock()) {}

Coordinator::~Coordinator() = default;

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& options) {
  if (options.store == nullptr) return absl::InvalidArgumentError("CoordinatorOptions.store is null");
  if (options.heartbeat_interval <= absl::ZeroDuration() ||
      options.heartbeat_timeout <= options.heartbeat_interval ||
      options.comm_timeout <= absl::ZeroDuration() ||
      options.dead_worker_retention <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "need 0 < heartbeat_interval (", absl::FormatDuration(options.heartbeat_interval),
        ") < heartbeat_timeout (", absl::FormatDuration(options.heartbeat_timeout),
        "), comm_timeout > 0 and dead_worker_retention > 0"));
  }
  std::unique_ptr<Coordinator> c(new Coordinator(options));
  if (absl::Status s = c->Load(); !s.ok()) return s;
  return c;
}

// ---------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------

absl::Status Coordinator::OpenJob(JobEntry* job, std::unique_ptr<ResolvedJob> resolved) {
  if (resolved == nullptr) {
    absl::StatusOr<ResolvedJob> r = ResolveJobSpec(job->job.spec());
    if (!r.ok()) return r.status();
    resolved = std::make_unique<ResolvedJob>(std::move(*r));
  }
  job->resolved = std::move(resolved);
  absl::StatusOr<DatasetCursor> cursor =
      DatasetCursor::Create(job->resolved->data->num_documents(),
                            static_cast<uint64_t>(job->job.spec().seed()),
                            job->job.spec().global_batch());
  if (!cursor.ok()) return cursor.status();
  job->cursor = std::move(*cursor);
  // The epoch order is a permutation of the dataset's documents: a dataset
  // that changed size since the job's last planned step would reorder the
  // rest of the epoch (documents trained twice, others skipped). Refused.
  // (A job being submitted has no id nor steps yet.)
  if (!job->job.id().empty()) {
    absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(job->job.id());
    if (!last.ok()) return last.status();
    for (int64_t step : {*last + 1, *last}) {  // the newest planned step
      if (step < 0) continue;
      absl::StatusOr<StepRecord> r = options_.store->GetStep(job->job.id(), step);
      if (absl::IsNotFound(r.status())) continue;
      if (!r.ok()) return r.status();
      const int64_t then = r->cursor.num_documents, now = job->resolved->data->num_documents();
      if (then > 0 && then != now) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the dataset ", job->job.spec().dataset().path(), " has ", now,
            " documents, but step ", step, " was planned when it had ", then,
            ": continuing would reorder the epoch (documents trained twice or skipped). "
            "Restore the dataset, or submit a new job"));
      }
      break;
    }
  }
  const planner::ModelShape shape = engine::ShapeOf(job->resolved->config);
  // A CPU-sized prior (100 GFLOP/s); the first steps' timings replace it.
  job->prior = planner::CostModelFromShape(shape, job->pp(), planner::DeviceModel{1e11, 0});
  job->cost = job->prior;
  job->memory = planner::MemoryModelFromShape(shape, job->pp());
  if (job->job.has_fitted_cost_model() && job->job.fitted_cost_model().stages_size() == job->pp()) {
    // A restarted coordinator has lost the samples: the refits after it
    // start from what was fitted (a stage with too few new samples keeps
    // it), not from the CPU-sized prior.
    job->cost = FromProto(job->job.fitted_cost_model());
    job->prior = job->cost;
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Load() {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<v1::Worker>> workers = options_.store->ListWorkers();
  if (!workers.ok()) return workers.status();
  const absl::Time now = clock_->Now();
  for (const v1::Worker& w : *workers) {
    auto e = std::make_unique<WorkerEntry>();
    e->info = w;
    e->draining = w.draining();  // a drain outlives the coordinator's restart
    e->last_seen = now;  // reset again at the end of Load
    workers_[w.id()] = std::move(e);
  }
  absl::StatusOr<std::vector<v1::Job>> jobs = options_.store->ListJobs();
  if (!jobs.ok()) return jobs.status();
  Outbox ignored;  // nobody is connected yet
  for (const v1::Job& j : *jobs) {
    auto e = std::make_unique<JobEntry>();
    e->job = j;
    JobEntry* job = e.get();
    jobs_[j.id()] = std::move(e);
    if (Finished(j.state())) continue;
    if (absl::Status s = OpenJob(job, nullptr); !s.ok()) {
      FinishJobLocked(job, v1::JOB_STATE_FAILED,
                      absl::StrCat("cannot reopen the job after a coordinator restart: ", s.message()),
                      &ignored);
      continue;
    }
    // The step log is the truth: the job record's totals are rebuilt from it
    // (a stop between a step's commit and the job's record, or inside a
    // rewind, leaves the record behind or ahead).
    if (absl::Status s = ReconcileTotalsLocked(job); !s.ok()) {
      FinishJobLocked(job, v1::JOB_STATE_FAILED,
                      absl::StrCat("cannot read the step log after a coordinator restart: ",
                                   s.message()),
                      &ignored);
      continue;
    }
    // Every step committed, but the coordinator stopped before it recorded
    // the end: finish it now instead of waiting for its workers again.
    if (absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(j.id());
        last.ok() && *last + 1 >= j.spec().steps()) {
      FinishJobLocked(job, v1::JOB_STATE_COMPLETED,
                      absl::StrCat(j.spec().steps(), " steps (finished after a coordinator restart)"),
                      &ignored);
      continue;
    }
    if (j.state() != v1::JOB_STATE_RUNNING) continue;
    job->ranks.assign(job->world(), "");
    for (auto& [id, w] : workers_) {
      const v1::Worker& i = w->info;
      if (i.job_id() != j.id() || i.generation() != j.generation() ||
          i.state() == v1::WORKER_STATE_DEAD || i.stage() < 0 || i.stage() >= job->pp() ||
          i.dp_index() < 0 || i.dp_index() >= job->dp()) {
        continue;
      }
      job->ranks[i.dp_index() * job->pp() + i.stage()] = id;
    }
    if (std::count(job->ranks.begin(), job->ranks.end(), "") > 0) {
      ResetJobLocked(job, "the coordinator restarted and the job's rank records are incomplete",
                     &ignored);
    } else {
      job->awaiting_rejoin = true;
      EventLocked(job, "coordinator restarted: waiting for the job's workers to reconnect",
                  &ignored);
    }
  }
  // Everyone gets a full heartbeat timeout to reconnect, counted from now
  // (opening the jobs' datasets above may have taken a while).
  for (auto& [id, w] : workers_) w->last_seen = clock_->Now();
  // A worker record naming a rank that is not one of a running job's current
  // ranks (an older generation, a crash inside AssignLocked, a finished job)
  // holds nothing: it gets a fresh assignment when it reconnects.
  for (auto& [id, w] : workers_) {
    v1::Worker& i = w->info;
    if (i.job_id().empty()) continue;
    auto j = jobs_.find(i.job_id());
    const bool current = j != jobs_.end() && !j->second->ranks.empty() &&
                         i.generation() == j->second->job.generation() && i.stage() >= 0 &&
                         i.dp_index() >= 0 &&
                         i.dp_index() * j->second->pp() + i.stage() < j->second->world() &&
                         j->second->ranks[i.dp_index() * j->second->pp() + i.stage()] == id;
    if (current) continue;
    i.clear_job_id();
    i.set_stage(-1);
    i.set_dp_index(-1);
    if (i.state() != v1::WORKER_STATE_DEAD) {
      i.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
    }
    SaveWorkerLocked(w.get());
  }
  UpdateGaugesLocked();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

void Coordinator::SaveJobLocked(JobEntry* job) {
  job->job.set_updated_unix_nanos(Nanos(clock_->Now()));
  if (absl::Status s = options_.store->PutJob(job->job); !s.ok()) {
    // The in-memory record stays authoritative; a restart would lose this
    // update only. Surface it in the job itself.
    job->job.add_events(absl::StrCat("cannot save the job record: ", s.message()));
  }
}

void Coordinator::SaveWorkerLocked(WorkerEntry* w) {
  (void)options_.store->PutWorker(w->info);  // advisory: rebuilt from Hello claims
}

v1::JobEvent Coordinator::BaseEventLocked(const JobEntry& job) {
  v1::JobEvent e;
  e.set_job_id(job.job.id());
  e.set_step(job.job.steps_committed() - 1);
  e.set_state(job.job.state());
  e.set_loss(job.job.last_loss());
  e.set_unix_nanos(Nanos(clock_->Now()));
  return e;
}

void Coordinator::EventLocked(JobEntry* job, const std::string& message, Outbox* out,
                              const std::string& checkpoint_path) {
  job->job.add_events(absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", clock_->Now(),
                                                    absl::UTCTimeZone()),
                                   " ", message));
  while (job->job.events_size() > kMaxJobEvents) {
    job->job.mutable_events()->DeleteSubrange(0, 1);
  }
  v1::JobEvent e = BaseEventLocked(*job);
  e.set_message(message);
  e.set_checkpoint_path(checkpoint_path);
  PruneWatchersLocked(job);
  for (auto& sink : job->watchers) out->events.emplace_back(sink, e);
}

void Coordinator::PruneWatchersLocked(JobEntry* job) {
  auto& w = job->watchers;
  w.erase(std::remove_if(w.begin(), w.end(), [](const auto& s) { return s->Closed(); }), w.end());
}

void Coordinator::UpdateGaugesLocked() {
  if (options_.metrics == nullptr) return;
  std::map<std::string, int> workers, jobs;
  for (auto& [id, w] : workers_) ++workers[WorkerStateName(w->info.state())];
  for (auto& [id, j] : jobs_) ++jobs[StateName(j->job.state())];
  (void)options_.metrics->SetWorkers(workers);
  (void)options_.metrics->SetJobs(jobs);
}

absl::StatusOr<Coordinator::JobEntry*> Coordinator::FindJobLocked(const std::string& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("job_id: no job '", id, "'"));
  }
  return it->second.get();
}

// ---------------------------------------------------------------------------
// WorkerService
// ---------------------------------------------------------------------------

absl::StatusOr<v1::RegisterResponse> Coordinator::Register(const v1::RegisterRequest& request) {
  if (request.device().kind() == v1::DEVICE_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError("device.kind is unspecified (CPU or CUDA)");
  }
  if (request.incarnation() == 0) {
    return absl::InvalidArgumentError("incarnation must be a non-zero random number per process");
  }
  if (absl::Status s = ValidateWorkerName(request.worker_name()); !s.ok()) return s;
  Outbox out;
  v1::RegisterResponse response;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    std::string id = request.worker_name();
    if (id.empty()) {
      absl::StatusOr<int64_t> n = options_.store->NextSequence("worker");
      if (!n.ok()) return n.status();
      id = absl::StrFormat("worker-%06d", *n);
    }
    auto it = workers_.find(id);
    if (it != workers_.end()) {
      WorkerEntry* w = it->second.get();
      // Same incarnation while still "connected": a fast reconnect before the
      // old stream's end was noticed. That stream is over: nothing more is
      // sent down it (the next Connect gets what is missing).
      if (w->info.incarnation() == request.incarnation() && w->sink) {
        out.close_workers.emplace_back(w->sink, absl::AbortedError("the worker registered again"));
        w->sink = nullptr;
        w->rejoined = false;
      }
      if (w->info.incarnation() != request.incarnation()) {
        if (!w->info.job_id().empty()) {
          WorkerLostLocked(w, "restarted (new incarnation)", &out);
        }
        if (w->sink) out.close_workers.emplace_back(w->sink, absl::AbortedError("replaced by a new incarnation"));
        w->sink = nullptr;
        w->info.clear_job_id();
      }
    } else {
      it = workers_.emplace(id, std::make_unique<WorkerEntry>()).first;
      it->second->info.set_stage(-1);
      it->second->info.set_dp_index(-1);
    }
    WorkerEntry* w = it->second.get();
    w->info.set_id(id);
    w->info.set_name(request.worker_name().empty() ? id : request.worker_name());
    w->info.set_host(request.host());
    w->info.set_incarnation(request.incarnation());
    *w->info.mutable_device() = request.device();
    w->info.set_links(request.links() == v1::CommBootstrap::BACKEND_UNSPECIFIED
                          ? v1::CommBootstrap::BACKEND_GLOO
                          : request.links());
    if (w->info.job_id().empty()) {
      w->info.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
    }
    w->last_seen = clock_->Now();
    SaveWorkerLocked(w);
    UpdateGaugesLocked();
    response.set_worker_id(id);
    response.set_heartbeat_interval_s(absl::ToDoubleSeconds(options_.heartbeat_interval));
    response.set_heartbeat_timeout_s(absl::ToDoubleSeconds(options_.heartbeat_timeout));
    ScheduleLocked(&out);
  }
  return response;
}

absl::Status Coordinator::Connect(const v1::Hello& hello, std::shared_ptr<WorkerSink> sink) {
  Outbox out;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    auto it = workers_.find(hello.worker_id());
    if (it == workers_.end()) {
      return absl::NotFoundError(
          absl::StrCat("worker_id: no worker '", hello.worker_id(), "'; call Register first"));
    }
    WorkerEntry* w = it->second.get();
    if (w->info.incarnation() != hello.incarnation()) {
      return absl::UnauthenticatedError(absl::StrCat("worker ", hello.worker_id(),
                                                     " is registered with incarnation ",
                                                     w->info.incarnation(), ", not ",
                                                     hello.incarnation()));
    }
    if (w->sink && w->sink != sink) {
      out.close_workers.emplace_back(w->sink, absl::AbortedError("replaced by a newer stream"));
    }
    w->sink = std::move(sink);
    w->last_seen = clock_->Now();
    if (w->info.state() == v1::WORKER_STATE_DEAD) {
      w->info.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
    }
    const bool holds_rank = !w->info.job_id().empty();
    const bool claims = !hello.job_id().empty();
    const bool same = holds_rank && claims && hello.job_id() == w->info.job_id() &&
                      hello.generation() == w->info.generation() &&
                      hello.stage() == w->info.stage() && hello.dp_index() == w->info.dp_index();
    if (same) {
      w->rejoined = true;
      w->last_step = hello.last_step();
      // Back from a broken stream in the middle of a step: it may have
      // missed the plan (it ignores a plan it already has).
      auto j = jobs_.find(w->info.job_id());
      if (j != jobs_.end() && j->second->in_flight && !j->second->awaiting_rejoin) {
        const int32_t rank = w->info.dp_index() * j->second->pp() + w->info.stage();
        if (j->second->reports.count(rank) == 0) SendStepToRankLocked(j->second.get(), rank, &out);
      }
    } else {
      if (claims) {
        // It holds state of an assignment that no longer exists.
        v1::CoordinatorMessage m;
        m.mutable_control()->set_action(v1::Control::ACTION_ABORT);
        m.mutable_control()->set_job_id(hello.job_id());
        m.mutable_control()->set_reason("the assignment you hold is no longer current");
        out.to_workers.emplace_back(w->sink, m);
      }
      if (holds_rank) {
        // It lost its rank's state (or never got it): the job's ranks are
        // broken. Reset the job; this worker stays connected and idle.
        auto j = jobs_.find(w->info.job_id());
        const std::string why =
            absl::StrFormat("worker %s (stage %d, dp %d) reconnected without its rank's state",
                            w->info.id(), w->info.stage(), w->info.dp_index());
        if (j != jobs_.end() && w->info.generation() == j->second->job.generation()) {
          ResetJobLocked(j->second.get(), why, &out);
        }
        w->info.clear_job_id();
        w->info.set_stage(-1);
        w->info.set_dp_index(-1);
        w->info.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
      }
    }
    SaveWorkerLocked(w);
    UpdateGaugesLocked();
    ScheduleLocked(&out);
  }
  return absl::OkStatus();
}

void Coordinator::OnDisconnect(const std::string& worker_id, const WorkerSink* sink) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second->sink.get() != sink) return;
  it->second->sink = nullptr;
  it->second->rejoined = false;
}

absl::Status Coordinator::KvSet(const std::string& key, const std::string& value) {
  if (key.empty()) return absl::InvalidArgumentError("key is empty");
  if (key.size() > (1 << 20) || value.size() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("key '", key.substr(0, 64),
                                                   "' or its value is over 1 MiB"));
  }
  absl::MutexLock lock(&kv_mu_);
  kv_[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> Coordinator::KvGet(const std::string& key) {
  if (key.empty()) return absl::InvalidArgumentError("key is empty");
  absl::MutexLock lock(&kv_mu_);
  auto it = kv_.find(key);
  if (it == kv_.end()) return absl::NotFoundError(absl::StrCat("key '", key, "' is not set"));
  return it->second;
}

absl::Status Coordinator::OnMessage(const std::string& worker_id, const v1::WorkerMessage& msg) {
  Outbox out;
  absl::Status result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("no worker '", worker_id, "'"));
    WorkerEntry* w = it->second.get();
    w->last_seen = clock_->Now();
    switch (msg.msg_case()) {
      case v1::WorkerMessage::kHeartbeat:
        w->info.set_last_heartbeat_unix_nanos(Nanos(w->last_seen));
        break;
      case v1::WorkerMessage::kStepReport:
        result = OnReportLocked(w, msg.step_report(), &out);
        break;
      case v1::WorkerMessage::kCheckpointDone:
        break;  // informational: the step report carries checkpoint_saved
      case v1::WorkerMessage::kError: {
        const v1::WorkerError& e = msg.error();
        auto j = jobs_.find(w->info.job_id());
        if (j != jobs_.end() && !Finished(j->second->job.state()) && e.job_id() == j->first &&
            !j->second->ranks.empty() && e.generation() == j->second->job.generation()) {
          ResetJobLocked(j->second.get(),
                         absl::StrFormat("worker %s (stage %d, dp %d) failed step %d: %s",
                                         worker_id, w->info.stage(), w->info.dp_index(), e.step(),
                                         e.message()),
                         &out);
        }
        break;
      }
      case v1::WorkerMessage::kStepAck:
        break;
      case v1::WorkerMessage::kHello:
        result = absl::InvalidArgumentError("Hello sent twice on one stream");
        break;
      default:
        result = absl::InvalidArgumentError("empty WorkerMessage");
    }
    UpdateGaugesLocked();
    ScheduleLocked(&out);
  }
  return result;
}

void Coordinator::Tick() {
  Outbox out;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    const absl::Time now = clock_->Now();
    // If the coordinator itself stalled (a slow disk under the lock), the
    // heartbeats that queued meanwhile are not the workers' fault.
    const absl::Duration stall = now - last_tick_ - 2 * options_.heartbeat_interval;
    if (last_tick_ != absl::InfinitePast() && stall > absl::ZeroDuration()) {
      for (auto& [id, w] : workers_) w->last_seen = std::min(now, w->last_seen + stall);
    }
    last_tick_ = now;
    for (auto& [id, w] : workers_) {
      if (w->info.state() == v1::WORKER_STATE_DEAD) continue;
      if (now - w->last_seen > options_.heartbeat_timeout) {
        WorkerLostLocked(w.get(),
                         absl::StrCat("no heartbeat for ",
                                      absl::FormatDuration(now - w->last_seen), " (timeout ",
                                      absl::FormatDuration(options_.heartbeat_timeout), ")"),
                         &out);
      }
    }
    for (auto it = workers_.begin(); it != workers_.end();) {
      const WorkerEntry& w = *it->second;
      const bool forget = w.info.state() == v1::WORKER_STATE_DEAD && w.info.job_id().empty() &&
                          !w.connected() &&
                          now - w.last_seen > options_.dead_worker_retention;
      // A record the store could not delete stays, and is tried again.
      if (forget && options_.store->DeleteWorker(it->first).ok()) {
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    UpdateGaugesLocked();
    ScheduleLocked(&out);
  }
}

// ---------------------------------------------------------------------------
// Scheduling and the step loop
// ---------------------------------------------------------------------------

void Coordinator::ScheduleLocked(Outbox* out) {
  for (auto& [id, jp] : jobs_) {
    JobEntry* job = jp.get();
    if (job->job.state() == v1::JOB_STATE_RUNNING && job->awaiting_rejoin) {
      bool all = true;
      for (const std::string& wid : job->ranks) {
        auto w = workers_.find(wid);
        all = all && w != workers_.end() && w->second->connected() && w->second->rejoined;
      }
      if (all) {
        job->awaiting_rejoin = false;
        job->run_started = clock_->Now();
        job->steps_at_run_start = job->job.steps_committed();
        EventLocked(job, "every rank reconnected; resuming", out);
        StartStepLocked(job, out);
      }
      continue;
    }
    if (job->job.state() != v1::JOB_STATE_PENDING || !job->ranks.empty() || !job->resolved) {
      continue;
    }
    // A job's ranks share one transport (their links cannot rendezvous
    // across Gloo and NCCL): the first transport with enough idle workers.
    std::map<int, std::vector<WorkerEntry*>> idle;  // by CommBootstrap.Backend
    for (auto& [wid, w] : workers_) {
      if (w->connected() && !w->draining && w->info.job_id().empty() &&
          w->info.state() == v1::WORKER_STATE_IDLE) {
        idle[w->info.links()].push_back(w.get());
      }
    }
    for (auto& [links, ws] : idle) {
      if (static_cast<int32_t>(ws.size()) < job->world()) continue;
      ws.resize(job->world());
      AssignLocked(job, ws, out);
      break;
    }
  }
}

void Coordinator::AssignLocked(JobEntry* job, std::vector<WorkerEntry*> workers, Outbox* out) {
  const v1::JobSpec& spec = job->job.spec();
  absl::StatusOr<std::vector<engine::StageRange>> ranges =
      engine::PartitionStages(job->resolved->config.num_hidden_layers, job->pp());
  absl::StatusOr<std::optional<CheckpointRecord>> ckpt =
      options_.store->LatestCheckpoint(job->job.id());
  absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(job->job.id());
  if (!ranges.ok() || !ckpt.ok() || !last.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat("cannot assign ranks: ",
                                 !ranges.ok() ? ranges.status().message()
                                 : !ckpt.ok() ? ckpt.status().message()
                                              : last.status().message()),
                    out);
    return;
  }
  // Resetting rewound the log to the checkpoint, so they agree; otherwise
  // (committed steps after the newest checkpoint, or none) the job goes back
  // to that checkpoint, or to its first step.
  const int64_t target = ckpt->has_value() && (*ckpt)->step <= *last ? (*ckpt)->step : -1;
  const bool from_checkpoint = target >= 0;
  if (target != *last) {
    if (absl::Status s = RewindLocked(job, target); !s.ok()) {
      FinishJobLocked(job, v1::JOB_STATE_FAILED, absl::StrCat("cannot rewind: ", s.message()), out);
      return;
    }
  }
  // The job record (with the new generation) is written before any worker
  // record: a crash in between leaves workers of an older generation, which
  // Load() releases.
  job->job.set_generation(job->job.generation() + 1);
  job->job.set_state(v1::JOB_STATE_RUNNING);
  SaveJobLocked(job);
  job->ranks.assign(job->world(), "");
  const std::string config_json = engine::ToHfConfigJson(job->resolved->config);
  std::vector<std::string> names;
  for (int32_t d = 0; d < job->dp(); ++d) {
    for (int32_t s = 0; s < job->pp(); ++s) {
      const int32_t rank = d * job->pp() + s;
      WorkerEntry* w = workers[rank];
      job->ranks[rank] = w->info.id();
      w->info.set_job_id(job->job.id());
      w->info.set_stage(s);
      w->info.set_dp_index(d);
      w->info.set_generation(job->job.generation());
      w->info.set_state(v1::WORKER_STATE_ASSIGNED);
      w->rejoined = true;
      w->last_step = from_checkpoint ? (*ckpt)->step : -1;
      SaveWorkerLocked(w);
      v1::CoordinatorMessage m;
      v1::RankAssignment* a = m.mutable_assignment();
      a->set_job_id(job->job.id());
      a->set_stage(s);
      a->set_dp_index(d);
      a->set_pp(job->pp());
      a->set_dp(job->dp());
      a->set_first_layer(static_cast<int32_t>((*ranges)[s].first_layer));
      a->set_end_layer(static_cast<int32_t>((*ranges)[s].end_layer));
      a->set_model_path(spec.model().path());
      a->set_model_config_json(config_json);
      a->set_dataset_path(spec.dataset().path());
      *a->mutable_optimizer() = spec.optimizer();
      a->set_seed(spec.seed());
      a->set_memory_budget_bytes(spec.memory_budget_bytes());
      a->set_generation(job->job.generation());
      if (from_checkpoint) {
        a->set_checkpoint_path((*ckpt)->path);
        a->set_checkpoint_step(target);
      } else {
        a->set_checkpoint_step(-1);
      }
      a->set_comm_timeout_s(absl::ToDoubleSeconds(options_.comm_timeout));
      out->to_workers.emplace_back(w->sink, m);
      v1::CoordinatorMessage b;
      v1::CommBootstrap* boot = b.mutable_bootstrap();
      boot->set_backend(w->info.links());
      boot->set_store_prefix(absl::StrCat(job->job.id(), "/g", job->job.generation()));
      boot->set_world_size(job->world());
      boot->set_rank(rank);
      out->to_workers.emplace_back(w->sink, b);
      names.push_back(absl::StrFormat("stage %d dp %d = %s", s, d, w->info.id()));
    }
  }
  job->run_started = clock_->Now();
  job->steps_at_run_start = job->job.steps_committed();
  EventLocked(job,
              absl::StrCat("ranks assigned (generation ", job->job.generation(), "): ",
                           absl::StrJoin(names, ", "),
                           from_checkpoint
                               ? absl::StrCat("; loading the checkpoint after step ",
                                              (*ckpt)->step, " from ", (*ckpt)->path)
                               : ""),
              out);
  SaveJobLocked(job);
  StartStepLocked(job, out);
}

void Coordinator::StartStepLocked(JobEntry* job, Outbox* out) {
  const std::string& id = job->job.id();
  const v1::JobSpec& spec = job->job.spec();
  absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(id);
  absl::StatusOr<std::optional<v1::StepPlan>> pending = options_.store->PlannedUncommitted(id);
  if (!last.ok() || !pending.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat("cannot read the step log: ",
                                 !last.ok() ? last.status().message() : pending.status().message()),
                    out);
    return;
  }
  if (*last + 1 >= spec.steps()) {
    FinishJobLocked(job, v1::JOB_STATE_COMPLETED,
                    absl::StrCat(spec.steps(), " steps; final loss ",
                                 absl::StrFormat("%.4f", job->job.last_loss())),
                    out);
    return;
  }
  if (pending->has_value()) {
    absl::StatusOr<planner::Plan> p = planner::FromStepPlanProto(**pending);
    if (!p.ok()) {
      FinishJobLocked(job, v1::JOB_STATE_FAILED,
                      absl::StrCat("the step log's plan of step ", (*pending)->step(),
                                   " is unreadable: ", p.status().message()),
                      out);
      return;
    }
    job->plan = **pending;
    job->plan_struct = std::move(*p);
    SendStepLocked(job, out);
    return;
  }
  const int64_t step = *last + 1;
  absl::StatusOr<std::vector<int64_t>> docs = job->cursor->Batch(step);
  if (!docs.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED, std::string(docs.status().message()), out);
    return;
  }
  planner::PlanRequest req;
  int64_t loss_tokens = 0;
  for (int64_t doc : *docs) {
    req.sequences.push_back({doc, job->resolved->data->lengths()[doc]});
    absl::StatusOr<int64_t> n = job->resolved->data->CountTargets(doc);
    if (!n.ok()) {
      FinishJobLocked(job, v1::JOB_STATE_FAILED,
                      absl::StrCat("cannot read document ", doc, ": ", n.status().message()), out);
      return;
    }
    loss_tokens += *n;
  }
  const v1::ScheduleParams& sched = job->job.current_schedule();
  req.chunk_size = sched.chunk_size();
  req.k = sched.k();
  req.dp = job->dp();
  req.pp = job->pp();
  req.balance = sched.balance() == v1::BALANCE_POLICY_ROUND_ROBIN ? planner::Balance::kInOrder
                                                                  : planner::Balance::kCostModel;
  req.cost = job->cost;
  absl::StatusOr<planner::Plan> plan = planner::BuildPlan(req);
  if (!plan.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat("cannot plan step ", step, ": ", plan.status().message()), out);
    return;
  }
  absl::StatusOr<planner::SimResult> sim = planner::Simulate(*plan, job->cost, job->memory);
  v1::StepPlan msg = planner::ToStepPlanProto(*plan, sim.ok() ? &*sim : nullptr);
  msg.set_job_id(id);
  msg.set_step(step);
  msg.mutable_params()->set_balance(sched.balance());
  for (int64_t doc : *docs) msg.add_samples(doc);
  msg.set_loss_tokens(loss_tokens);
  const CursorState cursor{step + 1, static_cast<uint64_t>(spec.seed()), spec.global_batch(),
                           job->resolved->data->num_documents()};
  if (absl::Status s = options_.store->PutPlannedStep(id, msg, cursor); !s.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat("cannot write step ", step, " to the step log: ", s.message()),
                    out);
    return;
  }
  job->plan = std::move(msg);
  job->plan_struct = std::move(*plan);
  SendStepLocked(job, out);
}

void Coordinator::SendStepLocked(JobEntry* job, Outbox* out) {
  // Whether this step saves a checkpoint is decided once, when it is first
  // sent: a rank that reconnects gets the plan exactly as the others did (a
  // CheckpointJob request in between waits for the next step).
  job->checkpoint_after = CheckpointAfter(job->job, job->plan.step());
  job->in_flight = true;
  job->reports.clear();
  job->checkpoint_stages.clear();
  job->sent_at = clock_->Now();
  for (int32_t rank = 0; rank < job->world(); ++rank) {
    if (!SendStepToRankLocked(job, rank, out)) return;
  }
}

bool Coordinator::SendStepToRankLocked(JobEntry* job, int32_t rank, Outbox* out) {
  const v1::JobSpec& spec = job->job.spec();
  const int64_t step = job->plan.step();
  const bool checkpoint = job->checkpoint_after;
  const int32_t d = rank / job->pp(), s = rank % job->pp();
  absl::StatusOr<v1::StepPlanForWorker> w = planner::ToWorkerPlanProto(job->plan_struct, d, s);
  if (!w.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED, std::string(w.status().message()), out);
    return false;
  }
  w->set_job_id(job->job.id());
  w->set_step(step);
  w->mutable_params()->set_balance(job->plan.params().balance());
  w->set_loss_tokens(job->plan.loss_tokens());
  w->set_checkpoint_after(checkpoint);
  if (checkpoint) w->set_checkpoint_path(CheckpointPath(spec, job->job.id(), step));
  w->set_generation(job->job.generation());
  auto it = workers_.find(job->ranks[rank]);
  if (it == workers_.end()) return true;
  it->second->info.set_state(v1::WORKER_STATE_TRAINING);
  if (!it->second->connected()) return true;  // resent when it reconnects
  v1::CoordinatorMessage m;
  *m.mutable_step() = std::move(*w);
  out->to_workers.emplace_back(it->second->sink, std::move(m));
  return true;
}

absl::Status Coordinator::OnReportLocked(WorkerEntry* w, const v1::StepReport& r, Outbox* out) {
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end() || w->info.job_id() != r.job_id()) {
    return absl::OkStatus();  // stale: an old assignment
  }
  JobEntry* job = it->second.get();
  if (!job->in_flight || r.step() != job->plan.step() || r.generation() != job->job.generation()) {
    return absl::OkStatus();  // a resent report of a committed step, or of an older generation
  }
  if (r.stage() != w->info.stage() || r.dp() != w->info.dp_index()) {
    // The step in flight, of this assignment, for another rank: a worker
    // bug. Dropping it quietly would stall the job; the stream is closed.
    return absl::InvalidArgumentError(absl::StrFormat(
        "worker %s reported step %d of %s as stage %d dp %d, but it holds stage %d dp %d",
        w->info.id(), r.step(), r.job_id(), r.stage(), r.dp(), w->info.stage(),
        w->info.dp_index()));
  }
  w->info.set_peak_memory_bytes(r.peak_memory_bytes());
  w->info.set_state(v1::WORKER_STATE_ASSIGNED);
  if (r.checkpoint_saved() && r.dp() == 0) job->checkpoint_stages.insert(r.stage());
  job->reports[r.dp() * job->pp() + r.stage()] = r;
  if (static_cast<int32_t>(job->reports.size()) == job->world()) CommitLocked(job, out);
  return absl::OkStatus();
}

void Coordinator::CommitLocked(JobEntry* job, Outbox* out) {
  const std::string& id = job->job.id();
  const v1::JobSpec& spec = job->job.spec();
  const int64_t step = job->plan.step();
  double loss_sum = 0, step_seconds = 0;
  int64_t tokens = 0, peak = 0;
  const v1::StepReport* over = nullptr;
  nlohmann::json summary = nlohmann::json::array();
  for (auto& [rank, r] : job->reports) {
    loss_sum += r.loss_sum();
    step_seconds = std::max(step_seconds, r.step_seconds());
    if (r.peak_memory_bytes() > peak) {
      peak = r.peak_memory_bytes();
      over = &r;
    }
    summary.push_back({{"rank", rank},
                       {"worker", job->ranks[rank]},
                       {"peak_memory_bytes", r.peak_memory_bytes()},
                       {"step_seconds", r.step_seconds()},
                       {"grad_norm", r.grad_norm()},
                       {"offloaded_sequences", r.offloaded_sequences()},
                       {"ops", r.timings_size()}});
  }
  for (const planner::Chunk& c : job->plan_struct.chunks) tokens += c.tokens;
  const double loss =
      job->plan.loss_tokens() > 0 ? loss_sum / static_cast<double>(job->plan.loss_tokens()) : 0.0;
  // The checkpoint, once every stage's dp-0 shard is written: recorded in the
  // commit's batch.
  const bool checkpointed = static_cast<int32_t>(job->checkpoint_stages.size()) == job->pp();
  const std::string path = CheckpointPath(spec, id, step);
  StepCommit commit{loss, tokens, step_seconds, summary.dump(), checkpointed ? path : ""};
  if (absl::Status s = options_.store->CommitStep(id, step, commit); !s.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat("cannot commit step ", step, ": ", s.message()), out);
    return;
  }
  job->in_flight = false;
  job->consecutive_resets = 0;
  job->job.set_steps_committed(step + 1);
  job->job.set_tokens_trained(job->job.tokens_trained() + tokens);
  job->job.set_last_loss(loss);
  if (job->plan.sim().makespan_s() > 0 && options_.metrics != nullptr) {
    (void)options_.metrics->OnStepCommitted(step_seconds, tokens, job->plan.sim().bubble_ratio(),
                                            job->plan.sim().dp_imbalance());
  } else if (options_.metrics != nullptr) {
    (void)options_.metrics->OnStepCommitted(step_seconds, tokens, 0, 1);
  }


  // Refit the cost model from the measured op times.
  for (auto& [rank, r] : job->reports) {
    for (const v1::OpTiming& t : r.timings()) {
      job->samples.push_back({r.stage(), t.type() == v1::OP_TYPE_BACKWARD, t.tokens(),
                              t.attention_pairs(), t.seconds()});
    }
  }
  if (static_cast<int64_t>(job->samples.size()) > options_.max_cost_samples) {
    job->samples.erase(job->samples.begin(),
                       job->samples.end() - options_.max_cost_samples);
  }
  absl::StatusOr<planner::CostModel> fitted = planner::FitCostModel(job->samples, job->prior, {});
  if (fitted.ok()) {
    // A replan when the refit changed the model the next steps balance with
    // (not when a stage without enough samples kept it).
    const v1::CostModel before = ToProto(job->cost);
    job->cost = *fitted;
    *job->job.mutable_fitted_cost_model() = ToProto(*fitted);
    (void)options_.store->PutCostModel(id, job->job.fitted_cost_model());
    if (options_.metrics != nullptr &&
        before.SerializeAsString() != job->job.fitted_cost_model().SerializeAsString()) {
      (void)options_.metrics->OnReplan("cost_model");
    }
  }

  // Memory over budget: lower K, then ChunkSize, for the next step.
  const int64_t budget = spec.memory_budget_bytes();
  if (budget > 0 && peak > budget && over != nullptr) {
    v1::ScheduleParams* sched = job->job.mutable_current_schedule();
    std::string change;
    // K past the step's longest chain changes nothing (a chain of n chunks
    // keeps at most n): halve what K did, and lower ChunkSize when it did
    // nothing (no chain of 2 or more).
    int32_t longest = 1;
    for (const planner::Chunk& c : job->plan_struct.chunks) {
      longest = std::max(longest, c.chain_length);
    }
    const int32_t effective = std::min(sched->k(), longest);
    if (effective > 1) {
      const int32_t k = effective / 2;
      change = absl::StrCat("K ", sched->k(), " -> ", k);
      sched->set_k(k);
    } else if (sched->chunk_size() / 2 >= kMinChunkSize) {
      const int64_t c = sched->chunk_size() / 2;
      change = absl::StrCat("ChunkSize ", sched->chunk_size(), " -> ", c);
      sched->set_chunk_size(c);
    }
    const std::string who = absl::StrFormat("peak memory %s of stage %d dp %d is over the budget %s",
                                            MiB(peak), over->stage(), over->dp(), MiB(budget));
    if (!change.empty()) {
      EventLocked(job, absl::StrCat(who, ": ", change, " from step ", step + 1), out);
      if (options_.metrics != nullptr) (void)options_.metrics->OnReplan("memory");
    } else {
      EventLocked(job, absl::StrCat(who, "; K is 1 and ChunkSize at its minimum ", kMinChunkSize,
                                    ": nothing left to lower"),
                  out);
    }
  }
  if (checkpointed) {
    job->job.set_checkpoint_requested(false);  // saved with the job below
    EventLocked(job, absl::StrCat("checkpoint after step ", step, ": ", path), out, path);
  }

  // Progress for watchers.
  v1::JobEvent e = BaseEventLocked(*job);
  e.set_step(step);
  e.set_step_seconds(step_seconds);
  e.set_tokens_per_second(step_seconds > 0 ? static_cast<double>(tokens) / step_seconds : 0);
  const int64_t done = job->job.steps_committed() - job->steps_at_run_start;
  if (done > 0) {
    const double per_step = absl::ToDoubleSeconds(clock_->Now() - job->run_started) / done;
    e.set_eta_seconds(per_step * static_cast<double>(spec.steps() - job->job.steps_committed()));
  }
  PruneWatchersLocked(job);
  for (auto& sink : job->watchers) out->events.emplace_back(sink, e);
  SaveJobLocked(job);
  StartStepLocked(job, out);
}

// ---------------------------------------------------------------------------
// Failures and the end of a job
// ---------------------------------------------------------------------------

void Coordinator::ReleaseRanksLocked(JobEntry* job, v1::Control::Action action,
                                     const std::string& why, Outbox* out) {
  for (const std::string& wid : job->ranks) {
    auto it = workers_.find(wid);
    if (it == workers_.end()) continue;
    WorkerEntry* w = it->second.get();
    if (w->info.job_id() != job->job.id()) continue;
    if (w->connected()) {
      v1::CoordinatorMessage m;
      m.mutable_control()->set_action(action);
      m.mutable_control()->set_job_id(job->job.id());
      m.mutable_control()->set_reason(why);
      m.mutable_control()->set_generation(job->job.generation());
      out->to_workers.emplace_back(w->sink, m);
    }
    w->info.clear_job_id();
    w->info.set_stage(-1);
    w->info.set_dp_index(-1);
    w->rejoined = false;
    if (w->info.state() != v1::WORKER_STATE_DEAD) {
      w->info.set_state(w->draining ? v1::WORKER_STATE_DRAINING : v1::WORKER_STATE_IDLE);
    }
    SaveWorkerLocked(w);
  }
  job->ranks.clear();
  job->in_flight = false;
  job->awaiting_rejoin = false;
  // The rendezvous keys of this generation are done with.
  const std::string prefix = absl::StrCat(job->job.id(), "/g", job->job.generation(), "/");
  absl::MutexLock lock(&kv_mu_);
  absl::erase_if(kv_, [&](const auto& kv) { return absl::StartsWith(kv.first, prefix); });
}

absl::StatusOr<bool> Coordinator::TotalsFromLogLocked(JobEntry* job) {
  const std::string& id = job->job.id();
  absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(id);
  if (!last.ok()) return last.status();
  int64_t tokens = 0;
  double loss = 0;
  for (int64_t s = 0; s <= *last; ++s) {
    absl::StatusOr<StepRecord> r = options_.store->GetStep(id, s);
    if (!r.ok()) return r.status();
    if (!r->commit.has_value()) continue;
    tokens += r->commit->tokens;
    loss = r->commit->loss;
  }
  v1::Job& j = job->job;
  if (j.steps_committed() == *last + 1 && j.tokens_trained() == tokens && j.last_loss() == loss) {
    return false;
  }
  j.set_steps_committed(*last + 1);
  j.set_tokens_trained(tokens);
  j.set_last_loss(loss);
  return true;
}

absl::Status Coordinator::ReconcileTotalsLocked(JobEntry* job) {
  const int64_t steps = job->job.steps_committed(), tokens = job->job.tokens_trained();
  absl::StatusOr<bool> changed = TotalsFromLogLocked(job);
  if (!changed.ok()) return changed.status();
  if (!*changed) return absl::OkStatus();
  Outbox ignored;  // nobody watches yet
  EventLocked(job,
              absl::StrCat("totals rebuilt from the step log after a coordinator restart: ", steps,
                           " -> ", job->job.steps_committed(), " steps, ", tokens, " -> ",
                           job->job.tokens_trained(), " tokens"),
              &ignored);
  SaveJobLocked(job);
  return absl::OkStatus();
}

absl::Status Coordinator::RewindLocked(JobEntry* job, int64_t target) {
  if (absl::Status s = options_.store->RewindTo(job->job.id(), target); !s.ok()) return s;
  // The totals follow the rewound log: steps up to target, their tokens, and
  // the target step's loss (0 before any).
  return TotalsFromLogLocked(job).status();
}

void Coordinator::ResetJobLocked(JobEntry* job, const std::string& why, Outbox* out) {
  if (Finished(job->job.state())) return;
  if (++job->consecutive_resets >= kMaxConsecutiveResets) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat(why, " (", job->consecutive_resets,
                                 " resets in a row without a committed step)"),
                    out);
    return;
  }
  ReleaseRanksLocked(job, v1::Control::ACTION_ABORT, why, out);
  absl::StatusOr<std::optional<CheckpointRecord>> ckpt =
      options_.store->LatestCheckpoint(job->job.id());
  if (!ckpt.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat(why, "; cannot read the checkpoint records: ",
                                 ckpt.status().message()),
                    out);
    return;
  }
  const int64_t target = ckpt->has_value() ? (*ckpt)->step : -1;
  if (absl::Status s = RewindLocked(job, target); !s.ok()) {
    FinishJobLocked(job, v1::JOB_STATE_FAILED,
                    absl::StrCat(why, "; cannot rewind the step log: ", s.message()), out);
    return;
  }
  job->job.set_state(v1::JOB_STATE_PENDING);
  EventLocked(job,
              absl::StrCat(why, "; back to ",
                           target >= 0 ? absl::StrCat("the checkpoint after step ", target)
                                       : std::string("the first step (no checkpoint)"),
                           ", waiting for ", job->world(), " workers"),
              out);
  SaveJobLocked(job);
}

void Coordinator::FinishJobLocked(JobEntry* job, v1::JobState state, const std::string& why,
                                  Outbox* out) {
  // The job's end is on disk before its workers' records are released: a
  // coordinator that stops in between finds a finished job (Load frees its
  // workers' records), not a running one whose ranks are gone, which it
  // would reset and train again.
  job->job.set_state(state);
  if (state == v1::JOB_STATE_FAILED) job->job.set_error(why);
  SaveJobLocked(job);
  ReleaseRanksLocked(job,
                     state == v1::JOB_STATE_FAILED ? v1::Control::ACTION_ABORT
                                                   : v1::Control::ACTION_RELEASE,
                     why, out);
  // A finished job keeps its record only: no open dataset, no samples.
  job->resolved.reset();
  job->cursor.reset();
  job->samples.clear();
  job->samples.shrink_to_fit();
  EventLocked(job, absl::StrCat(StateName(state), ": ", why), out);
  for (auto& sink : job->watchers) out->close_watchers.push_back(sink);
  job->watchers.clear();
  SaveJobLocked(job);
  UpdateGaugesLocked();
}

void Coordinator::WorkerLostLocked(WorkerEntry* w, const std::string& why, Outbox* out) {
  const std::string job_id = w->info.job_id();
  const std::string who = absl::StrFormat("worker %s (stage %d, dp %d) lost: %s", w->info.id(),
                                          w->info.stage(), w->info.dp_index(), why);
  w->info.set_state(v1::WORKER_STATE_DEAD);
  if (w->sink) out->close_workers.emplace_back(w->sink, absl::DeadlineExceededError(why));
  w->sink = nullptr;
  w->rejoined = false;
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) {
    ResetJobLocked(it->second.get(), who, out);
  }
  w->info.clear_job_id();
  w->info.set_stage(-1);
  w->info.set_dp_index(-1);
  SaveWorkerLocked(w);
}

// ---------------------------------------------------------------------------
// AdminService
// ---------------------------------------------------------------------------

absl::StatusOr<v1::Job> Coordinator::SubmitJob(const v1::JobSpec& spec) {
  absl::StatusOr<ResolvedJob> resolved = ResolveJobSpec(spec);
  if (!resolved.ok()) return resolved.status();
  // Opening the dataset and building the cost prior happen outside the lock.
  auto e = std::make_unique<JobEntry>();
  JobEntry* job = e.get();
  *job->job.mutable_spec() = resolved->spec;
  *job->job.mutable_current_schedule() = resolved->spec.schedule();
  job->job.set_state(v1::JOB_STATE_PENDING);
  if (absl::Status s = OpenJob(job, std::make_unique<ResolvedJob>(std::move(*resolved))); !s.ok()) {
    return s;
  }
  Outbox out;
  v1::Job result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    absl::StatusOr<int64_t> n = options_.store->NextSequence("job");
    if (!n.ok()) return n.status();
    job->job.set_id(absl::StrFormat("job-%06d", *n));
    job->job.set_created_unix_nanos(Nanos(clock_->Now()));
    const v1::JobSpec& sp = job->job.spec();
    EventLocked(job,
                absl::StrFormat("submitted: %d steps of %d documents, dp %d x pp %d, ChunkSize %d, "
                                "K %d, waiting for %d workers",
                                sp.steps(), sp.global_batch(), sp.dp(), sp.pp(),
                                sp.schedule().chunk_size(), sp.schedule().k(), job->world()),
                &out);
    job->job.set_updated_unix_nanos(job->job.created_unix_nanos());
    if (absl::Status s = options_.store->PutJob(job->job); !s.ok()) return s;
    jobs_[job->job.id()] = std::move(e);
    UpdateGaugesLocked();
    ScheduleLocked(&out);
    result = job->job;
  }
  return result;
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<JobEntry*> job = FindJobLocked(job_id);
  if (!job.ok()) return job.status();
  return (*job)->job;
}

absl::StatusOr<std::vector<v1::Job>> Coordinator::ListJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Job> out;
  for (auto& [id, j] : jobs_) out.push_back(j->job);
  return out;
}

absl::StatusOr<v1::Job> Coordinator::CancelJob(const std::string& job_id, const std::string& reason) {
  Outbox out;
  v1::Job result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    absl::StatusOr<JobEntry*> job = FindJobLocked(job_id);
    if (!job.ok()) return job.status();
    if (Finished((*job)->job.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", job_id, " is already ", StateName((*job)->job.state())));
    }
    FinishJobLocked(*job, v1::JOB_STATE_CANCELLED,
                    reason.empty() ? std::string("cancelled by an admin") : reason, &out);
    ScheduleLocked(&out);
    result = (*job)->job;
  }
  return result;
}

std::vector<v1::Worker> Coordinator::ListWorkers() {
  absl::MutexLock lock(&mu_);
  std::vector<v1::Worker> out;
  for (auto& [id, w] : workers_) out.push_back(w->info);
  return out;
}

absl::StatusOr<v1::Worker> Coordinator::DrainWorker(const std::string& worker_id) {
  Outbox out;
  v1::Worker result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) {
      return absl::NotFoundError(absl::StrCat("worker_id: no worker '", worker_id, "'"));
    }
    WorkerEntry* w = it->second.get();
    w->draining = true;
    w->info.set_draining(true);  // saved below
    if (w->info.job_id().empty() && w->info.state() != v1::WORKER_STATE_DEAD) {
      w->info.set_state(v1::WORKER_STATE_DRAINING);
    }
    if (w->connected()) {
      v1::CoordinatorMessage m;
      m.mutable_control()->set_action(v1::Control::ACTION_DRAIN);
      m.mutable_control()->set_reason("drained by an admin: no new jobs");
      out.to_workers.emplace_back(w->sink, m);
    }
    SaveWorkerLocked(w);
    UpdateGaugesLocked();
    result = w->info;
  }
  return result;
}

absl::StatusOr<v1::Job> Coordinator::UpdateSchedule(const std::string& job_id,
                                                    const v1::ScheduleParams& params) {
  if (params.chunk_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule.chunk_size must be >= 0 (0 keeps it), got ", params.chunk_size()));
  }
  if (params.k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule.k must be >= 0 (0 keeps it), got ", params.k()));
  }
  if (!v1::BalancePolicy_IsValid(params.balance())) {
    return absl::InvalidArgumentError(
        absl::StrCat("schedule.balance must be a BalancePolicy, got ", params.balance()));
  }
  Outbox out;
  v1::Job result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    absl::StatusOr<JobEntry*> job = FindJobLocked(job_id);
    if (!job.ok()) return job.status();
    if (Finished((*job)->job.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " is already ", StateName((*job)->job.state())));
    }
    v1::ScheduleParams* s = (*job)->job.mutable_current_schedule();
    std::vector<std::string> changes;
    if (params.chunk_size() > 0 && params.chunk_size() != s->chunk_size()) {
      changes.push_back(absl::StrCat("ChunkSize ", s->chunk_size(), " -> ", params.chunk_size()));
      s->set_chunk_size(params.chunk_size());
    }
    if (params.k() > 0 && params.k() != s->k()) {
      changes.push_back(absl::StrCat("K ", s->k(), " -> ", params.k()));
      s->set_k(params.k());
    }
    if (params.balance() != v1::BALANCE_POLICY_UNSPECIFIED && params.balance() != s->balance()) {
      changes.push_back(absl::StrCat("balance ", v1::BalancePolicy_Name(s->balance()), " -> ",
                                     v1::BalancePolicy_Name(params.balance())));
      s->set_balance(params.balance());
    }
    if (!changes.empty()) {
      EventLocked(*job,
                  absl::StrCat("schedule changed by an admin: ", absl::StrJoin(changes, ", "),
                               " (from the next planned step)"),
                  &out);
      if (options_.metrics != nullptr) (void)options_.metrics->OnReplan("admin");
      SaveJobLocked(*job);
    }
    result = (*job)->job;
  }
  return result;
}

absl::StatusOr<v1::Job> Coordinator::CheckpointJob(const std::string& job_id) {
  Outbox out;
  v1::Job result;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    absl::StatusOr<JobEntry*> job = FindJobLocked(job_id);
    if (!job.ok()) return job.status();
    v1::Job& j = (*job)->job;
    if (Finished(j.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job_id, " is already ", StateName(j.state())));
    }
    if (j.spec().checkpoint_dir().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", job_id, " has no checkpoint_dir: it was submitted without --checkpoint_dir, so "
          "it has nowhere to write a checkpoint"));
    }
    if (!j.checkpoint_requested()) {
      // The step in flight was sent as it was: if it saves one anyway, that
      // checkpoint answers the request; otherwise the next planned step does.
      const bool in_flight = (*job)->in_flight;
      const int64_t sent = in_flight ? (*job)->plan.step() : -1;
      const int64_t after = in_flight && !(*job)->checkpoint_after ? sent + 1
                            : in_flight                          ? sent
                                                                 : j.steps_committed();
      j.set_checkpoint_requested(true);
      // Written before the answer: a request the store did not take is an
      // error, not an OK that a restart forgets.
      j.set_updated_unix_nanos(Nanos(clock_->Now()));
      if (absl::Status st = options_.store->PutJob(j); !st.ok()) {
        j.set_checkpoint_requested(false);
        return absl::Status(st.code(), absl::StrCat("cannot record the checkpoint request of ",
                                                    job_id, ": ", st.message()));
      }
      EventLocked(*job, absl::StrCat("checkpoint requested by an admin: after step ", after), &out);
      SaveJobLocked(*job);
    }
    result = j;
  }
  return result;
}

absl::Status Coordinator::WatchJob(const std::string& job_id, std::shared_ptr<JobEventSink> sink) {
  Outbox out;
  {
    Section section(this, &out);  // delivers `out` in order on leaving
    absl::StatusOr<JobEntry*> job = FindJobLocked(job_id);
    if (!job.ok()) return job.status();
    v1::JobEvent e = BaseEventLocked(**job);
    e.set_message(absl::StrCat("job ", job_id, " is ", StateName((*job)->job.state()), ", ",
                               (*job)->job.steps_committed(), "/", (*job)->job.spec().steps(),
                               " steps committed"));
    out.events.emplace_back(sink, e);
    if (Finished((*job)->job.state())) {
      out.close_watchers.push_back(sink);
    } else {
      PruneWatchersLocked(*job);
      (*job)->watchers.push_back(sink);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::StepSummary>> Coordinator::ListSteps(const std::string& job_id) {
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = FindJobLocked(job_id).status(); !s.ok()) return s;
  }
  // The store is thread-safe; reading the log needs no coordinator lock.
  absl::StatusOr<int64_t> last = options_.store->LastCommittedStep(job_id);
  if (!last.ok()) return last.status();
  std::vector<v1::StepSummary> out;
  for (int64_t step = 0; step <= *last + 1; ++step) {
    absl::StatusOr<StepRecord> r = options_.store->GetStep(job_id, step);
    // Past the end: nothing planned yet, or a reset rewound the log meanwhile.
    if (absl::IsNotFound(r.status())) break;
    if (!r.ok()) return r.status();
    v1::StepSummary s;
    s.set_step(step);
    *s.mutable_samples() = r->plan.samples();
    s.set_chunks(r->plan.chunks_size());
    s.set_chunk_size(r->plan.params().chunk_size());
    s.set_k(r->plan.params().k());
    if (r->commit.has_value()) {
      s.set_committed(true);
      s.set_loss(r->commit->loss);
      s.set_tokens(r->commit->tokens);
      s.set_step_seconds(r->commit->step_seconds);
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace chunkflow::coordinator
