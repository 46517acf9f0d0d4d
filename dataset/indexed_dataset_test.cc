#include "dataset/indexed_dataset.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataset/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chunkflow::dataset {
namespace {

using ::chunkflow::dataset::testing::ExpectError;
using ::chunkflow::dataset::testing::PatchFile;
using ::chunkflow::dataset::testing::ReadFileOrDie;
using ::chunkflow::dataset::testing::TempPath;
using ::chunkflow::dataset::testing::WriteFileOrDie;
using ::chunkflow::dataset::testing::WriteRawMegatron;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

using Docs = std::vector<std::vector<int64_t>>;

constexpr int64_t kHeader = 34;

bool FileExists(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f != nullptr) std::fclose(f);
  return f != nullptr;
}

void WriteWithWriter(const std::string& prefix, DType dtype, const Docs& docs) {
  absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> w =
      IndexedDatasetWriter::Create(prefix, dtype);
  ASSERT_TRUE(w.ok()) << w.status();
  for (const std::vector<int64_t>& doc : docs) ASSERT_TRUE((*w)->AddDocument(doc).ok());
  ASSERT_TRUE((*w)->Finish().ok());
}

Docs ReadAll(const IndexedDataset& ds) {
  Docs out(ds.num_documents());
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    EXPECT_TRUE(ds.ReadDocument(d, &out[d]).ok());
  }
  return out;
}

// A valid uint16 dataset of three one-sequence documents (lengths 3, 1, 2) for
// the corruption tests to damage.
std::string ValidPrefix(absl::string_view name) {
  const std::string prefix = TempPath(name);
  WriteWithWriter(prefix, DType::kUInt16, {{1, 2, 3}, {4}, {5, 6}});
  return prefix;
}

// ===========================================================================
// DType helpers
// ===========================================================================

TEST(SmallestDTypeForTest, SmallestDTypeFor_BelowMegatronThreshold_ReturnsUInt16) {
  EXPECT_EQ(*SmallestDTypeFor(0), DType::kUInt16);
  EXPECT_EQ(*SmallestDTypeFor(65499), DType::kUInt16);
}

TEST(SmallestDTypeForTest, SmallestDTypeFor_AtOrAboveThreshold_ReturnsInt32) {
  EXPECT_EQ(*SmallestDTypeFor(65500), DType::kInt32);
  EXPECT_EQ(*SmallestDTypeFor(151935), DType::kInt32);
  EXPECT_EQ(*SmallestDTypeFor(std::numeric_limits<int32_t>::max()), DType::kInt32);
}

TEST(SmallestDTypeForTest, SmallestDTypeFor_BeyondInt32_ReturnsInt64) {
  EXPECT_EQ(*SmallestDTypeFor(int64_t{1} << 31), DType::kInt64);
}

TEST(SmallestDTypeForTest, SmallestDTypeFor_Negative_InvalidArgument) {
  ExpectError(SmallestDTypeFor(-1).status(), absl::StatusCode::kInvalidArgument, {"-1"});
}

TEST(DTypeTest, DTypeNameAndSize_EveryDType_MatchMegatron) {
  EXPECT_EQ(DTypeName(DType::kUInt16), "uint16");
  EXPECT_EQ(DTypeSize(DType::kUInt16), 2);
  EXPECT_EQ(DTypeName(DType::kInt64), "int64");
  EXPECT_EQ(DTypeSize(DType::kInt64), 8);
  EXPECT_EQ(static_cast<int>(DType::kUInt16), 8);
  EXPECT_EQ(static_cast<int>(DType::kInt32), 4);
}

// ===========================================================================
// Writer -> reader round trips
// ===========================================================================

struct DTypeCase {
  DType dtype;
  int64_t min;
  int64_t max;
};

TEST(IndexedDatasetWriterTest, AddDocument_EachIntegerDType_RoundTripsExactly) {
  const std::vector<DTypeCase> cases = {
      {DType::kUInt8, 0, 255},
      {DType::kInt8, -128, 127},
      {DType::kInt16, -32768, 32767},
      {DType::kInt32, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()},
      {DType::kInt64, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()},
      {DType::kUInt16, 0, 65535},
  };
  for (const DTypeCase& c : cases) {
    SCOPED_TRACE(DTypeName(c.dtype));
    const std::string prefix = TempPath(DTypeName(c.dtype));
    const Docs docs = {{c.min, 0, c.max}, {1}, {c.max, c.max - 1, 2, 3, c.min + 1}};
    WriteWithWriter(prefix, c.dtype, docs);
    absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
    ASSERT_TRUE(ds.ok()) << ds.status();
    EXPECT_EQ((*ds)->dtype(), c.dtype);
    EXPECT_EQ((*ds)->num_documents(), 3);
    EXPECT_EQ((*ds)->num_sequences(), 3);
    EXPECT_THAT((*ds)->document_lengths(), ElementsAre(3, 1, 5));
    EXPECT_EQ((*ds)->document_length(2), 5);
    EXPECT_EQ(ReadAll(**ds), docs);
  }
}

TEST(IndexedDatasetWriterTest, Finish_TwoDocuments_WritesMegatronBytesExactly) {
  const std::string prefix = TempPath("bytes");
  WriteWithWriter(prefix, DType::kUInt16, {{1, 2, 3}, {258}});
  // What Megatron's _IndexWriter writes for sequence_lengths [3, 1] and
  // document_indices [0, 1, 2] with numpy.uint16.
  std::string idx("MMIDIDX\0\0", 9);
  idx += std::string("\x01\0\0\0\0\0\0\0", 8);                   // version 1
  idx += std::string("\x08", 1);                                 // dtype code 8 = uint16
  idx += std::string("\x02\0\0\0\0\0\0\0", 8);                   // sequence_count
  idx += std::string("\x03\0\0\0\0\0\0\0", 8);                   // document_count
  idx += std::string("\x03\0\0\0\x01\0\0\0", 8);                 // sequence_lengths
  idx += std::string("\0\0\0\0\0\0\0\0\x06\0\0\0\0\0\0\0", 16);  // sequence_pointers
  idx += std::string("\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0", 24);
  EXPECT_EQ(ReadFileOrDie(prefix + ".idx"), idx);
  EXPECT_EQ(ReadFileOrDie(prefix + ".bin"), std::string("\x01\0\x02\0\x03\0\x02\x01", 8));
}

TEST(IndexedDatasetWriterTest, Finish_NoDocuments_OpensAsEmptyDataset) {
  const std::string prefix = TempPath("empty");
  WriteWithWriter(prefix, DType::kInt32, {});
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->num_documents(), 0);
  EXPECT_TRUE((*ds)->document_lengths().empty());
}

// Prepare writes everything as .tmp files; only Commit renames them, and a
// writer destroyed before Commit leaves nothing behind.
TEST(IndexedDatasetWriterTest, PrepareThenCommit_OnlyCommitPublishes) {
  const std::string prefix = TempPath("two_phase");
  {
    auto w = IndexedDatasetWriter::Create(prefix, DType::kInt32);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE((*w)->AddDocument({1, 2}).ok());
    ASSERT_TRUE((*w)->Prepare().ok());
    EXPECT_TRUE(FileExists(prefix + ".idx.tmp"));
    EXPECT_FALSE(FileExists(prefix + ".idx"));
  }
  EXPECT_FALSE(FileExists(prefix + ".idx.tmp"));
  EXPECT_FALSE(FileExists(prefix + ".bin.tmp"));
  EXPECT_FALSE(FileExists(prefix + ".idx"));
  auto w = IndexedDatasetWriter::Create(prefix, DType::kInt32);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->AddDocument({1, 2}).ok());
  ASSERT_TRUE((*w)->Prepare().ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->num_documents(), 1);
}

TEST(IndexedDatasetWriterTest, AddDocument_TokenTooLargeForDType_InvalidArgumentNamesValue) {
  auto w = IndexedDatasetWriter::Create(TempPath("big"), DType::kUInt16);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->AddDocument({1, 2}).ok());
  ExpectError((*w)->AddDocument({5, 70000}), absl::StatusCode::kInvalidArgument,
              {"70000", "uint16", "document 1", "token 1"});
}

TEST(IndexedDatasetWriterTest, AddDocument_NegativeTokenForUnsignedDType_InvalidArgument) {
  auto w = IndexedDatasetWriter::Create(TempPath("neg"), DType::kUInt8);
  ASSERT_TRUE(w.ok());
  ExpectError((*w)->AddDocument({-1}), absl::StatusCode::kInvalidArgument, {"-1", "uint8"});
}

TEST(IndexedDatasetWriterTest, AddDocument_Empty_InvalidArgument) {
  auto w = IndexedDatasetWriter::Create(TempPath("e"), DType::kUInt16);
  ASSERT_TRUE(w.ok());
  ExpectError((*w)->AddDocument({}), absl::StatusCode::kInvalidArgument, {"document 0 is empty"});
}

TEST(IndexedDatasetWriterTest, AddDocument_AfterFinish_FailedPrecondition) {
  auto w = IndexedDatasetWriter::Create(TempPath("f"), DType::kUInt16);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Finish().ok());
  ExpectError((*w)->AddDocument({1}), absl::StatusCode::kFailedPrecondition, {"after Finish"});
  ExpectError((*w)->Finish(), absl::StatusCode::kFailedPrecondition, {"twice"});
}

TEST(IndexedDatasetWriterTest, Destructor_WithoutFinish_LeavesNoFiles) {
  const std::string prefix = TempPath("abandoned");
  {
    auto w = IndexedDatasetWriter::Create(prefix, DType::kUInt16);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddDocument({1, 2}).ok());
    EXPECT_TRUE(FileExists(prefix + ".bin.tmp"));
  }
  EXPECT_FALSE(FileExists(prefix + ".bin.tmp"));
  EXPECT_FALSE(FileExists(prefix + ".bin"));
  EXPECT_FALSE(FileExists(prefix + ".idx"));
}

TEST(IndexedDatasetWriterTest, Create_MissingDirectory_NotFoundNamesPath) {
  const std::string prefix = TempPath("no_such_dir") + "/x";
  ExpectError(IndexedDatasetWriter::Create(prefix, DType::kUInt16).status(),
              absl::StatusCode::kNotFound, {prefix + ".bin.tmp"});
}

TEST(IndexedDatasetTest, ReadDocument_OutOfRange_InvalidArgument) {
  const std::string prefix = ValidPrefix("range");
  auto ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok());
  std::vector<int64_t> tokens;
  ExpectError((*ds)->ReadDocument(3, &tokens), absl::StatusCode::kInvalidArgument,
              {"document 3", "[0, 3)"});
  ExpectError((*ds)->ReadDocument(-1, &tokens), absl::StatusCode::kInvalidArgument,
              {"document -1"});
}

// ===========================================================================
// Files written by the independent Python writer (testdata/)
// ===========================================================================

std::string TestdataPath(absl::string_view name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/chunkflow/dataset/testdata/", name);
}

void CheckFixture(const std::string& name, DType dtype, int64_t sequences) {
  const nlohmann::json expected =
      nlohmann::json::parse(ReadFileOrDie(TestdataPath("expected.json")))[name];
  ASSERT_TRUE(expected.is_object()) << name << " missing from expected.json";
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(TestdataPath(name));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->dtype(), dtype);
  EXPECT_EQ(static_cast<int>((*ds)->dtype()), expected["dtype_code"].get<int>());
  EXPECT_EQ((*ds)->num_sequences(), sequences);
  EXPECT_EQ((*ds)->num_sequences(), expected["num_sequences"].get<int64_t>());
  const Docs want = expected["documents"].get<Docs>();
  ASSERT_EQ((*ds)->num_documents(), static_cast<int64_t>(want.size()));
  for (size_t d = 0; d < want.size(); ++d) {
    SCOPED_TRACE(absl::StrCat(name, " document ", d));
    std::vector<int64_t> tokens;
    ASSERT_TRUE((*ds)->ReadDocument(static_cast<int64_t>(d), &tokens).ok());
    EXPECT_THAT(tokens, ElementsAreArray(want[d]));
    EXPECT_EQ((*ds)->document_length(static_cast<int64_t>(d)),
              static_cast<int64_t>(want[d].size()));
  }
}

TEST(IndexedDatasetTest, Open_MegatronUInt16Fixture_EveryTokenMatchesExpected) {
  CheckFixture("megatron_uint16", DType::kUInt16, 6);  // document 1 is two sequences
}

TEST(IndexedDatasetTest, Open_MegatronInt32Fixture_EveryTokenMatchesExpected) {
  CheckFixture("megatron_int32", DType::kInt32, 5);  // document 2 is three sequences
}

TEST(IndexedDatasetTest, Open_MegatronSequenceModesTrailer_Accepted) {
  CheckFixture("megatron_int32_modes", DType::kInt32, 3);
}

// ===========================================================================
// Corrupt and missing files
// ===========================================================================

TEST(IndexedDatasetTest, Open_MissingIdx_NotFoundNamesPath) {
  const std::string prefix = TempPath("nothing");
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kNotFound,
              {prefix + ".idx", "no such file"});
}

TEST(IndexedDatasetTest, Open_MissingBin_NotFoundNamesPath) {
  const std::string prefix = ValidPrefix("nobin");
  ASSERT_EQ(std::remove((prefix + ".bin").c_str()), 0);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kNotFound,
              {prefix + ".bin", "no such file"});
}

TEST(IndexedDatasetTest, Open_BadMagic_DataLossNamesFileAndMagic) {
  const std::string prefix = ValidPrefix("magic");
  PatchFile<char>(prefix + ".idx", 0, 'X');
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "bad magic", "584d494449445800", "MMIDIDX"});
}

TEST(IndexedDatasetTest, Open_BadVersion_DataLossNamesVersion) {
  const std::string prefix = ValidPrefix("version");
  PatchFile<uint64_t>(prefix + ".idx", 9, 2);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "version 2", "expected 1"});
}

TEST(IndexedDatasetTest, Open_UnknownDTypeCode_DataLossNamesCode) {
  const std::string prefix = ValidPrefix("dtype");
  PatchFile<uint8_t>(prefix + ".idx", 17, 9);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "dtype code 9"});
}

TEST(IndexedDatasetTest, Open_FloatDTypeCode_DataLossSaysFloat) {
  const std::string prefix = ValidPrefix("float");
  PatchFile<uint8_t>(prefix + ".idx", 17, 7);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "dtype code 7", "float32", "integer dtype"});
}

TEST(IndexedDatasetTest, Open_TruncatedHeader_DataLoss) {
  const std::string prefix = ValidPrefix("short_header");
  WriteFileOrDie(prefix + ".idx", ReadFileOrDie(prefix + ".idx").substr(0, 20));
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "truncated header", "20 bytes"});
}

TEST(IndexedDatasetTest, Open_TruncatedArrays_DataLossNamesCounts) {
  const std::string prefix = ValidPrefix("short_arrays");
  const std::string idx = ReadFileOrDie(prefix + ".idx");
  WriteFileOrDie(prefix + ".idx", idx.substr(0, idx.size() - 1));
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "truncated", "3 sequences", "4 document indices"});
}

TEST(IndexedDatasetTest, Open_HugeSequenceCount_DataLossWithoutOverflow) {
  const std::string prefix = ValidPrefix("huge_count");
  PatchFile<uint64_t>(prefix + ".idx", 18, std::numeric_limits<uint64_t>::max() / 4);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "truncated"});
}

TEST(IndexedDatasetTest, Open_TrailingBytes_Accepted) {
  const std::string prefix = ValidPrefix("trailing");
  WriteFileOrDie(prefix + ".idx", ReadFileOrDie(prefix + ".idx") + std::string("\x01\x02", 2));
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT((*ds)->document_lengths(), ElementsAre(3, 1, 2));
}

TEST(IndexedDatasetTest, Open_PointerBeyondBin_DataLossNamesBothFiles) {
  const std::string prefix = ValidPrefix("pointer");
  PatchFile<int64_t>(prefix + ".idx", kHeader + 3 * 4 + 2 * 8, 10);  // sequence 2 at byte 10
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "sequence 2", "pointer 10", prefix + ".bin", "12 bytes"});
}

TEST(IndexedDatasetTest, Open_TruncatedBin_DataLoss) {
  const std::string prefix = ValidPrefix("short_bin");
  WriteFileOrDie(prefix + ".bin", ReadFileOrDie(prefix + ".bin").substr(0, 11));
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {"sequence 2", prefix + ".bin", "11 bytes"});
}

TEST(IndexedDatasetTest, Open_NegativePointer_DataLoss) {
  const std::string prefix = ValidPrefix("negptr");
  PatchFile<int64_t>(prefix + ".idx", kHeader + 3 * 4, -2);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "sequence 0", "pointer -2"});
}

TEST(IndexedDatasetTest, Open_EmptySequence_DataLossNamesSequence) {
  const std::string prefix = ValidPrefix("empty_seq");
  PatchFile<int32_t>(prefix + ".idx", kHeader + 1 * 4, 0);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "sequence 1 is empty"});
}

TEST(IndexedDatasetTest, Open_NegativeLength_DataLossNamesSequence) {
  const std::string prefix = ValidPrefix("neg_len");
  PatchFile<int32_t>(prefix + ".idx", kHeader + 2 * 4, -5);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "sequence 2", "negative length -5"});
}

TEST(IndexedDatasetTest, Open_DocumentIndicesNotEndingAtCount_DataLoss) {
  const std::string prefix = ValidPrefix("doc_end");
  PatchFile<int64_t>(prefix + ".idx", kHeader + 3 * 12 + 3 * 8, 2);  // last index 3 -> 2
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "ends at 2", "sequence_count 3"});
}

TEST(IndexedDatasetTest, Open_DocumentIndicesNotStartingAtZero_DataLoss) {
  const std::string prefix = ValidPrefix("doc_start");
  PatchFile<int64_t>(prefix + ".idx", kHeader + 3 * 12, 1);
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "document_indices[0] is 1", "expected 0"});
}

TEST(IndexedDatasetTest, Open_DocumentIndicesDecreasing_DataLoss) {
  const std::string prefix = TempPath("doc_decrease");
  WriteRawMegatron(prefix, 8, {{1}, {2}, {3}}, {0, 2, 1, 3});
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "document_indices[2] = 1", "must not decrease"});
}

TEST(IndexedDatasetTest, Open_DocumentIndexBeyondCount_DataLoss) {
  const std::string prefix = TempPath("doc_beyond");
  WriteRawMegatron(prefix, 8, {{1}, {2}}, {0, 5, 2});
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "document_indices[1] = 5", "exceeds sequence_count 2"});
}

TEST(IndexedDatasetTest, Open_ZeroDocumentCount_DataLoss) {
  const std::string prefix = TempPath("no_doc_index");
  WriteRawMegatron(prefix, 8, {}, {});
  ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss,
              {prefix + ".idx", "document_count is 0"});
}

TEST(IndexedDatasetTest, Open_RepeatedDocumentIndex_EmptyDocumentHasLengthZero) {
  const std::string prefix = TempPath("empty_doc");
  WriteRawMegatron(prefix, 4, {{7, 8}, {9}}, {0, 1, 1, 2});
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT((*ds)->document_lengths(), ElementsAre(2, 0, 1));
  EXPECT_EQ(ReadAll(**ds), (Docs{{7, 8}, {}, {9}}));
}

}  // namespace
}  // namespace chunkflow::dataset
