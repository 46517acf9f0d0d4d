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

// 103 documents in batches of 10: 11 steps per epoch, the last one holding
// the epoch's 3 remaining documents; each epoch consumes every document
// exactly once and no batch holds a document twice.
TEST(DatasetCursor, EveryEpoch_ConsumesEveryDocumentOnce_NoBatchStraddles) {
  DatasetCursor cursor = *DatasetCursor::Create(103, 1, 10);
  EXPECT_EQ(cursor.StepsPerEpoch(), 11);
  std::vector<int64_t> stream;
  for (int64_t step = 0; step < 33; ++step) {  // 3 epochs
    std::vector<int64_t> batch = *cursor.Batch(step);
    ASSERT_EQ(batch.size(), step % 11 == 10 ? 3u : 10u) << "step " << step;
    std::vector<int64_t> sorted = batch;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end()) << "step " << step;
    stream.insert(stream.end(), batch.begin(), batch.end());
  }
  ASSERT_EQ(stream.size(), 3u * 103);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> part(stream.begin() + epoch * 103, stream.begin() + (epoch + 1) * 103);
    EXPECT_EQ(part, EpochOrder(103, 1, epoch)) << "epoch " << epoch;
  }
  EXPECT_EQ(cursor.EpochOf(10), 0);  // the short last step of epoch 0
  EXPECT_EQ(cursor.EpochOf(11), 1);
  // A batch equal to the dataset: one step per epoch, each a full permutation.
  DatasetCursor whole = *DatasetCursor::Create(7, 2, 7);
  EXPECT_EQ(*whole.Batch(3), EpochOrder(7, 2, 3));
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
