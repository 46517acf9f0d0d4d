// Round-trips the v1 messages and checks the services carry the methods the
// coordinator, workers and admin client rely on.

#include <string>

#include "gtest/gtest.h"
#include "proto/chunkflow.grpc.pb.h"
#include "proto/chunkflow.pb.h"

namespace chunkflow::v1 {
namespace {

TEST(StepPlan, RoundTrip_PreservesChunksAndOps) {
  StepPlan plan;
  plan.set_job_id("job-1");
  plan.set_step(7);
  Chunk* chunk = plan.add_chunks();
  chunk->set_id(3);
  chunk->set_dp(1);
  Piece* piece = chunk->add_pieces();
  piece->set_seq(42);
  piece->set_offset(8192);
  piece->set_length(100);
  StageOps* ops = plan.add_stage_ops();
  ops->set_stage(2);
  Op* op = ops->add_ops();
  op->set_type(OP_TYPE_FORWARD);
  op->set_chunk(3);
  op->set_recompute(true);

  std::string bytes;
  ASSERT_TRUE(plan.SerializeToString(&bytes));
  StepPlan back;
  ASSERT_TRUE(back.ParseFromString(bytes));
  EXPECT_EQ(back.job_id(), "job-1");
  EXPECT_EQ(back.chunks(0).pieces(0).seq(), 42);
  EXPECT_EQ(back.chunks(0).pieces(0).offset(), 8192);
  EXPECT_EQ(back.stage_ops(0).ops(0).type(), OP_TYPE_FORWARD);
  EXPECT_TRUE(back.stage_ops(0).ops(0).recompute());
}

TEST(WorkerMessage, Oneof_HoldsOneKind) {
  WorkerMessage msg;
  msg.mutable_heartbeat()->set_current_memory_bytes(5);
  EXPECT_EQ(msg.msg_case(), WorkerMessage::kHeartbeat);
  msg.mutable_step_report()->set_step(1);
  EXPECT_EQ(msg.msg_case(), WorkerMessage::kStepReport);
  EXPECT_FALSE(msg.has_heartbeat());
}

TEST(Services, Descriptors_ListEveryMethod) {
  const auto* admin = AdminService::service_full_name();
  EXPECT_STREQ(admin, "chunkflow.v1.AdminService");
  const auto* desc = StepPlan::descriptor()->file()->FindServiceByName("AdminService");
  ASSERT_NE(desc, nullptr);
  for (const char* m : {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "ListWorkers",
                        "DrainWorker", "UpdateSchedule", "CheckpointJob", "WatchJob"}) {
    EXPECT_NE(desc->FindMethodByName(m), nullptr) << m;
  }
  EXPECT_TRUE(desc->FindMethodByName("WatchJob")->server_streaming());
  const auto* worker = StepPlan::descriptor()->file()->FindServiceByName("WorkerService");
  ASSERT_NE(worker, nullptr);
  EXPECT_NE(worker->FindMethodByName("Register"), nullptr);
  const auto* connect = worker->FindMethodByName("Connect");
  ASSERT_NE(connect, nullptr);
  EXPECT_TRUE(connect->client_streaming());
  EXPECT_TRUE(connect->server_streaming());
}

}  // namespace
}  // namespace chunkflow::v1
