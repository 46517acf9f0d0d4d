#include "coordinator/store/store.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace chunkflow::coordinator {
namespace {

using ::chunkflow::v1::StepPlan;
using ::testing::ElementsAre;

MATCHER_P2(StatusIs, code, substr, "") {
  const absl::Status& s = arg;
  *result_listener << "status " << s.ToString();
  return s.code() == code && absl::StrContains(s.message(), substr);
}

StepPlan MakePlan(const std::string& job, int64_t step, std::vector<int64_t> samples) {
  StepPlan plan;
  plan.set_job_id(job);
  plan.set_step(step);
  plan.mutable_params()->set_chunk_size(4096);
  plan.mutable_params()->set_k(2);
  plan.set_dp(1);
  plan.set_pp(2);
  chunkflow::v1::Chunk* chunk = plan.add_chunks();
  chunk->set_id(0);
  chunkflow::v1::Piece* piece = chunk->add_pieces();
  piece->set_seq(samples.empty() ? 0 : samples[0]);
  piece->set_length(100);
  chunkflow::v1::StageOps* ops = plan.add_stage_ops();
  ops->set_stage(1);
  ops->add_ops()->set_type(chunkflow::v1::OP_TYPE_FORWARD);
  for (int64_t s : samples) plan.add_samples(s);
  plan.set_loss_tokens(100 * static_cast<int64_t>(samples.size()));
  return plan;
}

chunkflow::v1::Job MakeJob(const std::string& id, const std::string& name) {
  chunkflow::v1::Job job;
  job.set_id(id);
  job.mutable_spec()->set_name(name);
  job.mutable_spec()->set_global_batch(8);
  job.set_state(chunkflow::v1::JOB_STATE_RUNNING);
  job.add_events("submitted");
  return job;
}

// Writes raw key/values into the (closed) store at `dir`, bypassing Store.
void RawPut(const std::string& dir, const std::string& key, const std::string& value) {
  rocksdb::DB* raw = nullptr;
  rocksdb::Options options;
  options.create_if_missing = true;
  ASSERT_TRUE(rocksdb::DB::Open(options, dir, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
  ASSERT_TRUE(db->Close().ok());
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    ASSERT_NE(tmp, nullptr) << "run under bazel test (TEST_TMPDIR unset)";
    dir_ = std::string(tmp) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "/db";
    std::filesystem::remove_all(dir_);
    Reopen();
  }

  // Closes the store (as a crash would: nothing is flushed on purpose) and opens it again.
  void Reopen() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
};

// ===========================================================================
// Open
// ===========================================================================

TEST_F(StoreTest, Open_MissingNestedDirectory_CreatesIt) {
  std::string nested = dir_ + "/a/b/c";
  absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(nested);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(std::filesystem::exists(nested + "/CURRENT"));
}

TEST_F(StoreTest, Open_SameDirectoryTwiceInProcess_FailedPrecondition) {
  absl::StatusOr<std::unique_ptr<Store>> second = Store::Open(dir_);
  EXPECT_THAT(second.status(), StatusIs(absl::StatusCode::kFailedPrecondition, "is locked"));
  EXPECT_THAT(second.status(), StatusIs(absl::StatusCode::kFailedPrecondition, dir_));
}

// The child is this test binary run with --hold_lock=<dir> (see main below).
TEST_F(StoreTest, Open_HeldByAnotherProcess_FailedPrecondition) {
  store_.reset();  // release our own lock so the child can take it
  int to_child[2], from_child[2];
  ASSERT_EQ(pipe2(to_child, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(from_child, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
  posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string flag = "--hold_lock=" + dir_;
  char* argv[] = {exe.data(), flag.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(to_child[0]);
  close(from_child[1]);

  char buf[16] = {};
  ssize_t n = read(from_child[0], buf, sizeof(buf) - 1);  // blocks until the child holds the lock
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "ready\n");
  absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(dir_);
  EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kFailedPrecondition, "another process"));

  close(to_child[1]);  // EOF: the child closes its store and exits
  close(from_child[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "child status " << wstatus;
  Reopen();  // the lock is free again
}

TEST_F(StoreTest, Open_NewerFormatVersion_FailedPreconditionNamingBoth) {
  store_.reset();
  RawPut(dir_, "meta/format_version", "7");
  absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(dir_);
  EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kFailedPrecondition, "format version 7"));
  EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kFailedPrecondition, "format version 1"));
}

TEST_F(StoreTest, Open_ForeignDatabase_FailedPrecondition) {
  store_.reset();
  std::string foreign = dir_ + "-foreign";
  std::filesystem::remove_all(foreign);
  RawPut(foreign, "some/other/key", "x");
  EXPECT_THAT(Store::Open(foreign).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "not a ChunkFlow coordinator store"));
}

TEST_F(StoreTest, Open_CorruptCurrentFile_DataLoss) {
  store_.reset();
  std::ofstream(dir_ + "/CURRENT", std::ios::trunc) << "garbage";
  EXPECT_THAT(Store::Open(dir_).status(), StatusIs(absl::StatusCode::kDataLoss, dir_));
}

TEST_F(StoreTest, Open_EmptyDir_InvalidArgument) {
  EXPECT_THAT(Store::Open("").status(), StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
}

// ===========================================================================
// Jobs and counters
// ===========================================================================

TEST_F(StoreTest, PutJob_GetJob_RoundTrips) {
  chunkflow::v1::Job job = MakeJob("job-000001", "tune");
  ASSERT_TRUE(store_->PutJob(job).ok());
  absl::StatusOr<chunkflow::v1::Job> got = store_->GetJob("job-000001");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), job.SerializeAsString());
  job.set_steps_committed(3);  // replace
  ASSERT_TRUE(store_->PutJob(job).ok());
  EXPECT_EQ(store_->GetJob("job-000001")->steps_committed(), 3);
}

TEST_F(StoreTest, GetJob_Missing_NotFoundNamingId) {
  EXPECT_THAT(store_->GetJob("job-000042").status(),
              StatusIs(absl::StatusCode::kNotFound, "job-000042"));
}

TEST_F(StoreTest, PutJob_BadId_InvalidArgument) {
  EXPECT_THAT(store_->PutJob(MakeJob("", "x")), StatusIs(absl::StatusCode::kInvalidArgument, ""));
  EXPECT_THAT(store_->PutJob(MakeJob("a/b", "x")),
              StatusIs(absl::StatusCode::kInvalidArgument, "'/'"));
  EXPECT_THAT(store_->GetJob("a b").status(), StatusIs(absl::StatusCode::kInvalidArgument, "a b"));
}

TEST_F(StoreTest, ListJobs_MintedIds_CreationOrder) {
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) {
    absl::StatusOr<int64_t> n = store_->NextSequence("job");
    ASSERT_TRUE(n.ok()) << n.status();
    ids.push_back(absl::StrFormat("job-%06d", *n));
  }
  std::vector<std::string> shuffled = {ids[11], ids[0], ids[9], ids[1], ids[10], ids[2],
                                       ids[8],  ids[3], ids[7], ids[4], ids[6],  ids[5]};
  for (const std::string& id : shuffled) ASSERT_TRUE(store_->PutJob(MakeJob(id, id)).ok());
  chunkflow::v1::Worker w;  // rows under other prefixes stay out of the list
  w.set_id("job-000000");
  ASSERT_TRUE(store_->PutWorker(w).ok());
  ASSERT_TRUE(store_->PutCostModel("job-000000", chunkflow::v1::CostModel()).ok());
  absl::StatusOr<std::vector<chunkflow::v1::Job>> jobs = store_->ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  std::vector<std::string> got;
  for (const auto& j : *jobs) got.push_back(j.id());
  EXPECT_EQ(got, ids);
  EXPECT_EQ(got.front(), "job-000001");
}

TEST_F(StoreTest, NextSequence_AcrossReopen_Monotonic) {
  EXPECT_EQ(*store_->NextSequence("job"), 1);
  EXPECT_EQ(*store_->NextSequence("job"), 2);
  EXPECT_EQ(*store_->NextSequence("other"), 1);  // counters are independent
  Reopen();
  EXPECT_EQ(*store_->NextSequence("job"), 3);
  EXPECT_EQ(*store_->NextSequence("other"), 2);
}

TEST_F(StoreTest, NextSequence_ConcurrentCallers_EachValueOnce) {
  constexpr int kThreads = 4, kPerThread = 50;
  std::vector<std::vector<int64_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) got[t].push_back(*store_->NextSequence("c"));
    });
  }
  for (std::thread& th : threads) th.join();
  std::vector<int64_t> all;
  for (const auto& g : got) {
    EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));
    all.insert(all.end(), g.begin(), g.end());
  }
  std::sort(all.begin(), all.end());
  for (int i = 0; i < kThreads * kPerThread; ++i) ASSERT_EQ(all[i], i + 1);
}

// ===========================================================================
// Step log
// ===========================================================================

TEST_F(StoreTest, PlanCommitGetStep_RoundTrips) {
  EXPECT_EQ(*store_->LastCommittedStep("j"), -1);
  EXPECT_FALSE(store_->PlannedUncommitted("j")->has_value());
  StepPlan plan = MakePlan("j", 0, {5, 3, 9});
  CursorState cursor{1, 42, 3};
  ASSERT_TRUE(store_->PutPlannedStep("j", plan, cursor).ok());

  absl::StatusOr<StepRecord> rec = store_->GetStep("j", 0);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->plan.SerializeAsString(), plan.SerializeAsString());
  EXPECT_EQ(rec->cursor, cursor);
  EXPECT_FALSE(rec->commit.has_value());
  ASSERT_TRUE(store_->PlannedUncommitted("j")->has_value());

  StepCommit commit{2.5, 300, 1.25, std::string("op\0timings", 10)};
  ASSERT_TRUE(store_->CommitStep("j", 0, commit).ok());
  rec = store_->GetStep("j", 0);
  ASSERT_TRUE(rec.ok() && rec->commit.has_value()) << rec.status();
  EXPECT_EQ(rec->commit->loss, 2.5);
  EXPECT_EQ(rec->commit->tokens, 300);
  EXPECT_EQ(rec->commit->step_seconds, 1.25);
  EXPECT_EQ(rec->commit->report_bytes, commit.report_bytes);
  EXPECT_EQ(*store_->LastCommittedStep("j"), 0);
  EXPECT_FALSE(store_->PlannedUncommitted("j")->has_value());
}

TEST_F(StoreTest, GetStep_NeverPlanned_NotFoundNamingJobAndStep) {
  EXPECT_THAT(store_->GetStep("job-7", 3).status(),
              StatusIs(absl::StatusCode::kNotFound, "job job-7 has no step 3"));
  EXPECT_THAT(store_->GetStep("job-7", -1).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "-1"));
}

// The restart story: plan 0, commit 0, plan 1, crash before committing 1.
TEST_F(StoreTest, Reopen_AfterCrashMidStep_ResendsPlannedStep) {
  ASSERT_TRUE(store_->PutJob(MakeJob("job-000001", "tune")).ok());
  ASSERT_TRUE(
      store_->PutPlannedStep("job-000001", MakePlan("job-000001", 0, {4, 1}), CursorState{1, 7, 2})
          .ok());
  ASSERT_TRUE(store_->CommitStep("job-000001", 0, StepCommit{3.0, 10, 0.5, "r0"}).ok());
  ASSERT_TRUE(
      store_->PutPlannedStep("job-000001", MakePlan("job-000001", 1, {0, 6}),
                             CursorState{2, 7, 2, 40})
          .ok());
  Reopen();

  EXPECT_EQ(store_->GetJob("job-000001")->spec().name(), "tune");
  EXPECT_EQ(*store_->LastCommittedStep("job-000001"), 0);
  absl::StatusOr<std::optional<StepPlan>> pending = store_->PlannedUncommitted("job-000001");
  ASSERT_TRUE(pending.ok()) << pending.status();
  ASSERT_TRUE(pending->has_value());
  EXPECT_EQ((*pending)->step(), 1);
  EXPECT_THAT((*pending)->samples(), ElementsAre(0, 6));
  EXPECT_EQ(store_->GetStep("job-000001", 1)->cursor, (CursorState{2, 7, 2, 40}));
  EXPECT_EQ(store_->GetStep("job-000001", 0)->commit->report_bytes, "r0");
  // Resending is an identical re-put; then the step commits normally.
  EXPECT_TRUE(store_->PutPlannedStep("job-000001", **pending, CursorState{2, 7, 2, 40}).ok());
  EXPECT_TRUE(store_->CommitStep("job-000001", 1, StepCommit{}).ok());
  EXPECT_EQ(*store_->LastCommittedStep("job-000001"), 1);
}

// A lost worker sends the job back to the checkpoint after step 0: steps 1
// (committed) and 2 (planned) are forgotten and planned again, from the
// cursor recorded with step 0, even after a reopen.
TEST_F(StoreTest, RewindTo_ForgetsLaterSteps_AndPlansThemAgain) {
  for (int64_t step = 0; step < 3; ++step) {
    ASSERT_TRUE(store_->PutPlannedStep("j", MakePlan("j", step, {step}),
                                       CursorState{step + 1, 7, 1}).ok());
    if (step < 2) ASSERT_TRUE(store_->CommitStep("j", step, StepCommit{}).ok());
  }
  EXPECT_THAT(store_->RewindTo("j", 2), StatusIs(absl::StatusCode::kFailedPrecondition,
                                                 "the last committed step is 1"));
  EXPECT_THAT(store_->RewindTo("j", -2), StatusIs(absl::StatusCode::kInvalidArgument, "-2"));
  ASSERT_TRUE(store_->PutCheckpoint("j", 1, "/ckpt/1").ok());
  ASSERT_TRUE(store_->RewindTo("j", 0).ok());
  Reopen();
  EXPECT_FALSE(store_->LatestCheckpoint("j")->has_value()) << "the checkpoint of step 1 is gone";
  EXPECT_EQ(*store_->LastCommittedStep("j"), 0);
  EXPECT_FALSE(store_->PlannedUncommitted("j")->has_value());
  EXPECT_EQ(store_->GetStep("j", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetStep("j", 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetStep("j", 0)->cursor.next_step, 1);
  // A different plan for step 1 is accepted now (it conflicted before).
  ASSERT_TRUE(store_->PutPlannedStep("j", MakePlan("j", 1, {9}), CursorState{2, 7, 1}).ok());
  ASSERT_TRUE(store_->RewindTo("j", -1).ok());
  EXPECT_EQ(*store_->LastCommittedStep("j"), -1);
  EXPECT_EQ(store_->GetStep("j", 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, CommitStep_BeforePlan_FailedPrecondition) {
  EXPECT_THAT(
      store_->CommitStep("j", 0, StepCommit{}),
      StatusIs(absl::StatusCode::kFailedPrecondition, "step 0 of job j: it was never planned"));
}

TEST_F(StoreTest, PutPlannedStep_SkippingAStep_FailedPrecondition) {
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 1, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "only step 0 may be planned"));
  ASSERT_TRUE(store_->PutPlannedStep("j", MakePlan("j", 0, {1}), CursorState{}).ok());
  // Step 1 cannot be planned while 0 is uncommitted.
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 1, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "cannot plan step 1 of job j"));
  ASSERT_TRUE(store_->CommitStep("j", 0, StepCommit{}).ok());
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 2, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "only step 1 may be planned"));
  // A committed step cannot be planned again.
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 0, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "last committed step is 0"));
}

TEST_F(StoreTest, PutPlannedStep_ConflictingReplan_FailedPrecondition) {
  CursorState cursor{1, 1, 2};
  ASSERT_TRUE(store_->PutPlannedStep("j", MakePlan("j", 0, {1, 2}), cursor).ok());
  EXPECT_TRUE(store_->PutPlannedStep("j", MakePlan("j", 0, {1, 2}), cursor).ok());  // idempotent
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 0, {1, 3}), cursor),
              StatusIs(absl::StatusCode::kFailedPrecondition, "different plan"));
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 0, {1, 2}), CursorState{1, 1, 3}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "different cursor"));
  EXPECT_THAT(store_->GetStep("j", 0)->plan.samples(), ElementsAre(1, 2));  // first one kept
}

TEST_F(StoreTest, PutPlannedStep_PlanOfAnotherJob_InvalidArgument) {
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("k", 0, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kInvalidArgument, "names job k"));
}

TEST_F(StoreTest, CommitStep_Twice_FailedPrecondition) {
  ASSERT_TRUE(store_->PutPlannedStep("j", MakePlan("j", 0, {1}), CursorState{}).ok());
  ASSERT_TRUE(store_->CommitStep("j", 0, StepCommit{1.0, 1, 1.0, ""}).ok());
  EXPECT_THAT(store_->CommitStep("j", 0, StepCommit{9.0, 9, 9.0, ""}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "already committed"));
  EXPECT_EQ(store_->GetStep("j", 0)->commit->loss, 1.0);  // first commit kept
}

TEST_F(StoreTest, StepLog_JobsWithPrefixIds_AreIndependent) {
  ASSERT_TRUE(store_->PutPlannedStep("job-1", MakePlan("job-1", 0, {1}), CursorState{}).ok());
  ASSERT_TRUE(store_->CommitStep("job-1", 0, StepCommit{}).ok());
  EXPECT_EQ(*store_->LastCommittedStep("job-10"), -1);
  EXPECT_FALSE(store_->PlannedUncommitted("job-10")->has_value());
  EXPECT_THAT(store_->GetStep("job-10", 0).status(), StatusIs(absl::StatusCode::kNotFound, ""));
}

// ===========================================================================
// Corrupt values
// ===========================================================================

TEST_F(StoreTest, GetJob_GarbageValue_DataLossNamingKey) {
  ASSERT_TRUE(store_->PutJob(MakeJob("job-000001", "ok")).ok());
  store_.reset();
  RawPut(dir_, "job/job-000002", "garbage");
  Reopen();
  EXPECT_TRUE(store_->GetJob("job-000001").ok());
  EXPECT_THAT(store_->GetJob("job-000002").status(),
              StatusIs(absl::StatusCode::kDataLoss, "key \"job/job-000002\""));
  EXPECT_THAT(store_->ListJobs().status(), StatusIs(absl::StatusCode::kDataLoss, "job/job-000002"));
}

TEST_F(StoreTest, GetStep_GarbagePlan_DataLossNamingKey) {
  store_.reset();
  std::string key = absl::StrFormat("step/j/%020d/plan", 0);
  RawPut(dir_, key, "garbage");
  Reopen();
  EXPECT_THAT(store_->GetStep("j", 0).status(), StatusIs(absl::StatusCode::kDataLoss, key));
  EXPECT_THAT(store_->PlannedUncommitted("j").status(), StatusIs(absl::StatusCode::kDataLoss, key));
  EXPECT_THAT(store_->PutPlannedStep("j", MakePlan("j", 0, {1}), CursorState{}),
              StatusIs(absl::StatusCode::kDataLoss, key));
}

TEST_F(StoreTest, NextSequence_GarbageCounter_DataLossNamingKey) {
  store_.reset();
  RawPut(dir_, "seq/job", "garbage");
  Reopen();
  EXPECT_THAT(store_->NextSequence("job").status(),
              StatusIs(absl::StatusCode::kDataLoss, "seq/job"));
}

// ===========================================================================
// Workers, checkpoints, cost models
// ===========================================================================

TEST_F(StoreTest, Workers_PutGetListDelete_RoundTrip) {
  chunkflow::v1::Worker a, b;
  a.set_id("w-a");
  a.set_host("h1");
  a.set_state(chunkflow::v1::WORKER_STATE_IDLE);
  b.set_id("w-b");
  b.set_stage(1);
  ASSERT_TRUE(store_->PutWorker(b).ok());
  ASSERT_TRUE(store_->PutWorker(a).ok());
  EXPECT_EQ(store_->GetWorker("w-a")->host(), "h1");
  absl::StatusOr<std::vector<chunkflow::v1::Worker>> all = store_->ListWorkers();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id(), "w-a");
  EXPECT_EQ((*all)[1].stage(), 1);
  ASSERT_TRUE(store_->DeleteWorker("w-a").ok());
  EXPECT_THAT(store_->GetWorker("w-a").status(), StatusIs(absl::StatusCode::kNotFound, "w-a"));
  EXPECT_THAT(store_->DeleteWorker("w-a"), StatusIs(absl::StatusCode::kNotFound, "w-a"));
  EXPECT_EQ(store_->ListWorkers()->size(), 1u);
}

TEST_F(StoreTest, LatestCheckpoint_HighestStepOfThisJob) {
  EXPECT_FALSE(store_->LatestCheckpoint("job-1")->has_value());
  ASSERT_TRUE(store_->PutCheckpoint("job-1", 20, "/ckpt/20").ok());
  ASSERT_TRUE(store_->PutCheckpoint("job-1", 100, "/ckpt/100").ok());
  ASSERT_TRUE(store_->PutCheckpoint("job-1", 5, "/ckpt/5").ok());
  ASSERT_TRUE(store_->PutCheckpoint("job-10", 900, "/other").ok());  // sorts after job-1's keys
  ASSERT_TRUE(store_->PutCheckpoint("job-0", 901, "/other").ok());   // sorts before them
  absl::StatusOr<std::optional<CheckpointRecord>> latest = store_->LatestCheckpoint("job-1");
  ASSERT_TRUE(latest.ok() && latest->has_value()) << latest.status();
  EXPECT_EQ((*latest)->step, 100);
  EXPECT_EQ((*latest)->path, "/ckpt/100");
  EXPECT_FALSE(store_->LatestCheckpoint("job-2")->has_value());
  EXPECT_THAT(store_->PutCheckpoint("job-1", 1, ""),
              StatusIs(absl::StatusCode::kInvalidArgument, "path"));
}

TEST_F(StoreTest, CostModel_PutGet_RoundTrips) {
  EXPECT_THAT(store_->GetCostModel("j").status(),
              StatusIs(absl::StatusCode::kNotFound, "job j has no fitted cost model"));
  chunkflow::v1::CostModel model;
  model.set_backward_ratio(2.0);
  model.add_stages()->set_linear_s_per_token(1e-6);
  ASSERT_TRUE(store_->PutCostModel("j", model).ok());
  EXPECT_EQ(store_->GetCostModel("j")->SerializeAsString(), model.SerializeAsString());
}

TEST_F(StoreTest, Reopen_EverythingStored_IsThere) {
  ASSERT_TRUE(store_->PutJob(MakeJob("job-000001", "a")).ok());
  chunkflow::v1::Worker w;
  w.set_id("w0");
  ASSERT_TRUE(store_->PutWorker(w).ok());
  ASSERT_TRUE(store_->PutCheckpoint("job-000001", 3, "/c/3").ok());
  chunkflow::v1::CostModel model;
  model.set_backward_ratio(1.5);
  ASSERT_TRUE(store_->PutCostModel("job-000001", model).ok());
  ASSERT_TRUE(
      store_->PutPlannedStep("job-000001", MakePlan("job-000001", 0, {2}), CursorState{1, 9, 1})
          .ok());
  ASSERT_TRUE(store_->CommitStep("job-000001", 0, StepCommit{0.5, 5, 0.1, "t"}).ok());
  Reopen();
  EXPECT_EQ(store_->ListJobs()->size(), 1u);
  EXPECT_EQ(store_->GetWorker("w0")->id(), "w0");
  EXPECT_EQ((*store_->LatestCheckpoint("job-000001"))->path, "/c/3");
  EXPECT_EQ(store_->GetCostModel("job-000001")->backward_ratio(), 1.5);
  EXPECT_EQ(store_->GetStep("job-000001", 0)->commit->tokens, 5);
  EXPECT_EQ(*store_->LastCommittedStep("job-000001"), 0);
}

}  // namespace
}  // namespace chunkflow::coordinator

// `store_test --hold_lock=<dir>`: open the store at <dir>, print "ready", hold
// it until stdin closes (used by Open_HeldByAnotherProcess_FailedPrecondition).
int main(int argc, char** argv) {
  constexpr std::string_view kHold = "--hold_lock=";
  if (argc == 2 && std::string_view(argv[1]).substr(0, kHold.size()) == kHold) {
    std::string dir(std::string_view(argv[1]).substr(kHold.size()));
    absl::StatusOr<std::unique_ptr<chunkflow::coordinator::Store>> store =
        chunkflow::coordinator::Store::Open(dir);
    if (!store.ok()) {
      std::cerr << store.status() << "\n";
      return 1;
    }
    std::cout << "ready\n" << std::flush;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
