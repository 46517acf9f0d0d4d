#include "coordinator/planner/chunking.h"

#include <string>
#include <vector>

#include "coordinator/planner/test_util.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

TEST(BuildChunks, LongSequence_SplitIntoChain) {
  std::vector<Sequence> batch = {{7, 25}};
  std::vector<Chunk> chunks = *BuildChunks(batch, 10);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].pieces[0].offset, 0);
  EXPECT_EQ(chunks[1].pieces[0].offset, 10);
  EXPECT_EQ(chunks[2].pieces[0].length, 5);
  EXPECT_EQ(chunks[2].chain_index, 2);
  EXPECT_EQ(chunks[2].chain_length, 3);
  EXPECT_EQ(chunks[1].prev, 0);
  EXPECT_EQ(chunks[1].next, 2);
  EXPECT_EQ(chunks[2].next, -1);
  // Chunk 2 attends to 20 earlier tokens: 5 * 20 + 5 * 6 / 2.
  EXPECT_EQ(chunks[2].compute_pairs, 115);
}

TEST(BuildChunks, ExactMultiple_NoEmptyTail) {
  std::vector<Chunk> chunks = *BuildChunks(std::vector<Sequence>{{0, 30}}, 10);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks.back().tokens, 10);
}

TEST(BuildChunks, SequenceOfChunkSize_IsStandalone) {
  std::vector<Chunk> chunks = *BuildChunks(std::vector<Sequence>{{0, 10}}, 10);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_FALSE(chunks[0].dependent());
}

TEST(BuildChunks, ShortSequences_BestFitPacked) {
  // BFD: 6 -> A, 5 -> B, 4 -> A (room 4, fits exactly), 3 -> B, 2 -> B.
  std::vector<Sequence> batch = {{0, 4}, {1, 6}, {2, 2}, {3, 5}, {4, 3}};
  std::vector<Chunk> chunks = *BuildChunks(batch, 10);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens, 10);
  EXPECT_EQ(chunks[1].tokens, 10);
  EXPECT_EQ(chunks[0].pieces[1].seq, 0);
  // Packed sequences never attend to each other: pairs are per sequence.
  EXPECT_EQ(chunks[0].compute_pairs, 6 * 7 / 2 + 4 * 5 / 2);
}

TEST(BuildChunks, RandomBatches_WithinBoundOfLowerBound) {
  int64_t total = 0, bound = 0;
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    std::vector<Sequence> batch = testing::RandomBatch(seed, 400, 20000);
    for (int64_t c : {512, 2048, 8192}) {
      std::vector<Chunk> chunks = *BuildChunks(batch, c);
      const int64_t lb = MinChunks(batch, c);
      ASSERT_GE(static_cast<int64_t>(chunks.size()), lb);
      // Johnson's worst case is 11/9 OPT + 6/9 with OPT >= lb; this checks the
      // stronger 11/9 lb + 1, which BFD meets with room on long-tailed input.
      ASSERT_LE(static_cast<double>(chunks.size()), lb * 11.0 / 9.0 + 1);
      total += chunks.size();
      bound += lb;
    }
  }
  // In practice BFD is far closer than the worst case.
  EXPECT_LE(static_cast<double>(total), 1.02 * bound);
}

TEST(BuildChunks, BadInput_Rejected) {
  EXPECT_EQ(BuildChunks(std::vector<Sequence>{{0, 1}}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = BuildChunks(std::vector<Sequence>{{0, 1}, {9, -2}}, 4).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("sequence 9"), std::string::npos) << s;
}

TEST(PackInOrder, NextFit_KeepsBatchOrder) {
  std::vector<Sequence> batch = {{0, 6}, {1, 5}, {2, 4}, {3, 1}};
  std::vector<Chunk> chunks = *PackInOrder(batch, 10);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens, 6);
  EXPECT_EQ(chunks[1].tokens, 10);
  absl::Status s = PackInOrder(batch, 5).status();
  EXPECT_NE(std::string(s.message()).find("sequence 0 has 6 tokens"), std::string::npos) << s;
}

TEST(OneSequencePerChunk, Padding_ComputesPaddedWork) {
  std::vector<Chunk> chunks = *OneSequencePerChunk(std::vector<Sequence>{{0, 3}, {1, 8}}, 8);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens, 3);
  EXPECT_EQ(chunks[0].compute_tokens, 8);
  EXPECT_EQ(chunks[0].compute_pairs, 36);
}

}  // namespace
}  // namespace chunkflow::planner
