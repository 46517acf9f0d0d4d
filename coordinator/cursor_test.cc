#include "coordinator/cursor.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace chunkflow {
namespace {

TEST(EpochOrder, IsPermutation_DeterministicPerSeedAndEpoch) {
  std::vector<int64_t> a = EpochOrder(1000, 7, 0);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(a, EpochOrder(1000, 7, 0));
  EXPECT_NE(a, EpochOrder(1000, 8, 0));
  EXPECT_NE(a, EpochOrder(1000, 7, 1));
}

// 103 documents in batches of 10: epoch boundaries fall inside batches, and
// each epoch still consumes every document exactly once.
TEST(DatasetCursor, EveryEpoch_ConsumesEveryDocumentOnce) {
  DatasetCursor cursor = *DatasetCursor::Create(103, 1, 10);
  std::vector<int64_t> stream;
  for (int64_t step = 0; step < 31; ++step) {  // 310 documents: 3 epochs + 1
    std::vector<int64_t> batch = *cursor.Batch(step);
    ASSERT_EQ(batch.size(), 10u);
    stream.insert(stream.end(), batch.begin(), batch.end());
  }
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> part(stream.begin() + epoch * 103, stream.begin() + (epoch + 1) * 103);
    EXPECT_EQ(part, EpochOrder(103, 1, epoch)) << "epoch " << epoch;
  }
  EXPECT_EQ(cursor.EpochOf(10), 0);  // positions 100..109 start in epoch 0
  EXPECT_EQ(cursor.EpochOf(11), 1);
}

TEST(DatasetCursor, Replay_GivesTheSameBatches) {
  DatasetCursor a = *DatasetCursor::Create(50, 3, 7);
  DatasetCursor b = *DatasetCursor::Create(50, 3, 7);
  std::vector<int64_t> late = *a.Batch(20);
  EXPECT_EQ(*a.Batch(0), *b.Batch(0));
  EXPECT_EQ(late, *b.Batch(20));
}

TEST(DatasetCursor, BadArguments_Rejected) {
  auto msg = [](const absl::Status& s) { return std::string(s.message()); };
  absl::StatusOr<DatasetCursor> c = DatasetCursor::Create(5, 1, 10);
  ASSERT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(msg(c.status()).find("global batch 10"), std::string::npos);
  EXPECT_EQ(DatasetCursor::Create(5, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DatasetCursor::Create(0, 1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  DatasetCursor ok = *DatasetCursor::Create(5, 1, 2);
  EXPECT_NE(msg(ok.Batch(-1).status()).find("step must be >= 0, got -1"), std::string::npos);
}

}  // namespace
}  // namespace chunkflow
