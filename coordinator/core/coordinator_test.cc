// The coordinator's logic with fake workers (sinks that record what they are
// sent) and a fake clock: job lifecycle, rank assignment, the write-ahead step
// loop, heartbeat timeouts, checkpoint rewinds, restarts from the store,
// memory-driven replanning and bad admin input.

#include "coordinator/core/coordinator.h"

#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "metrics/metrics.h"
#include "prometheus/registry.h"
#include "worker/engine/model_config.h"

namespace chunkflow::coordinator {
namespace {
namespace v1 = ::chunkflow::v1;

class FakeClock final : public Clock {
 public:
  absl::Time Now() override { return now_; }
  void Advance(absl::Duration d) { now_ += d; }

 private:
  absl::Time now_ = absl::FromUnixSeconds(1'800'000'000);
};

class FakeSink final : public WorkerSink {
 public:
  void Send(const v1::CoordinatorMessage& msg) override { inbox.push_back(msg); }
  void Close(const absl::Status& status) override { closed = status; }
  std::deque<v1::CoordinatorMessage> inbox;
  std::optional<absl::Status> closed;
};

class EventSink final : public JobEventSink {
 public:
  void Send(const v1::JobEvent& e) override { events.push_back(e); }
  void Close(const absl::Status&) override { closed = true; }
  std::vector<v1::JobEvent> events;
  bool closed = false;
};

// A worker as the coordinator sees it: registers, connects, answers plans
// with reports (it keeps its rank and last applied step like the daemon).
struct FakeWorker {
  std::string id;
  uint64_t incarnation = 0;
  std::shared_ptr<FakeSink> sink = std::make_shared<FakeSink>();
  v1::RankAssignment assignment;
  bool assigned = false;
  int64_t last_step = -1;
  int64_t peak = 1000;
  std::vector<v1::StepPlanForWorker> plans;  // every plan it ran
  v1::CommBootstrap::Backend links = v1::CommBootstrap::BACKEND_UNSPECIFIED;  // registered
  v1::CommBootstrap::Backend bootstrapped = v1::CommBootstrap::BACKEND_UNSPECIFIED;  // told

  void Join(Coordinator* c, const std::string& name, uint64_t inc) {
    incarnation = inc;
    v1::RegisterRequest r;
    r.set_worker_name(name);
    r.set_incarnation(inc);
    r.mutable_device()->set_kind(v1::DEVICE_KIND_CPU);
    r.set_links(links);
    absl::StatusOr<v1::RegisterResponse> resp = c->Register(r);
    ASSERT_TRUE(resp.ok()) << resp.status();
    id = resp->worker_id();
    Reconnect(c);
  }

  void Reconnect(Coordinator* c) {
    sink = std::make_shared<FakeSink>();
    v1::Hello h;
    h.set_worker_id(id);
    h.set_incarnation(incarnation);
    if (assigned) {
      h.set_job_id(assignment.job_id());
      h.set_stage(assignment.stage());
      h.set_dp_index(assignment.dp_index());
      h.set_generation(assignment.generation());
      h.set_last_step(last_step);
    }
    ASSERT_TRUE(c->Connect(h, sink).ok());
  }

  // Handles every queued message; answers step plans with a report.
  // Handles the messages queued now (not the ones its answers cause).
  void Pump(Coordinator* c, size_t max = SIZE_MAX) {
    for (size_t n = std::min(max, sink->inbox.size()); n > 0 && !sink->inbox.empty(); --n) {
      v1::CoordinatorMessage m = sink->inbox.front();
      sink->inbox.pop_front();
      if (m.has_assignment()) {
        assignment = m.assignment();
        assigned = true;
        last_step = assignment.checkpoint_step();
      } else if (m.has_control()) {
        assigned = false;
      } else if (m.has_bootstrap()) {
        bootstrapped = m.bootstrap().backend();
      } else if (m.has_step()) {
        const v1::StepPlanForWorker& p = m.step();
        ASSERT_TRUE(assigned);
        ASSERT_EQ(p.ops().stage(), assignment.stage());
        ASSERT_EQ(p.ops().dp(), assignment.dp_index());
        if (p.step() > last_step) {
          ASSERT_EQ(p.step(), last_step + 1) << id << " was sent a step out of order";
          plans.push_back(p);
          last_step = p.step();
        }
        v1::WorkerMessage out;
        ASSERT_EQ(p.generation(), assignment.generation());
        v1::StepReport* r = out.mutable_step_report();
        if (p.checkpoint_after() && assignment.dp_index() == 0) {
          r->set_checkpoint_saved(true);
          r->set_checkpoint_path(p.checkpoint_path());
        }
        r->set_job_id(p.job_id());
        r->set_step(p.step());
        r->set_dp(assignment.dp_index());
        r->set_stage(assignment.stage());
        r->set_peak_memory_bytes(peak);
        r->set_generation(assignment.generation());
        r->set_step_seconds(0.5);
        int64_t tokens = 0;
        for (const v1::Chunk& ch : p.chunks()) {
          for (const v1::Piece& pc : ch.pieces()) tokens += pc.length();
        }
        if (assignment.stage() + 1 == assignment.pp()) {
          r->set_loss_sum(2.0 * static_cast<double>(tokens));
        }
        for (int i = 0; i < p.ops().ops_size(); ++i) {
          v1::OpTiming* t = r->add_timings();
          t->set_op_index(i);
          t->set_type(p.ops().ops(i).type());
          int64_t n = 0;
          for (const v1::Chunk& ch : p.chunks()) {
            if (ch.id() != p.ops().ops(i).chunk()) continue;
            for (const v1::Piece& pc : ch.pieces()) n += pc.length();
          }
          t->set_tokens(n);
          t->set_attention_pairs(n * n / 2);
          t->set_seconds(1e-4 * n + 1e-8 * n * n / 2);
        }
        ASSERT_TRUE(c->OnMessage(id, out).ok());
      }
    }
  }

  void Heartbeat(Coordinator* c) {
    v1::WorkerMessage m;
    m.mutable_heartbeat()->set_state(v1::WORKER_STATE_IDLE);
    ASSERT_TRUE(c->OnMessage(id, m).ok());
  }
};

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    ASSERT_NE(tmp, nullptr);
    dir_ = std::string(tmp) + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    OpenCoordinator();
  }

  void OpenCoordinator() {
    coordinator_.reset();
    store_.reset();
    store_ = *Store::Open(dir_ + "/db");
    // A coordinator process's metrics start at 0.
    registry_ = std::make_shared<prometheus::Registry>();
    metrics_ = *metrics::CoordinatorMetrics::Create(registry_);
    CoordinatorOptions o;
    o.store = store_.get();
    o.metrics = metrics_.get();
    o.clock = &clock_;
    o.heartbeat_interval = absl::Seconds(1);
    o.heartbeat_timeout = absl::Seconds(5);
    o.dead_worker_retention = dead_worker_retention_;
    absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Create(o);
    ASSERT_TRUE(c.ok()) << c.status();
    coordinator_ = std::move(*c);
  }

  // chunkflow_replans_total{reason}, as a scrape reads it.
  double Replans(const std::string& reason) {
    for (const prometheus::MetricFamily& f : registry_->Collect()) {
      if (f.name != "chunkflow_replans_total") continue;
      for (const prometheus::ClientMetric& m : f.metric) {
        for (const prometheus::ClientMetric::Label& l : m.label) {
          if (l.name == "reason" && l.value == reason) return m.counter.value;
        }
      }
    }
    return -1;
  }

  v1::JobSpec Spec(int32_t dp, int32_t pp, int64_t steps) {
    v1::JobSpec s;
    s.set_name("test");
    s.set_dp(dp);
    s.set_pp(pp);
    s.set_steps(steps);
    s.set_global_batch(6);
    s.mutable_dataset()->set_path("synthetic:lmsys:n=40,seed=3,max=700");
    s.mutable_schedule()->set_chunk_size(256);
    s.mutable_schedule()->set_k(2);
    s.set_seed(11);
    s.set_checkpoint_dir(dir_ + "/ckpt");
    return s;
  }

  // Pumps every worker until nothing moves.
  void PumpAll(std::vector<FakeWorker>& ws) {
    for (int round = 0; round < 1000; ++round) {
      bool any = false;
      for (FakeWorker& w : ws) {
        any = any || !w.sink->inbox.empty();
        w.Pump(coordinator_.get());
      }
      if (!any) return;
    }
    FAIL() << "messages keep flowing";
  }

  // The documents of every committed step, from the step log.
  std::vector<int64_t> LoggedSamples(const std::string& job) {
    std::vector<int64_t> out;
    const int64_t last = *store_->LastCommittedStep(job);
    for (int64_t s = 0; s <= last; ++s) {
      absl::StatusOr<StepRecord> r = store_->GetStep(job, s);
      EXPECT_TRUE(r.ok() && r->commit.has_value()) << "step " << s;
      if (r.ok()) out.insert(out.end(), r->plan.samples().begin(), r->plan.samples().end());
    }
    return out;
  }

  // What the cursor yields for steps [0, steps).
  std::vector<int64_t> CursorSamples(int64_t steps) {
    DatasetCursor cursor = *DatasetCursor::Create(40, 11, 6);
    std::vector<int64_t> out;
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<int64_t> b = *cursor.Batch(s);
      out.insert(out.end(), b.begin(), b.end());
    }
    return out;
  }

  std::string dir_;
  FakeClock clock_;
  absl::Duration dead_worker_retention_ = absl::Hours(1);
  std::unique_ptr<Store> store_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics::CoordinatorMetrics> metrics_;  // outlives coordinator_
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorTest, JobRunsToCompletion_OnceDpTimesPpWorkersRegister) {
  absl::StatusOr<v1::Job> job = coordinator_->SubmitJob(Spec(2, 2, 4));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_PENDING);
  auto watcher = std::make_shared<EventSink>();
  ASSERT_TRUE(coordinator_->WatchJob(job->id(), watcher).ok());

  std::vector<FakeWorker> ws(4);
  for (int i = 0; i < 3; ++i) ws[i].Join(coordinator_.get(), "w" + std::to_string(i), 100 + i);
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_PENDING) << "3 of 4 workers";
  ws[3].Join(coordinator_.get(), "w3", 103);
  EXPECT_EQ(coordinator_->GetJob(job->id())->state(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(coordinator_->KvSet(job->id() + "/g1/world/rank_0", "127.0.0.1:1234").ok());
  EXPECT_EQ(*coordinator_->KvGet(job->id() + "/g1/world/rank_0"), "127.0.0.1:1234");

  PumpAll(ws);
  const v1::Job done = *coordinator_->GetJob(job->id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.DebugString();
  EXPECT_EQ(done.steps_committed(), 4);
  EXPECT_NEAR(done.last_loss(), 2.0 * 1.0, 0.2);  // loss_sum = 2 x tokens, tokens ~ targets
  // Every rank ran every step once, in order; the ranks are distinct.
  std::set<std::pair<int, int>> ranks;
  for (const FakeWorker& w : ws) {
    ASSERT_EQ(w.plans.size(), 4u) << w.id;
    ranks.insert({w.assignment.stage(), w.assignment.dp_index()});
    EXPECT_EQ(w.assignment.comm_timeout_s(), 600);
    EXPECT_FALSE(w.assigned) << "released at the end";
  }
  EXPECT_EQ(ranks.size(), 4u);
  // The step log holds the cursor's batches exactly, and the final checkpoint.
  EXPECT_EQ(LoggedSamples(job->id()), CursorSamples(4));
  absl::StatusOr<std::vector<v1::StepSummary>> log = coordinator_->ListSteps(job->id());
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ(log->size(), 4u);
  std::vector<int64_t> listed;
  for (const v1::StepSummary& s : *log) {
    EXPECT_TRUE(s.committed());
    listed.insert(listed.end(), s.samples().begin(), s.samples().end());
  }
  EXPECT_EQ(listed, CursorSamples(4));
  EXPECT_EQ(coordinator_->ListSteps("job-999").status().code(), absl::StatusCode::kNotFound);
  // The finished job's rendezvous keys are gone; others stay.
  ASSERT_TRUE(coordinator_->KvSet("other/key", "v").ok());
  EXPECT_TRUE(coordinator_->KvGet("other/key").ok());
  EXPECT_EQ(coordinator_->KvGet(job->id() + "/g1/world/rank_0").status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<std::optional<CheckpointRecord>> ckpt = store_->LatestCheckpoint(job->id());
  ASSERT_TRUE(ckpt.ok() && ckpt->has_value());
  EXPECT_EQ((*ckpt)->step, 3);
  // The cost model was refitted from the reported op times.
  EXPECT_EQ(done.fitted_cost_model().stages_size(), 2);
  EXPECT_NEAR(done.fitted_cost_model().stages(0).linear_s_per_token(), 1e-4, 2e-5);
  // The watcher saw each committed step and the end.
  int steps = 0;
  for (const v1::JobEvent& e : watcher->events) steps += e.step_seconds() > 0;
  EXPECT_EQ(steps, 4);
  EXPECT_TRUE(watcher->closed);
  for (const v1::Worker& w : coordinator_->ListWorkers()) {
    EXPECT_EQ(w.state(), v1::WORKER_STATE_IDLE) << w.id();
  }
}

TEST_F(CoordinatorTest, SilentWorker_TimesOut_JobRewindsToCheckpoint_AndResumesWithANewWorker) {
  v1::JobSpec spec = Spec(1, 2, 6);
  spec.set_checkpoint_every(2);
  const std::string id = coordinator_->SubmitJob(spec)->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 2);
  // Run 3 steps (checkpoint after step 1), then worker b stops answering
  // in the middle of step 3.
  v1::Job after_checkpoint;
  for (int s = 0; s < 3; ++s) {
    ws[0].Pump(coordinator_.get());
    ws[1].Pump(coordinator_.get());
    if (s == 1) after_checkpoint = *coordinator_->GetJob(id);
  }
  ASSERT_EQ(coordinator_->GetJob(id)->steps_committed(), 3);
  ASSERT_EQ(after_checkpoint.steps_committed(), 2);
  ASSERT_GT(coordinator_->GetJob(id)->tokens_trained(), after_checkpoint.tokens_trained());
  // The coordinator ticks every half heartbeat interval; a keeps beating.
  auto advance = [&](int half_seconds) {
    for (int i = 0; i < half_seconds; ++i) {
      clock_.Advance(absl::Milliseconds(500));
      ws[0].Heartbeat(coordinator_.get());
      coordinator_->Tick();
    }
  };
  advance(6);
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_RUNNING) << "3 s < 5 s timeout";
  advance(6);
  v1::Job job = *coordinator_->GetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(job.steps_committed(), 2) << "back to the checkpoint after step 1";
  // Step 2 is forgotten, and so are its tokens and loss (it is trained again).
  EXPECT_EQ(job.tokens_trained(), after_checkpoint.tokens_trained());
  EXPECT_EQ(job.last_loss(), after_checkpoint.last_loss());
  EXPECT_TRUE(absl::StrContains(job.events(job.events_size() - 1), "worker b (stage 1, dp 0) lost"))
      << job.events(job.events_size() - 1);
  ASSERT_TRUE(ws[1].sink->closed.has_value());
  // a was told to abort; a new worker takes b's place and both load the checkpoint.
  ws[0].Pump(coordinator_.get());
  EXPECT_FALSE(ws[0].assigned);
  FakeWorker c;
  c.Join(coordinator_.get(), "c", 3);
  ws.push_back(c);
  ASSERT_TRUE(ws[0].sink->inbox.front().has_assignment());
  EXPECT_EQ(ws[0].sink->inbox.front().assignment().checkpoint_step(), 1);
  EXPECT_TRUE(absl::StrContains(ws[0].sink->inbox.front().assignment().checkpoint_path(),
                                "step-000001"));
  EXPECT_EQ(ws[0].sink->inbox.front().assignment().generation(), 2);
  ws[1].sink->inbox.clear();
  std::vector<FakeWorker> live = {ws[0], ws[2]};
  PumpAll(live);
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
  // Steps 2.. were planned again: the log still holds each batch once.
  EXPECT_EQ(LoggedSamples(id), CursorSamples(6));
}

TEST_F(CoordinatorTest, CoordinatorRestart_ResendsThePlannedStep_NoSampleTwice) {
  const std::string id = coordinator_->SubmitJob(Spec(2, 1, 5))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 2);
  ws[0].Pump(coordinator_.get());  // a ran step 0, b has not answered yet
  ASSERT_EQ(coordinator_->GetJob(id)->steps_committed(), 0);
  ws[1].Pump(coordinator_.get(), 2);  // b took its assignment and bootstrap,
  ASSERT_TRUE(ws[1].sink->inbox.front().has_step());
  ws[1].sink->inbox.clear();       // ...and the coordinator dies before b's plan arrives
  OpenCoordinator();               // restart from RocksDB
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  // b does not know step 0 yet: it ran nothing. Both reconnect with their ranks.
  ws[0].Reconnect(coordinator_.get());
  EXPECT_TRUE(ws[0].sink->inbox.empty()) << "waits for every rank";
  ws[1].Reconnect(coordinator_.get());
  PumpAll(ws);
  v1::Job job = *coordinator_->GetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED) << job.DebugString();
  EXPECT_EQ(ws[0].plans.size(), 5u) << "step 0 was not run twice";
  EXPECT_EQ(ws[1].plans.size(), 5u);
  EXPECT_EQ(LoggedSamples(id), CursorSamples(5));
  const std::vector<int64_t> s = LoggedSamples(id);
  EXPECT_EQ(std::set<int64_t>(s.begin(), s.end()).size(), s.size()) << "a sample twice";
}

// A restarted coordinator keeps the cost model it fitted: the step after
// the restart refits from it, not from the CPU-sized prior. (A step of one
// document has too few forwards to refit a stage on its own, so the model
// comes through unchanged.)
TEST_F(CoordinatorTest, CoordinatorRestart_KeepsTheFittedCostModel) {
  const int64_t steps = 8;
  v1::JobSpec spec = Spec(1, 1, steps);
  spec.set_global_batch(1);
  const std::string id = coordinator_->SubmitJob(spec)->id();
  std::vector<FakeWorker> ws(1);
  ws[0].Join(coordinator_.get(), "a", 1);
  for (int round = 0; round < 100 && coordinator_->GetJob(id)->steps_committed() < steps - 1;
       ++round) {
    ws[0].Pump(coordinator_.get());
  }
  const v1::Job before = *coordinator_->GetJob(id);
  ASSERT_EQ(before.steps_committed(), steps - 1);
  ASSERT_EQ(before.fitted_cost_model().stages_size(), 1);
  // Fitted from the fake workers' times (1e-4 s a token + 1e-8 s a pair,
  // backwards as forwards): a 256-token chunk within 10%.
  const v1::StageCost& c = before.fitted_cost_model().stages(0);
  const double chunk = c.linear_s_per_token() * 256 + c.quadratic_s_per_pair() * 256 * 256 / 2 +
                       c.fixed_s();
  ASSERT_NEAR(chunk, 1e-4 * 256 + 1e-8 * 256 * 256 / 2, 0.1 * chunk);
  ASSERT_NEAR(before.fitted_cost_model().backward_ratio(), 1.0, 0.1);
  // Refits that changed the model count as replans; a refit to the same
  // model (a stage without enough samples) does not.
  EXPECT_GE(Replans("cost_model"), 1);
  EXPECT_LT(Replans("cost_model"), steps - 1);
  OpenCoordinator();  // restart from RocksDB
  ws[0].Reconnect(coordinator_.get());
  PumpAll(ws);
  const v1::Job done = *coordinator_->GetJob(id);
  ASSERT_EQ(done.state(), v1::JOB_STATE_COMPLETED) << done.DebugString();
  EXPECT_EQ(done.fitted_cost_model().DebugString(), before.fitted_cost_model().DebugString());
  EXPECT_EQ(Replans("cost_model"), 0) << "the step after the restart left the model as it was";
}

// A dataset that changed size while the coordinator was down would reorder
// the rest of the epoch: the restarted coordinator fails the job, naming
// the dataset and both counts, instead of training documents twice.
TEST_F(CoordinatorTest, CoordinatorRestart_DatasetChangedSize_FailsTheJob) {
  const std::string data = dir_ + "/docs.jsonl";
  std::filesystem::create_directories(dir_);
  auto write_docs = [&](int n) {
    std::ofstream f(data);
    for (int i = 0; i < n; ++i) f << "{\"input_ids\": [" << 1 + i % 7 << ", 2, 3, 4, 5]}\n";
  };
  write_docs(12);
  v1::JobSpec spec = Spec(1, 1, 6);
  spec.set_global_batch(2);
  spec.mutable_dataset()->set_path(data);
  const std::string id = coordinator_->SubmitJob(spec)->id();
  std::vector<FakeWorker> ws(1);
  ws[0].Join(coordinator_.get(), "a", 1);
  for (int round = 0; round < 50 && coordinator_->GetJob(id)->steps_committed() < 2; ++round) {
    ws[0].Pump(coordinator_.get());
  }
  ASSERT_EQ(coordinator_->GetJob(id)->steps_committed(), 2);
  // Unchanged: the job goes on after a restart.
  OpenCoordinator();
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  write_docs(15);
  OpenCoordinator();
  const v1::Job job = *coordinator_->GetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  const std::string why = job.events(job.events_size() - 1);
  EXPECT_TRUE(absl::StrContains(why, "has 15 documents")) << why;
  EXPECT_TRUE(absl::StrContains(why, "when it had 12")) << why;
  EXPECT_EQ(job.steps_committed(), 2) << "the committed steps are kept";
}

// The checkpoint of the last step is recorded even when the coordinator
// restarts between the workers saving it and reporting: the reports (kept by
// the workers and resent) say so.
TEST_F(CoordinatorTest, CoordinatorRestart_DuringACheckpointStep_RecordsTheCheckpoint) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 1))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 2);
  ws[0].Pump(coordinator_.get());  // stage 0 saved and reported; stage 1 ran, report lost:
  ws[1].Pump(coordinator_.get(), 2);
  ws[1].last_step = 0;
  ws[1].plans.push_back(ws[1].sink->inbox.front().step());
  ws[1].sink->inbox.clear();
  OpenCoordinator();
  ws[0].Reconnect(coordinator_.get());
  ws[1].Reconnect(coordinator_.get());
  PumpAll(ws);  // the resent plan is answered with the kept reports
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
  absl::StatusOr<std::optional<CheckpointRecord>> ckpt = store_->LatestCheckpoint(id);
  ASSERT_TRUE(ckpt.ok() && ckpt->has_value());
  EXPECT_EQ((*ckpt)->step, 0);
  EXPECT_EQ(ws[0].plans.size(), 1u) << "step 0 ran once";
}

// A worker that comes back holding nothing (its process kept the incarnation
// but lost the rank's state) resets the job, and its new stream stays open.
TEST_F(CoordinatorTest, ReconnectWithoutRankState_ResetsTheJob_KeepsTheStream) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 3))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 2);
  ws[1].assigned = false;  // it forgot
  ws[1].Reconnect(coordinator_.get());
  EXPECT_FALSE(ws[1].sink->closed.has_value());
  v1::Job job = *coordinator_->GetJob(id);
  std::string all;
  for (const std::string& e : job.events()) all += e + "\n";
  EXPECT_TRUE(absl::StrContains(all, "reconnected without its rank's state")) << all;
  EXPECT_EQ(job.generation(), 2) << "reassigned to the same two workers";
  ws[0].sink->inbox.clear();
  ws[1].sink->inbox.clear();
  // The stale plan of generation 1 would be ignored by the workers; the new
  // assignment arrives after the abort, in order.
  FakeWorker& b = ws[1];
  (void)b;
}

// A coordinator that stalls (here: no Tick for 8 s) does not blame workers
// whose heartbeats queued behind it.
TEST_F(CoordinatorTest, CoordinatorStall_IsNotAWorkerTimeout) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 3))->id();
  FakeWorker w;
  w.Join(coordinator_.get(), "a", 1);
  coordinator_->Tick();
  clock_.Advance(absl::Seconds(8));
  coordinator_->Tick();
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  // A real silence still counts.
  for (int i = 0; i < 12; ++i) {
    clock_.Advance(absl::Milliseconds(500));
    coordinator_->Tick();
  }
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_PENDING);
}

TEST_F(CoordinatorTest, RestartedWorker_NewIncarnation_ResetsTheJob) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 3))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 2);
  ws[0].Pump(coordinator_.get());
  FakeWorker b2;
  b2.Join(coordinator_.get(), "b", 99);  // b's process restarted
  v1::Job job = *coordinator_->GetJob(id);
  EXPECT_TRUE(absl::StrContains(job.events(job.events_size() - 2), "restarted (new incarnation)"))
      << job.DebugString();
  std::vector<FakeWorker> live = {ws[0], b2};
  PumpAll(live);
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
}

TEST_F(CoordinatorTest, MemoryOverBudget_LowersKThenChunkSize_WithEvents) {
  v1::JobSpec spec = Spec(1, 1, 4);
  spec.set_memory_budget_bytes(500);
  spec.mutable_schedule()->set_k(2);
  const std::string id = coordinator_->SubmitJob(spec)->id();
  std::vector<FakeWorker> ws(1);
  ws[0].peak = 800;
  ws[0].Join(coordinator_.get(), "a", 1);
  PumpAll(ws);
  v1::Job job = *coordinator_->GetJob(id);
  EXPECT_EQ(job.current_schedule().k(), 1);
  EXPECT_EQ(job.current_schedule().chunk_size(), 64);  // 256 -> 128 -> 64
  std::string all;
  for (const std::string& e : job.events()) all += e + "\n";
  EXPECT_TRUE(absl::StrContains(all, "over the budget 0.0 MiB: K 2 -> 1 from step 1")) << all;
  EXPECT_TRUE(absl::StrContains(all, "ChunkSize 256 -> 128 from step 2")) << all;
  EXPECT_TRUE(absl::StrContains(all, "nothing left to lower")) << all;
  // The plans followed the new parameters.
  EXPECT_EQ(ws[0].plans[0].params().k(), 2);
  EXPECT_EQ(ws[0].plans[1].params().k(), 1);
  EXPECT_EQ(ws[0].plans[3].params().chunk_size(), 64);
}

// A job's ranks share one transport: with a Gloo and an NCCL worker idle, a
// 2-rank job waits; a second NCCL worker completes a pair, which gets the
// job and an NCCL bootstrap. A worker that says nothing counts as Gloo.
TEST_F(CoordinatorTest, MixedTransports_JobGoesToWorkersOfOne) {
  const std::string id = coordinator_->SubmitJob(Spec(2, 1, 1))->id();
  std::vector<FakeWorker> ws(3);
  ws[0].Join(coordinator_.get(), "gloo-a", 1);
  ws[1].links = v1::CommBootstrap::BACKEND_NCCL;
  ws[1].Join(coordinator_.get(), "nccl-b", 2);
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_PENDING) << "one of each: no pair";
  EXPECT_TRUE(ws[0].sink->inbox.empty());
  EXPECT_TRUE(ws[1].sink->inbox.empty());
  ws[2].links = v1::CommBootstrap::BACKEND_NCCL;
  ws[2].Join(coordinator_.get(), "nccl-c", 3);
  PumpAll(ws);
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
  EXPECT_TRUE(ws[0].plans.empty()) << "the Gloo worker got no rank";
  for (int i : {1, 2}) {
    EXPECT_EQ(ws[i].bootstrapped, v1::CommBootstrap::BACKEND_NCCL) << ws[i].id;
    EXPECT_EQ(ws[i].plans.size(), 1u) << ws[i].id;
  }
  for (const v1::Worker& w : coordinator_->ListWorkers()) {
    EXPECT_EQ(w.links(), w.name() == "gloo-a" ? v1::CommBootstrap::BACKEND_GLOO
                                              : v1::CommBootstrap::BACKEND_NCCL)
        << w.name();
  }
}

// K beyond the step's longest chain kept nothing more: the replan halves
// what K did (K 64 -> half the longest chain, not 32), or lowers ChunkSize
// when the step had no chain at all.
TEST_F(CoordinatorTest, MemoryOverBudget_KPastTheLongestChain_HalvesWhatKDid) {
  v1::JobSpec spec = Spec(1, 1, 2);
  spec.set_memory_budget_bytes(500);
  spec.mutable_schedule()->set_k(64);
  const std::string id = coordinator_->SubmitJob(spec)->id();
  std::vector<FakeWorker> ws(1);
  ws[0].peak = 800;
  ws[0].Join(coordinator_.get(), "a", 1);
  PumpAll(ws);
  ASSERT_GE(ws[0].plans.size(), 2u);
  int32_t longest = 1;
  for (const v1::Chunk& c : ws[0].plans[0].chunks()) longest = std::max(longest, c.chain_length());
  ASSERT_LT(longest, 32) << "the test needs chains shorter than K / 2";
  const v1::StepPlanForWorker& next = ws[0].plans[1];
  if (longest > 1) {
    EXPECT_EQ(next.params().k(), longest / 2);
    EXPECT_EQ(next.params().chunk_size(), 256);
  } else {
    EXPECT_EQ(next.params().k(), 64);
    EXPECT_EQ(next.params().chunk_size(), 128);
  }
}

TEST_F(CoordinatorTest, WorkerError_ResetsThenFailsAfterRepeatedErrors) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 3))->id();
  FakeWorker w;
  w.Join(coordinator_.get(), "a", 1);
  v1::WorkerMessage stale;
  stale.mutable_error()->set_job_id(id);
  stale.mutable_error()->set_generation(0);  // an older assignment's error
  ASSERT_TRUE(coordinator_->OnMessage(w.id, stale).ok());
  EXPECT_EQ(coordinator_->GetJob(id)->generation(), 1) << "ignored: no reset";
  for (int i = 0; i < Coordinator::kMaxConsecutiveResets; ++i) {
    v1::WorkerMessage m;
    m.mutable_error()->set_job_id(id);
    m.mutable_error()->set_message("tokens out of the vocabulary");
    m.mutable_error()->set_generation(coordinator_->GetJob(id)->generation());
    ASSERT_TRUE(coordinator_->OnMessage(w.id, m).ok());
  }
  v1::Job job = *coordinator_->GetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.error(), "tokens out of the vocabulary")) << job.error();
}

TEST_F(CoordinatorTest, BadAdminInput_NamesTheField) {
  struct Case {
    std::function<void(v1::JobSpec*)> edit;
    absl::StatusCode code;
    std::string text;
  };
  const std::vector<Case> cases = {
      {[](v1::JobSpec* s) { s->mutable_schedule()->set_chunk_size(-1); },
       absl::StatusCode::kInvalidArgument, "spec.schedule.chunk_size"},
      {[](v1::JobSpec* s) { s->mutable_schedule()->set_k(-2); },
       absl::StatusCode::kInvalidArgument, "spec.schedule.k"},
      {[](v1::JobSpec* s) { s->set_dp(-1); }, absl::StatusCode::kInvalidArgument, "spec.dp"},
      {[](v1::JobSpec* s) { s->set_pp(-1); }, absl::StatusCode::kInvalidArgument, "spec.pp"},
      {[](v1::JobSpec* s) { s->set_pp(3); }, absl::StatusCode::kInvalidArgument,
       "spec.pp is 3 but the model has 2 layers"},
      {[](v1::JobSpec* s) { s->mutable_dataset()->set_path("/nonexistent/data"); },
       absl::StatusCode::kNotFound, "spec.dataset.path"},
      {[](v1::JobSpec* s) { s->mutable_model()->set_path("/nonexistent/model"); },
       absl::StatusCode::kNotFound, "spec.model.path"},
      // A folder with config.json but no weights: the workers would each
      // train from random weights.
      {[this](v1::JobSpec* s) {
         const std::string dir = dir_ + "/config_only";
         std::filesystem::create_directories(dir);
         std::ofstream(dir + "/config.json") << engine::ToHfConfigJson(engine::TinyQwen2Config());
         s->mutable_model()->set_path(dir);
       },
       absl::StatusCode::kNotFound, "holds no weights the workers could load"},
      {[](v1::JobSpec* s) { s->set_global_batch(41); }, absl::StatusCode::kInvalidArgument,
       "spec.global_batch is 41"},
      {[](v1::JobSpec* s) { s->set_steps(0); }, absl::StatusCode::kInvalidArgument, "spec.steps"},
      {[](v1::JobSpec* s) { s->mutable_optimizer()->set_name("lion"); },
       absl::StatusCode::kInvalidArgument, "spec.optimizer.name"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = Spec(1, 1, 2);
    c.edit(&spec);
    absl::StatusOr<v1::Job> r = coordinator_->SubmitJob(spec);
    EXPECT_EQ(r.status().code(), c.code) << c.text << ": " << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.text)) << r.status();
  }
  EXPECT_TRUE(coordinator_->ListJobs()->empty()) << "nothing was created";
  EXPECT_EQ(coordinator_->GetJob("job-424242").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->CancelJob("nope", "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->DrainWorker("nope").status().code(), absl::StatusCode::kNotFound);
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 2))->id();
  v1::ScheduleParams bad;
  bad.set_k(-1);
  EXPECT_TRUE(absl::StrContains(coordinator_->UpdateSchedule(id, bad).status().message(),
                                "schedule.k"));
  ASSERT_TRUE(coordinator_->CancelJob(id, "").ok());
  EXPECT_EQ(coordinator_->CancelJob(id, "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  v1::ScheduleParams good;
  good.set_k(3);
  EXPECT_EQ(coordinator_->UpdateSchedule(id, good).status().code(),
            absl::StatusCode::kFailedPrecondition);
  v1::RegisterRequest r;
  r.set_incarnation(1);
  EXPECT_TRUE(absl::StrContains(coordinator_->Register(r).status().message(), "device.kind"));
  r.mutable_device()->set_kind(v1::DEVICE_KIND_CPU);
  r.set_worker_name("bad name");
  EXPECT_EQ(coordinator_->Register(r).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Hello h;
  h.set_worker_id("ghost");
  EXPECT_EQ(coordinator_->Connect(h, std::make_shared<FakeSink>()).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, UpdateSchedule_AppliesFromTheNextStep) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 3))->id();
  FakeWorker w;
  w.Join(coordinator_.get(), "a", 1);
  v1::ScheduleParams p;
  p.set_chunk_size(128);
  ASSERT_TRUE(coordinator_->UpdateSchedule(id, p).ok());
  std::vector<FakeWorker> ws = {w};
  PumpAll(ws);
  ASSERT_EQ(ws[0].plans.size(), 3u);
  EXPECT_EQ(ws[0].plans[0].params().chunk_size(), 256) << "step 0 was already planned";
  EXPECT_EQ(ws[0].plans[1].params().chunk_size(), 128);
}

// chunkflowctl checkpoint: one checkpoint after the next planned step, on
// top of the job's own schedule (here only the last step), then none again.
TEST_F(CoordinatorTest, CheckpointJob_SavesAfterTheNextPlannedStepOnly) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 6))->id();
  auto sink = std::make_shared<EventSink>();
  ASSERT_TRUE(coordinator_->WatchJob(id, sink).ok());
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 1);  // step 0 is planned and sent now
  absl::StatusOr<v1::Job> asked = coordinator_->CheckpointJob(id);
  ASSERT_TRUE(asked.ok()) << asked.status();
  EXPECT_TRUE(asked->checkpoint_requested());
  EXPECT_TRUE(absl::StrContains(asked->events(asked->events_size() - 1),
                                "checkpoint requested by an admin: after step 1"))
      << asked->events(asked->events_size() - 1);
  ASSERT_TRUE(coordinator_->CheckpointJob(id).ok()) << "asking twice is asking once";
  PumpAll(ws);
  for (const FakeWorker& w : ws) {
    ASSERT_EQ(w.plans.size(), 6u);
    for (int s = 0; s < 6; ++s) {
      EXPECT_EQ(w.plans[s].checkpoint_after(), s == 1 || s == 5) << "step " << s;
    }
    EXPECT_TRUE(absl::StrContains(w.plans[1].checkpoint_path(), "step-000001"))
        << w.plans[1].checkpoint_path();
  }
  absl::StatusOr<v1::Job> done = coordinator_->GetJob(id);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::JOB_STATE_COMPLETED);
  EXPECT_FALSE(done->checkpoint_requested());
  std::vector<std::pair<int64_t, std::string>> saved;  // (step, path) of checkpoint events
  for (const v1::JobEvent& e : sink->events) {
    if (!e.checkpoint_path().empty()) saved.emplace_back(e.step(), e.checkpoint_path());
  }
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[0].first, 1);
  EXPECT_TRUE(absl::StrContains(saved[0].second, "step-000001")) << saved[0].second;
  EXPECT_EQ(saved[1].first, 5);
}

// A request made before any step is planned applies to step 0, and it is
// kept with the job: a coordinator restarted before the step still saves it.
TEST_F(CoordinatorTest, CheckpointJob_SurvivesACoordinatorRestart) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 3))->id();
  absl::StatusOr<v1::Job> asked = coordinator_->CheckpointJob(id);
  ASSERT_TRUE(asked.ok()) << asked.status();
  EXPECT_TRUE(absl::StrContains(asked->events(asked->events_size() - 1), "after step 0"));
  OpenCoordinator();
  ASSERT_TRUE(coordinator_->GetJob(id)->checkpoint_requested());
  std::vector<FakeWorker> ws(1);
  ws[0].Join(coordinator_.get(), "a", 1);
  PumpAll(ws);
  ASSERT_EQ(ws[0].plans.size(), 3u);
  EXPECT_TRUE(ws[0].plans[0].checkpoint_after());
  EXPECT_FALSE(ws[0].plans[1].checkpoint_after());
  EXPECT_TRUE(ws[0].plans[2].checkpoint_after()) << "the last step, as always";
}

TEST_F(CoordinatorTest, CheckpointJob_Errors) {
  EXPECT_EQ(coordinator_->CheckpointJob("job-999999").status().code(),
            absl::StatusCode::kNotFound);
  v1::JobSpec no_dir = Spec(1, 1, 2);
  no_dir.clear_checkpoint_dir();
  const std::string id = coordinator_->SubmitJob(no_dir)->id();
  absl::Status s = coordinator_->CheckpointJob(id).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "--checkpoint_dir")) << s;
  ASSERT_TRUE(coordinator_->CancelJob(id, "test").ok());
  s = coordinator_->CheckpointJob(id).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.message(), "already")) << s;
}

// A rank that reconnects mid-step gets the step as the others did: a
// checkpoint requested while it was in flight waits for the next step.
TEST_F(CoordinatorTest, CheckpointJob_ARankResentTheStepGetsItUnchanged) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 4))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 1);  // step 0 sent to both
  ASSERT_TRUE(coordinator_->CheckpointJob(id).ok());
  // b reads its assignment, then its stream breaks before it reads step 0.
  while (!ws[1].sink->inbox.empty() && !ws[1].sink->inbox.front().has_step()) {
    ws[1].Pump(coordinator_.get(), 1);
  }
  ASSERT_FALSE(ws[1].sink->inbox.empty());
  ws[1].Reconnect(coordinator_.get());
  PumpAll(ws);
  for (const FakeWorker& w : ws) {
    ASSERT_EQ(w.plans.size(), 4u);
    for (int s = 0; s < 4; ++s) {
      EXPECT_EQ(w.plans[s].checkpoint_after(), s == 1 || s == 3) << w.id << " step " << s;
    }
  }
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
}

// The coordinator stopped after the last step committed but before the job's
// end was recorded: on restart the job is finished at once, not reset to
// wait for workers and trained again.
TEST_F(CoordinatorTest, CoordinatorRestart_AllStepsCommittedButRunning_Completes) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 2))->id();
  std::vector<FakeWorker> ws(1);
  ws[0].Join(coordinator_.get(), "a", 1);
  PumpAll(ws);
  v1::Job j = *coordinator_->GetJob(id);
  ASSERT_EQ(j.state(), v1::JOB_STATE_COMPLETED);
  j.set_state(v1::JOB_STATE_RUNNING);  // the record as a stop in between left it
  ASSERT_TRUE(store_->PutJob(j).ok());
  OpenCoordinator();  // no worker reconnects
  absl::StatusOr<v1::Job> after = coordinator_->GetJob(id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->state(), v1::JOB_STATE_COMPLETED) << after->events(after->events_size() - 1);
  EXPECT_EQ(*store_->LastCommittedStep(id), 1) << "no step forgotten";
}

// A drained worker stays drained when the coordinator restarts and the
// worker registers again: it gets no new job.
TEST_F(CoordinatorTest, DrainWorker_OutlivesACoordinatorRestart) {
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 1);
  ASSERT_TRUE(coordinator_->DrainWorker(ws[0].id).ok());
  OpenCoordinator();
  ws[0].Join(coordinator_.get(), "a", 2);  // the daemon registers again on reconnect
  ws[1].Join(coordinator_.get(), "b", 2);
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 1))->id();
  PumpAll(ws);
  EXPECT_TRUE(ws[0].plans.empty()) << "the drained worker got a job";
  EXPECT_EQ(ws[1].plans.size(), 1u);
  for (const v1::Worker& w : coordinator_->ListWorkers()) {
    if (w.id() == ws[0].id) EXPECT_EQ(w.state(), v1::WORKER_STATE_DRAINING);
  }
  EXPECT_EQ(coordinator_->GetJob(id)->state(), v1::JOB_STATE_COMPLETED);
}

// The job record's totals lag the step log after a stop between a commit
// and the record: a restart rebuilds them from the log.
TEST_F(CoordinatorTest, CoordinatorRestart_RebuildsTheTotalsFromTheStepLog) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 1, 6))->id();
  std::vector<FakeWorker> ws(1);
  ws[0].Join(coordinator_.get(), "a", 1);
  while (ws[0].plans.size() < 3) ws[0].Pump(coordinator_.get(), 1);
  const v1::Job good = *coordinator_->GetJob(id);
  ASSERT_EQ(good.steps_committed(), 3);
  ASSERT_GT(good.tokens_trained(), 0);
  v1::Job stale = good;
  stale.set_steps_committed(2);
  stale.set_tokens_trained(good.tokens_trained() / 2);
  stale.set_last_loss(0);
  ASSERT_TRUE(store_->PutJob(stale).ok());
  OpenCoordinator();
  const v1::Job after = *coordinator_->GetJob(id);
  EXPECT_EQ(after.steps_committed(), 3);
  EXPECT_EQ(after.tokens_trained(), good.tokens_trained());
  EXPECT_DOUBLE_EQ(after.last_loss(), good.last_loss());
}

// A report of the step in flight that names another rank than the worker's
// is a worker bug: an error naming both (the stream is closed), not a report
// dropped quietly while the job waits for it.
TEST_F(CoordinatorTest, StepReportForAnotherRank_InvalidArgumentNamingBoth) {
  const std::string id = coordinator_->SubmitJob(Spec(1, 2, 2))->id();
  std::vector<FakeWorker> ws(2);
  ws[0].Join(coordinator_.get(), "a", 1);
  ws[1].Join(coordinator_.get(), "b", 1);
  while (!ws[0].sink->inbox.empty() && !ws[0].sink->inbox.front().has_step()) {
    ws[0].Pump(coordinator_.get(), 1);
  }
  ASSERT_FALSE(ws[0].sink->inbox.empty());
  const v1::StepPlanForWorker plan = ws[0].sink->inbox.front().step();
  v1::WorkerMessage m;
  v1::StepReport* r = m.mutable_step_report();
  r->set_job_id(id);
  r->set_step(plan.step());
  r->set_generation(ws[0].assignment.generation());
  r->set_dp(0);
  r->set_stage(1 - ws[0].assignment.stage());
  absl::Status s = coordinator_->OnMessage(ws[0].id, m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("as stage ", r->stage()))) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("holds stage ", ws[0].assignment.stage())))
      << s;
  v1::ScheduleParams bad;
  bad.set_balance(static_cast<v1::BalancePolicy>(77));
  s = coordinator_->UpdateSchedule(id, bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "got 77")) << s;
}

// A lost worker that holds no rank is forgotten after the retention: its
// record goes from the coordinator and the store (replaced pods and
// restarted unnamed workers would otherwise pile up as DEAD records).
TEST_F(CoordinatorTest, DeadWorker_ForgottenAfterTheRetention) {
  dead_worker_retention_ = absl::Seconds(30);
  OpenCoordinator();
  FakeWorker a, b;
  a.Join(coordinator_.get(), "a", 1);
  b.Join(coordinator_.get(), "b", 1);
  auto states = [&] {
    std::map<std::string, v1::WorkerState> m;
    for (const v1::Worker& w : coordinator_->ListWorkers()) m[w.name()] = w.state();
    return m;
  };
  for (int i = 0; i < 20; ++i) {  // 10 s: a is lost (timeout 5 s), b heartbeats
    clock_.Advance(absl::Milliseconds(500));
    b.Heartbeat(coordinator_.get());
    coordinator_->Tick();
  }
  ASSERT_EQ(states()["a"], v1::WORKER_STATE_DEAD);
  for (int i = 0; i < 30; ++i) {  // 15 s more: 25 s since a was heard
    clock_.Advance(absl::Milliseconds(500));
    b.Heartbeat(coordinator_.get());
    coordinator_->Tick();
  }
  EXPECT_EQ(states().count("a"), 1u) << "inside the retention";
  for (int i = 0; i < 20; ++i) {  // 35 s
    clock_.Advance(absl::Milliseconds(500));
    b.Heartbeat(coordinator_.get());
    coordinator_->Tick();
  }
  EXPECT_EQ(states().count("a"), 0u) << "past the retention";
  EXPECT_EQ(states()["b"], v1::WORKER_STATE_IDLE);
  OpenCoordinator();
  EXPECT_EQ(states().count("a"), 0u) << "deleted from the store too";
  EXPECT_EQ(states().count("b"), 1u);
}

}  // namespace
}  // namespace chunkflow::coordinator
