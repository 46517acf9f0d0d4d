#include "cli/plan_command.h"

#include <algorithm>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/cursor.h"
#include "dataset/dataset.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chunkflow::cli {
namespace {

PlanOptions Small() {
  PlanOptions o;
  o.dataset = "synthetic:paper-eval:n=3000,seed=3,max=65536";
  o.global_batch = 128;
  o.steps = 2;
  o.chunk_size = 4096;
  o.k = 2;
  o.dp = 2;
  o.pp = 2;
  o.model = "qwen2.5-0.5b";
  return o;
}

TEST(RunPlanCommand, Table_ListsEveryStrategy) {
  std::stringstream out, progress;
  absl::Status s = RunPlanCommand(Small(), out, progress);
  ASSERT_TRUE(s.ok()) << s;
  const std::string t = out.str();
  for (const char* row : {"chunkflow C=4K K=2", "packing max=", "megatron-pad ",
                          "megatron-pad +recompute", "megatron-pack max=",
                          "megatron-pack +recompute", "speedup is against megatron-"}) {
    EXPECT_NE(t.find(row), std::string::npos) << row << "\n" << t;
  }
}

TEST(RunPlanCommand, Json_HasTheDocumentedFields) {
  PlanOptions o = Small();
  o.format = "json";
  std::stringstream out, progress;
  ASSERT_TRUE(RunPlanCommand(o, out, progress).ok());
  nlohmann::json j = nlohmann::json::parse(out.str());
  ASSERT_EQ(j["steps"].size(), 2u);
  const auto& step = j["steps"][0];
  const auto& chunk = step["chunks"][0];
  EXPECT_TRUE(chunk.contains("id") && chunk.contains("dp"));
  const auto& piece = chunk["pieces"][0];
  EXPECT_TRUE(piece.contains("seq") && piece.contains("offset") && piece.contains("length"));
  const auto& ops = step["ops"][0];
  EXPECT_TRUE(ops.contains("dp") && ops.contains("stage"));
  const auto& op = ops["list"][0];
  EXPECT_EQ(op["type"], "forward");
  EXPECT_TRUE(op.contains("chunk") && op.contains("keep_activations") && op.contains("recompute"));
  EXPECT_GT(step["sim"]["makespan_s"].get<double>(), 0);
  EXPECT_TRUE(step["sim"].contains("bubble_ratio"));
  EXPECT_EQ(step["sim"]["peak_memory_bytes"].size(), 2u);
  // Each step's pieces cover exactly the cursor's batch, every token once.
  const std::vector<int64_t> lengths = *dataset::ReadDocumentLengths(o.dataset);
  DatasetCursor cursor = *DatasetCursor::Create(lengths.size(), o.seed, o.global_batch);
  for (int64_t s = 0; s < 2; ++s) {
    std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> by_seq;
    for (const auto& c : j["steps"][s]["chunks"]) {
      for (const auto& p : c["pieces"]) {
        by_seq[p["seq"].get<int64_t>()].push_back(
            {p["offset"].get<int64_t>(), p["length"].get<int64_t>()});
      }
    }
    const std::vector<int64_t> docs = *cursor.Batch(s);
    ASSERT_EQ(by_seq.size(), docs.size());
    for (int64_t doc : docs) {
      auto& pieces = by_seq[doc];
      std::sort(pieces.begin(), pieces.end());
      int64_t next = 0;
      for (auto [offset, length] : pieces) {
        ASSERT_EQ(offset, next) << "document " << doc;
        next += length;
      }
      ASSERT_EQ(next, lengths[doc]) << "document " << doc;
    }
  }
  EXPECT_EQ(j["comparison"].size(), 6u);
}

TEST(RunPlanCommand, Sweep_PicksAFittingPair) {
  PlanOptions o = Small();
  o.sweep = true;
  o.memory_budget_gib = 40;
  std::stringstream out, progress;
  ASSERT_TRUE(RunPlanCommand(o, out, progress).ok());
  EXPECT_NE(progress.str().find("sweep 1/"), std::string::npos);
  EXPECT_NE(progress.str().find("best that fits is chunkflow"), std::string::npos)
      << progress.str();
}

TEST(RunPlanCommand, BadFlags_NameTheFlag) {
  auto expect = [](PlanOptions o, absl::StatusCode code, const std::string& needle) {
    std::stringstream out, progress;
    absl::Status s = RunPlanCommand(o, out, progress);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
  };
  PlanOptions o = Small();
  o.k = 0;
  expect(o, absl::StatusCode::kInvalidArgument, "--k");
  o = Small();
  o.pp = 100;
  expect(o, absl::StatusCode::kInvalidArgument, "--pp 100 is more stages than the 24 layers");
  o = Small();
  o.global_batch = 1000000;
  expect(o, absl::StatusCode::kInvalidArgument, "--global_batch 1000000");
  o = Small();
  o.format = "xml";
  expect(o, absl::StatusCode::kInvalidArgument, "--format");
  o = Small();
  o.memory_budget_gib = std::numeric_limits<double>::infinity();
  expect(o, absl::StatusCode::kInvalidArgument, "--memory_budget_gib must be in (0, 1e6]");
  o = Small();
  o.dataset = "/nonexistent/corpus";
  expect(o, absl::StatusCode::kNotFound, "/nonexistent/corpus");
  o = Small();
  o.model_config = "/nonexistent/model";
  expect(o, absl::StatusCode::kNotFound, "/nonexistent/model/config.json");
}

}  // namespace
}  // namespace chunkflow::cli
