#include "dataset/jsonl.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataset/indexed_dataset.h"
#include "dataset/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::dataset {
namespace {

using ::chunkflow::dataset::testing::ExpectError;
using ::chunkflow::dataset::testing::TempPath;
using ::chunkflow::dataset::testing::WriteFileOrDie;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

using Docs = std::vector<std::vector<int64_t>>;

std::string WriteJsonl(absl::string_view name, absl::string_view text) {
  const std::string path = TempPath(absl::StrCat(name, ".jsonl"));
  WriteFileOrDie(path, text);
  return path;
}

bool FileExists(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f != nullptr) std::fclose(f);
  return f != nullptr;
}

Docs ReadIndexed(const std::string& prefix) {
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  EXPECT_TRUE(ds.ok()) << ds.status();
  if (!ds.ok()) return {};
  Docs out((*ds)->num_documents());
  for (int64_t d = 0; d < (*ds)->num_documents(); ++d) {
    EXPECT_TRUE((*ds)->ReadDocument(d, &out[d]).ok());
  }
  return out;
}

// Reading a one-bad-line file (after a good line 1) must fail at line 2.
void ExpectLine2Error(absl::string_view name, absl::string_view bad_line,
                      std::vector<std::string> needles) {
  const std::string path =
      WriteJsonl(name, absl::StrCat("{\"input_ids\": [1, 2]}\n", bad_line, "\n"));
  needles.push_back(path + ":2: ");
  ExpectError(ReadJsonl(path).status(), absl::StatusCode::kInvalidArgument, needles);
  ExpectError(ReadJsonlLengths(path).status(), absl::StatusCode::kInvalidArgument, needles);
}

// ===========================================================================
// Reading
// ===========================================================================

TEST(JsonlTest, ReadJsonl_ValidLines_ReturnsRecordsInOrder) {
  const std::string path =
      WriteJsonl("valid",
                 "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3], \"source\": \"chat\"}\n"
                 "\n"
                 "   \t\n"
                 "{\"input_ids\": [4], \"labels\": null}\r\n"
                 "{\"labels\": [9, 9], \"input_ids\": [151935, 0]}");  // no final newline
  absl::StatusOr<std::vector<JsonlRecord>> records = ReadJsonl(path);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 3u);
  EXPECT_THAT((*records)[0].input_ids, ElementsAre(1, 2, 3));
  EXPECT_THAT((*records)[0].labels, ElementsAre(-100, 2, 3));
  EXPECT_THAT((*records)[1].input_ids, ElementsAre(4));
  EXPECT_THAT((*records)[1].labels, IsEmpty());
  EXPECT_THAT((*records)[2].input_ids, ElementsAre(151935, 0));
  EXPECT_THAT((*records)[2].labels, ElementsAre(9, 9));
}

TEST(JsonlTest, ReadJsonlLengths_ValidLines_ReturnsInputIdsLengths) {
  const std::string path =
      WriteJsonl("lengths", "{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [7]}\n");
  absl::StatusOr<std::vector<int64_t>> lengths = ReadJsonlLengths(path);
  ASSERT_TRUE(lengths.ok()) << lengths.status();
  EXPECT_THAT(*lengths, ElementsAre(3, 1));
}

TEST(JsonlTest, ReadJsonl_EmptyFile_NoRecords) {
  absl::StatusOr<std::vector<JsonlRecord>> records = ReadJsonl(WriteJsonl("empty", ""));
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_THAT(*records, IsEmpty());
}

TEST(JsonlTest, ReadJsonl_MissingFile_NotFoundNamesPath) {
  const std::string path = TempPath("absent.jsonl");
  ExpectError(ReadJsonl(path).status(), absl::StatusCode::kNotFound, {path});
  ExpectError(ReadJsonlLengths(path).status(), absl::StatusCode::kNotFound, {path});
}

TEST(JsonlTest, ReadJsonl_FloatId_InvalidArgumentNamesPathLine) {
  ExpectLine2Error("float", "{\"input_ids\": [3, 1.5]}", {"input_ids[1]", "1.5", "integer"});
}

TEST(JsonlTest, ReadJsonl_IntegralFloatId_InvalidArgument) {
  ExpectLine2Error("float_int", "{\"input_ids\": [1.0]}", {"input_ids[0]", "a float"});
}

TEST(JsonlTest, ReadJsonl_StringId_InvalidArgumentNamesPathLine) {
  ExpectLine2Error("string", "{\"input_ids\": [\"7\"]}", {"input_ids[0]", "string", "\"7\""});
}

TEST(JsonlTest, ReadJsonl_NegativeId_InvalidArgument) {
  ExpectLine2Error("negative", "{\"input_ids\": [5, -3]}", {"input_ids[1]", "-3", ">= 0"});
}

TEST(JsonlTest, ReadJsonl_IdAboveInt64_InvalidArgument) {
  ExpectLine2Error("huge", "{\"input_ids\": [18446744073709551615]}",
                   {"18446744073709551615", "int64"});
}

TEST(JsonlTest, ReadJsonl_MissingInputIds_InvalidArgumentListsKeys) {
  ExpectLine2Error("missing", "{\"text\": \"hello\", \"labels\": [1]}",
                   {"missing \"input_ids\"", "labels, text"});
}

TEST(JsonlTest, ReadJsonl_InputIdsNotArray_InvalidArgument) {
  ExpectLine2Error("not_array", "{\"input_ids\": \"1 2 3\"}", {"\"input_ids\" is a string"});
}

TEST(JsonlTest, ReadJsonl_EmptyInputIds_InvalidArgument) {
  ExpectLine2Error("empty_ids", "{\"input_ids\": []}", {"\"input_ids\" is empty"});
}

TEST(JsonlTest, ReadJsonl_LabelsLengthMismatch_InvalidArgumentNamesBothLengths) {
  ExpectLine2Error("mismatch", "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}",
                   {"\"labels\" has 2 entries", "\"input_ids\" has 3"});
}

TEST(JsonlTest, ReadJsonl_BadLabelValue_InvalidArgument) {
  ExpectLine2Error("bad_label", "{\"input_ids\": [1, 2], \"labels\": [1, -5]}",
                   {"labels[1]", "-5", "-100"});
}

TEST(JsonlTest, ReadJsonl_InvalidJson_InvalidArgumentNamesPathLine) {
  ExpectLine2Error("invalid", "{\"input_ids\": [1, 2", {"invalid JSON"});
}

TEST(JsonlTest, ReadJsonl_NotAnObject_InvalidArgument) {
  ExpectLine2Error("array", "[1, 2, 3]", {"not a JSON object", "array"});
}

// ===========================================================================
// Conversion
// ===========================================================================

TEST(ConvertJsonlToIndexedTest, Convert_WithLabels_RoundTripsTokensAndLabels) {
  const std::string path = WriteJsonl("labels",
                                      "{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, 3]}\n"
                                      "{\"input_ids\": [65000, 5]}\n"
                                      "\n"
                                      "{\"input_ids\": [6], \"labels\": [6]}\n");
  const std::string prefix = TempPath("out");
  ASSERT_TRUE(ConvertJsonlToIndexed(path, prefix, std::nullopt).ok());
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->dtype(), DType::kUInt16);
  EXPECT_EQ(ReadIndexed(prefix), (Docs{{1, 2, 3}, {65000, 5}, {6}}));
  absl::StatusOr<std::unique_ptr<IndexedDataset>> labels = IndexedDataset::Open(prefix + ".labels");
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ((*labels)->dtype(), DType::kInt32);
  // Record 1 has no labels: its input_ids stand in.
  EXPECT_EQ(ReadIndexed(prefix + ".labels"), (Docs{{-100, -100, 3}, {65000, 5}, {6}}));
}

TEST(ConvertJsonlToIndexedTest, Convert_WithoutLabels_WritesNoLabelsDataset) {
  const std::string prefix = TempPath("out");
  WriteFileOrDie(prefix + ".labels.idx", "stale");
  WriteFileOrDie(prefix + ".labels.bin", "stale");
  const std::string path = WriteJsonl("plain", "{\"input_ids\": [1]}\n{\"input_ids\": [2, 3]}\n");
  ASSERT_TRUE(ConvertJsonlToIndexed(path, prefix, std::nullopt).ok());
  EXPECT_EQ(ReadIndexed(prefix), (Docs{{1}, {2, 3}}));
  EXPECT_FALSE(FileExists(prefix + ".labels.idx"));
  EXPECT_FALSE(FileExists(prefix + ".labels.bin"));
}

TEST(ConvertJsonlToIndexedTest, Convert_IdsAboveUInt16Threshold_PicksInt32) {
  const std::string path = WriteJsonl("big", "{\"input_ids\": [65500, 151935]}\n");
  const std::string prefix = TempPath("out");
  ASSERT_TRUE(ConvertJsonlToIndexed(path, prefix, std::nullopt).ok());
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->dtype(), DType::kInt32);
  EXPECT_EQ(ReadIndexed(prefix), (Docs{{65500, 151935}}));
}

TEST(ConvertJsonlToIndexedTest, Convert_ExplicitDType_Honoured) {
  const std::string path = WriteJsonl("explicit", "{\"input_ids\": [1, 2]}\n");
  const std::string prefix = TempPath("out");
  ASSERT_TRUE(ConvertJsonlToIndexed(path, prefix, DType::kInt64).ok());
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->dtype(), DType::kInt64);
}

TEST(ConvertJsonlToIndexedTest, Convert_TokenTooLargeForDType_InvalidArgumentWritesNothing) {
  const std::string path =
      WriteJsonl("too_big", "{\"input_ids\": [1]}\n{\"input_ids\": [2, 70000]}\n");
  const std::string prefix = TempPath("out");
  ExpectError(ConvertJsonlToIndexed(path, prefix, DType::kUInt16),
              absl::StatusCode::kInvalidArgument, {path + ":2:", "input_ids[1] = 70000", "uint16"});
  EXPECT_FALSE(FileExists(prefix + ".bin"));
  EXPECT_FALSE(FileExists(prefix + ".idx"));
}

// Labels are stored as int32: one that does not fit is found while the file
// is validated, and the previous conversion (tokens and labels) stays.
TEST(ConvertJsonlToIndexedTest, Convert_LabelBeyondInt32_InvalidArgumentKeepsThePrevious) {
  const std::string good =
      WriteJsonl("labels_ok", "{\"input_ids\": [1, 2], \"labels\": [-100, 2]}\n");
  const std::string prefix = TempPath("keep");
  ASSERT_TRUE(ConvertJsonlToIndexed(good, prefix, std::nullopt).ok());
  const std::string bin = testing::ReadFileOrDie(prefix + ".bin");
  const std::string labels = testing::ReadFileOrDie(prefix + ".labels.bin");
  const std::string bad = WriteJsonl(
      "labels_big", "{\"input_ids\": [3]}\n{\"input_ids\": [4, 5], \"labels\": [4, 3000000000]}\n");
  ExpectError(ConvertJsonlToIndexed(bad, prefix, std::nullopt), absl::StatusCode::kInvalidArgument,
              {bad + ":2:", "labels[1] = 3000000000", "int32"});
  EXPECT_EQ(testing::ReadFileOrDie(prefix + ".bin"), bin);
  EXPECT_EQ(testing::ReadFileOrDie(prefix + ".labels.bin"), labels);
  EXPECT_FALSE(FileExists(prefix + ".bin.tmp"));
  EXPECT_FALSE(FileExists(prefix + ".labels.bin.tmp"));
}

TEST(ConvertJsonlToIndexedTest, Convert_BadLine_InvalidArgumentWritesNothing) {
  const std::string path = WriteJsonl("bad", "{\"input_ids\": [1]}\n{\"input_ids\": [2.5]}\n");
  const std::string prefix = TempPath("out");
  ExpectError(ConvertJsonlToIndexed(path, prefix, std::nullopt), absl::StatusCode::kInvalidArgument,
              {path + ":2:", "2.5"});
  EXPECT_FALSE(FileExists(prefix + ".bin"));
  EXPECT_FALSE(FileExists(prefix + ".bin.tmp"));
  EXPECT_FALSE(FileExists(prefix + ".idx"));
}

TEST(ConvertJsonlToIndexedTest, Convert_NoRecords_InvalidArgument) {
  const std::string path = WriteJsonl("blank", "\n\n");
  ExpectError(ConvertJsonlToIndexed(path, TempPath("out"), std::nullopt),
              absl::StatusCode::kInvalidArgument, {path, "no records"});
}

TEST(ConvertJsonlToIndexedTest, Convert_MissingInput_NotFound) {
  const std::string path = TempPath("absent.jsonl");
  ExpectError(ConvertJsonlToIndexed(path, TempPath("out"), std::nullopt),
              absl::StatusCode::kNotFound, {path});
}

}  // namespace
}  // namespace chunkflow::dataset
