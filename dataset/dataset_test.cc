#include "dataset/dataset.h"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dataset/indexed_dataset.h"
#include "dataset/synthetic.h"
#include "dataset/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::dataset {
namespace {

using ::chunkflow::dataset::testing::ExpectError;
using ::chunkflow::dataset::testing::TempPath;
using ::chunkflow::dataset::testing::WriteFileOrDie;
using ::chunkflow::dataset::testing::WriteRawMegatron;
using ::testing::ElementsAre;

std::string WriteIndexed(absl::string_view name) {
  const std::string prefix = TempPath(name);
  auto w = IndexedDatasetWriter::Create(prefix, DType::kUInt16);
  EXPECT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->AddDocument({1, 2, 3, 4}).ok());
  EXPECT_TRUE((*w)->AddDocument({5}).ok());
  EXPECT_TRUE((*w)->Finish().ok());
  return prefix;
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_SyntheticSpec_MatchesGenerateLengths) {
  absl::StatusOr<std::vector<int64_t>> lengths =
      ReadDocumentLengths("synthetic:lmsys:n=300,seed=2");
  ASSERT_TRUE(lengths.ok()) << lengths.status();
  EXPECT_EQ(*lengths, GenerateLengths(*ParseSyntheticSpec("synthetic:lmsys:n=300,seed=2")));
  EXPECT_EQ(lengths->size(), 300u);
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_BadSyntheticSpec_InvalidArgument) {
  ExpectError(ReadDocumentLengths("synthetic:nope").status(), absl::StatusCode::kInvalidArgument,
              {"unknown mix 'nope'"});
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_Jsonl_ReturnsInputIdsLengths) {
  const std::string path = TempPath("d.jsonl");
  WriteFileOrDie(path, "{\"input_ids\": [1, 2]}\n{\"input_ids\": [3, 4, 5]}\n");
  absl::StatusOr<std::vector<int64_t>> lengths = ReadDocumentLengths(path);
  ASSERT_TRUE(lengths.ok()) << lengths.status();
  EXPECT_THAT(*lengths, ElementsAre(2, 3));
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_BadJsonl_InvalidArgumentNamesLine) {
  const std::string path = TempPath("bad.jsonl");
  WriteFileOrDie(path, "{\"input_ids\": [1, 2.5]}\n");
  ExpectError(ReadDocumentLengths(path).status(), absl::StatusCode::kInvalidArgument,
              {path + ":1:"});
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_MegatronPrefixOrEitherFile_SameLengths) {
  const std::string prefix = WriteIndexed("megatron");
  for (const std::string& spec : {prefix, prefix + ".idx", prefix + ".bin"}) {
    absl::StatusOr<std::vector<int64_t>> lengths = ReadDocumentLengths(spec);
    ASSERT_TRUE(lengths.ok()) << spec << ": " << lengths.status();
    EXPECT_THAT(*lengths, ElementsAre(4, 1)) << spec;
  }
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_MissingPath_NotFoundListsForms) {
  ExpectError(ReadDocumentLengths("/no/such/data").status(), absl::StatusCode::kNotFound,
              {"/no/such/data", "synthetic:", ".jsonl", ".idx", ".bin"});
  ExpectError(ReadDocumentLengths("/no/such/data.jsonl").status(), absl::StatusCode::kNotFound,
              {"/no/such/data.jsonl", "synthetic:"});
  ExpectError(ReadDocumentLengths("").status(), absl::StatusCode::kNotFound, {"synthetic:"});
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_OnlyIdxPresent_NotFoundNamesBin) {
  const std::string prefix = WriteIndexed("half");
  ASSERT_EQ(std::remove((prefix + ".bin").c_str()), 0);
  ExpectError(ReadDocumentLengths(prefix).status(), absl::StatusCode::kNotFound, {prefix + ".bin"});
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_CorruptMegatron_DataLoss) {
  const std::string prefix = WriteIndexed("corrupt");
  WriteFileOrDie(prefix + ".idx", "MMIDIDX");
  ExpectError(ReadDocumentLengths(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "truncated header"});
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_MultiSequenceDocuments_SumsSequences) {
  const std::string prefix = TempPath("multi");
  WriteRawMegatron(prefix, 4, {{1, 2}, {3}, {4, 5, 6}}, {0, 2, 3});
  absl::StatusOr<std::vector<int64_t>> lengths = ReadDocumentLengths(prefix);
  ASSERT_TRUE(lengths.ok()) << lengths.status();
  EXPECT_THAT(*lengths, ElementsAre(3, 3));
}

TEST(ReadDocumentLengthsTest, ReadDocumentLengths_EmptyMegatronDocument_InvalidArgument) {
  const std::string prefix = TempPath("empty_doc");
  WriteRawMegatron(prefix, 4, {{1, 2}, {3}}, {0, 1, 1, 2});
  ExpectError(ReadDocumentLengths(prefix).status(), absl::StatusCode::kInvalidArgument,
              {prefix + ".idx", "document 1 is empty"});
}

// An empty dataset is refused by name, not read as "0 documents" for the
// commands to trip over later (plan's "--global_batch is larger than the
// dataset", eval's empty table).
TEST(ReadDocumentLengthsTest, ReadDocumentLengths_NoDocuments_InvalidArgumentNamesThePath) {
  const std::string jsonl = TempPath("nothing.jsonl");
  std::ofstream(jsonl) << "";
  ExpectError(ReadDocumentLengths(jsonl).status(), absl::StatusCode::kInvalidArgument,
              {jsonl, "no documents"});
  const std::string prefix = TempPath("nothing");
  WriteRawMegatron(prefix, 4, {}, {0});
  ExpectError(ReadDocumentLengths(prefix).status(), absl::StatusCode::kInvalidArgument,
              {prefix, "no documents"});
}

}  // namespace
}  // namespace chunkflow::dataset
