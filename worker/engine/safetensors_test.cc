#include "worker/engine/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chunkflow::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// A fresh path under the test's temporary directory, unique per test.
std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir != nullptr ? dir : ::testing::TempDir();
  if (!base.empty() && base.back() == '/') base.pop_back();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(base, "/", info->test_suite_name(), "_", info->name(), "_", name);
}

std::string MakeDir(const std::string& name) {
  const std::string dir = TempPath(name);
  EXPECT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir;
  return dir;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A safetensors file by hand: the length prefix, `header` and `data`.
std::string RawFile(const std::string& header, const std::string& data) {
  const uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& needles) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& needle : needles) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
  }
}

// One F32 tensor "w" of shape [2] in `path`.
void WriteSmallFile(const std::string& path, const std::string& name = "w") {
  const float w[2] = {1.5f, -2.0f};
  ASSERT_TRUE(WriteSafetensors(path, {{name, DType::kF32, {2}, w}}, {}).ok());
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

TEST(WriteSafetensorsTest, MixedDtypes_RoundTripsValuesShapesAndMetadata) {
  const std::string path = TempPath("mixed.safetensors");
  const std::vector<float> f32 = {0.5f, -1.25f, 3.0f, 1e-20f, -0.0f, 65504.0f};
  const std::vector<int32_t> i32 = {7, -8, 2147483647, -2147483647 - 1};
  const std::vector<float> bf16_values = {1.0f, -2.5f, 0.0078125f};  // exact in bf16
  std::vector<uint16_t> bf16;
  for (float v : bf16_values) bf16.push_back(FloatToBF16(v));
  const std::vector<uint16_t> f16 = {FloatToF16(0.333251953125f), FloatToF16(-1024.0f)};
  const std::vector<int64_t> i64 = {-5, 123456789};
  const float scalar = 42.0f;
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"f32", DType::kF32, {2, 3}, f32.data()},
                                {"i32", DType::kI32, {4}, i32.data()},
                                {"bf16", DType::kBF16, {3}, bf16.data()},
                                {"f16", DType::kF16, {1, 2}, f16.data()},
                                {"i64", DType::kI64, {2}, i64.data()},
                                {"scalar", DType::kF32, {}, &scalar}},
                               {{"format", "pt"}, {"step", "12"}})
                  .ok());

  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->names(), ElementsAre("bf16", "f16", "f32", "i32", "i64", "scalar"));
  EXPECT_EQ(r->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}}));
  const TensorInfo* info = r->Find("f32");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::kF32);
  EXPECT_THAT(info->shape, ElementsAre(2, 3));
  EXPECT_EQ(info->numel, 6);
  EXPECT_EQ(info->nbytes, 24);
  EXPECT_EQ(info->file, path);
  EXPECT_EQ(r->Find("absent"), nullptr);

  std::vector<float> out(6);
  ASSERT_TRUE(r->ReadF32("f32", {2, 3}, out.data()).ok());
  EXPECT_EQ(std::memcmp(out.data(), f32.data(), 24), 0);  // bitwise, -0.0 included
  ASSERT_TRUE(r->ReadF32("bf16", {3}, out.data()).ok());
  EXPECT_THAT(std::vector<float>(out.begin(), out.begin() + 3), ElementsAre(1.0f, -2.5f, 0.0078125f));
  ASSERT_TRUE(r->ReadF32("f16", {1, 2}, out.data()).ok());
  EXPECT_EQ(out[0], 0.333251953125f);
  EXPECT_EQ(out[1], -1024.0f);
  ASSERT_TRUE(r->ReadF32("scalar", {}, out.data()).ok());
  EXPECT_EQ(out[0], 42.0f);
  std::vector<int32_t> ints(4);
  ASSERT_TRUE(r->ReadI32("i32", {4}, ints.data()).ok());
  EXPECT_EQ(ints, i32);
  ASSERT_TRUE(r->ReadI32("i64", {2}, ints.data()).ok());
  EXPECT_THAT(std::vector<int32_t>(ints.begin(), ints.begin() + 2), ElementsAre(-5, 123456789));
  EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0) << "the .tmp file was left behind";
}

TEST(WriteSafetensorsTest, OneTensor_MatchesRustSerializerBytes) {
  // The byte layout asserted by safetensors' own Rust tests
  // (test_serialization_forced_alignement): compact JSON, space padding to 8.
  const std::string path = TempPath("attn0.safetensors");
  const float data[6] = {0, 1, 2, 3, 4, 5};
  ASSERT_TRUE(WriteSafetensors(path, {{"attn0", DType::kF32, {1, 1, 2, 3}, data}}, {}).ok());
  const std::string header =
      R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" + std::string(7, ' ');
  EXPECT_EQ(ReadBytes(path), RawFile(header, std::string(reinterpret_cast<const char*>(data), 24)));
}

TEST(WriteSafetensorsTest, NoTensors_MatchesRustSerializerBytes) {
  const std::string empty = TempPath("empty.safetensors");
  ASSERT_TRUE(WriteSafetensors(empty, {}, {}).ok());
  EXPECT_EQ(ReadBytes(empty), RawFile("{}      ", ""));
  const std::string meta = TempPath("meta.safetensors");
  ASSERT_TRUE(WriteSafetensors(meta, {}, {{"framework", "pt"}}).ok());
  EXPECT_EQ(ReadBytes(meta), RawFile(R"({"__metadata__":{"framework":"pt"}}     )", ""));
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(meta);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->names().empty());
  EXPECT_EQ(r->metadata().at("framework"), "pt");
}

TEST(WriteSafetensorsTest, MixedDtypes_DataIsContiguousAlignedAndOrderedLikeRust) {
  const std::string path = TempPath("layout.safetensors");
  const std::vector<uint8_t> zeros(64, 0);
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"a_f16", DType::kF16, {3}, zeros.data()},
                                {"b_bf16", DType::kBF16, {1}, zeros.data()},
                                {"c_f32", DType::kF32, {2}, zeros.data()},
                                {"d_i64", DType::kI64, {1}, zeros.data()},
                                {"e_i32", DType::kI32, {1}, zeros.data()},
                                {"f_f32", DType::kF32, {1}, zeros.data()}},
                               {})
                  .ok());
  const std::string bytes = ReadBytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  // The Rust serializer's order: I64, F32, I32, BF16, F16; by name within one.
  const std::vector<std::string> expected_order = {"d_i64", "c_f32",  "f_f32",
                                                   "e_i32", "b_bf16", "a_f16"};
  nlohmann::ordered_json header = nlohmann::ordered_json::parse(bytes.substr(8, n));
  std::vector<std::string> order;
  int64_t end = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    order.push_back(it.key());
    const int64_t begin = it.value()["data_offsets"][0].get<int64_t>();
    EXPECT_EQ(begin, end) << it.key() << " leaves a gap";
    const DType dtype = it.key().find("f16") != std::string::npos ? DType::kF16 : DType::kF32;
    if (it.key() == "d_i64") {
      EXPECT_EQ(begin % 8, 0);
    }
    EXPECT_EQ(begin % DTypeSize(dtype), 0) << it.key();
    end = it.value()["data_offsets"][1].get<int64_t>();
  }
  EXPECT_EQ(order, expected_order);
  EXPECT_EQ(static_cast<int64_t>(bytes.size()), 8 + static_cast<int64_t>(n) + end);
}

TEST(SafetensorsReaderTest, LargeBf16Tensor_WidensAcrossStagingChunks) {
  const std::string path = TempPath("big.safetensors");
  const int64_t n = 200'003;  // several 64K-element staging chunks plus a tail
  std::vector<uint16_t> bits(n);
  for (int64_t i = 0; i < n; ++i) bits[i] = FloatToBF16(static_cast<float>(i % 251) - 125.0f);
  ASSERT_TRUE(WriteSafetensors(path, {{"big", DType::kBF16, {n}, bits.data()}}, {}).ok());
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<float> out(n);
  ASSERT_TRUE(r->ReadF32("big", {n}, out.data()).ok());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(out[i], static_cast<float>(i % 251) - 125.0f) << "at " << i;
  }
}

TEST(SafetensorsReaderTest, OverlappingOffsets_AreAccepted) {
  const std::string path = TempPath("overlap.safetensors");
  const float v[2] = {3.0f, 4.0f};
  WriteBytes(path, RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           std::string(reinterpret_cast<const char*>(v), 8)));
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  float b = 0;
  ASSERT_TRUE(r->ReadF32("b", {1}, &b).ok());
  EXPECT_EQ(b, 4.0f);
}

// ---------------------------------------------------------------------------
// Directories and shards
// ---------------------------------------------------------------------------

TEST(SafetensorsReaderTest, Directory_OpensModelSafetensors) {
  const std::string dir = MakeDir("model");
  WriteSmallFile(dir + "/model.safetensors");
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->names(), ElementsAre("w"));
  EXPECT_EQ(r->Find("w")->file, dir + "/model.safetensors");
}

// Two shards and their index, as transformers' save_pretrained writes them.
std::string WriteShardedCheckpoint(const std::string& name) {
  const std::string dir = MakeDir(name);
  const float a[3] = {1, 2, 3};
  const int32_t b[2] = {9, -9};
  const uint16_t c[1] = {FloatToBF16(0.5f)};
  EXPECT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors",
                               {{"a", DType::kF32, {3}, a}, {"b", DType::kI32, {2}, b}},
                               {{"format", "pt"}})
                  .ok());
  EXPECT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors",
                               {{"c", DType::kBF16, {1, 1}, c}}, {{"format", "pt"}})
                  .ok());
  WriteBytes(dir + "/model.safetensors.index.json", R"({
    "metadata": {"total_size": 22},
    "weight_map": {"a": "model-00001-of-00002.safetensors",
                   "b": "model-00001-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"}})");
  return dir;
}

TEST(SafetensorsReaderTest, ShardedIndex_OpensEveryShard) {
  const std::string dir = WriteShardedCheckpoint("sharded");
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->names(), ElementsAre("a", "b", "c"));
  EXPECT_EQ(r->Find("c")->file, dir + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(r->metadata().at("format"), "pt");
  float a[3], c = 0;
  int32_t b[2];
  ASSERT_TRUE(r->ReadF32("a", {3}, a).ok());
  ASSERT_TRUE(r->ReadI32("b", {2}, b).ok());
  ASSERT_TRUE(r->ReadF32("c", {1, 1}, &c).ok());
  EXPECT_THAT(a, ElementsAre(1, 2, 3));
  EXPECT_THAT(b, ElementsAre(9, -9));
  EXPECT_EQ(c, 0.5f);
}

TEST(SafetensorsReaderTest, TensorInTwoShards_IsInvalidArgument) {
  const std::string dir = WriteShardedCheckpoint("dup");
  WriteSmallFile(dir + "/model-00002-of-00002.safetensors", "a");  // "a" also in shard 1
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"'a'", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"});
}

TEST(SafetensorsReaderTest, IndexNamesMissingShard_IsInvalidArgument) {
  const std::string dir = WriteShardedCheckpoint("missing_shard");
  ASSERT_EQ(::unlink((dir + "/model-00002-of-00002.safetensors").c_str()), 0);
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"model.safetensors.index.json", "model-00002-of-00002.safetensors",
               "does not exist"});
}

TEST(SafetensorsReaderTest, IndexPutsTensorInWrongShard_IsInvalidArgument) {
  const std::string dir = WriteShardedCheckpoint("wrong_shard");
  WriteBytes(dir + "/model.safetensors.index.json",
             R"({"weight_map": {"a": "model-00002-of-00002.safetensors",
                                "c": "model-00002-of-00002.safetensors"}})");
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"'a'", "no shard holds it"});
}

TEST(SafetensorsReaderTest, IndexWithoutWeightMap_IsInvalidArgument) {
  const std::string dir = MakeDir("no_map");
  WriteBytes(dir + "/model.safetensors.index.json", R"({"metadata": {}})");
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"weight_map"});
  WriteBytes(dir + "/model.safetensors.index.json", "{not json");
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kInvalidArgument,
              {"model.safetensors.index.json", "not valid JSON"});
}

// ---------------------------------------------------------------------------
// Open errors
// ---------------------------------------------------------------------------

TEST(SafetensorsReaderTest, MissingPath_IsNotFound) {
  const std::string path = TempPath("nope.safetensors");
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kNotFound, {path});
}

TEST(SafetensorsReaderTest, DirectoryWithoutSafetensors_IsNotFound) {
  const std::string dir = MakeDir("empty");
  ExpectError(SafetensorsReader::Open(dir).status(), absl::StatusCode::kNotFound,
              {dir, "model.safetensors", "model.safetensors.index.json"});
}

TEST(SafetensorsReaderTest, FileShorterThanLengthPrefix_IsInvalidArgument) {
  const std::string path = TempPath("short.safetensors");
  WriteBytes(path, "abc");
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "truncated", "3 bytes"});
}

TEST(SafetensorsReaderTest, HeaderLengthBeyondFile_IsInvalidArgument) {
  const std::string path = TempPath("long_header.safetensors");
  std::string bytes = RawFile(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})", "");
  const uint64_t n = 1000;
  std::memcpy(&bytes[0], &n, 8);
  WriteBytes(path, bytes);
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "header length 1000", "beyond the file"});
}

TEST(SafetensorsReaderTest, BadJsonHeader_IsInvalidArgument) {
  const std::string path = TempPath("bad_json.safetensors");
  WriteBytes(path, RawFile(R"({"w": {"dtype": "F32",)", ""));
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "not valid JSON"});
  WriteBytes(path, RawFile("[1, 2]", ""));
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "expected an object"});
}

TEST(SafetensorsReaderTest, UnknownDtype_IsInvalidArgument) {
  const std::string path = TempPath("f64.safetensors");
  WriteBytes(path, RawFile(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                           std::string(8, '\0')));
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "'w'", "\"F64\"", "F32, F16, BF16, I32, I64"});
}

TEST(SafetensorsReaderTest, TruncatedData_IsInvalidArgument) {
  const std::string path = TempPath("truncated.safetensors");
  WriteSmallFile(path);
  std::string bytes = ReadBytes(path);
  bytes.resize(bytes.size() - 1);
  WriteBytes(path, bytes);
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "'w'", "[0, 8]", "outside the 7-byte data buffer"});
}

TEST(SafetensorsReaderTest, OffsetsDisagreeWithShape_IsInvalidArgument) {
  const std::string path = TempPath("size.safetensors");
  WriteBytes(path, RawFile(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})",
                           std::string(8, '\0')));
  ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
              {path, "'w'", "span 8 bytes", "expected 6 elements of BF16 = 12 bytes", "[2,3]"});
}

TEST(SafetensorsReaderTest, WrongFieldTypes_AreInvalidArgumentNamingTheField) {
  const std::string path = TempPath("types.safetensors");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", "\"shape\""},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "shape entry is -2"},
      {R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", "\"dtype\""},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", "\"data_offsets\""},
      {R"({"w":{"dtype":"F32","shape":[2]}})", "no \"data_offsets\" field"},
      {R"({"w":[1]})", "expected an object"},
      {R"({"__metadata__":{"k":1}})", "\"__metadata__\" entry \"k\""},
  };
  for (const auto& [header, needle] : cases) {
    WriteBytes(path, RawFile(header, std::string(8, '\0')));
    ExpectError(SafetensorsReader::Open(path).status(), absl::StatusCode::kInvalidArgument,
                {path, needle});
  }
}

// ---------------------------------------------------------------------------
// Read errors
// ---------------------------------------------------------------------------

TEST(SafetensorsReaderTest, ReadMissingTensor_IsNotFound) {
  const std::string path = TempPath("w.safetensors");
  WriteSmallFile(path);
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  float out[2];
  ExpectError(r->ReadF32("x", {2}, out), absl::StatusCode::kNotFound,
              {absl::StrCat("tensor 'x' missing from ", path)});
}

TEST(SafetensorsReaderTest, ReadWithWrongShape_IsInvalidArgument) {
  const std::string path = TempPath("shape.safetensors");
  const float data[6] = {};
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kF32, {2, 3}, data}}, {}).ok());
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  float out[6];
  int32_t ints[6];
  ExpectError(r->ReadF32("x", {3, 2}, out), absl::StatusCode::kInvalidArgument,
              {"tensor 'x' has shape [2,3], expected [3,2]", path});
  ExpectError(r->ReadF32("x", {6}, out), absl::StatusCode::kInvalidArgument, {"expected [6]"});
  ExpectError(r->ReadI32("x", {3, 2}, ints), absl::StatusCode::kInvalidArgument,
              {"has shape [2,3], expected [3,2]"});
}

TEST(SafetensorsReaderTest, ReadWithWrongDtypeKind_IsInvalidArgument) {
  const std::string path = TempPath("kinds.safetensors");
  const int32_t i[1] = {1};
  const float f[1] = {1};
  ASSERT_TRUE(WriteSafetensors(path, {{"i", DType::kI32, {1}, i}, {"f", DType::kF32, {1}, f}}, {})
                  .ok());
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  float out = 0;
  int32_t iout = 0;
  ExpectError(r->ReadF32("i", {1}, &out), absl::StatusCode::kInvalidArgument,
              {"'i'", "integer dtype I32"});
  ExpectError(r->ReadI32("f", {1}, &iout), absl::StatusCode::kInvalidArgument,
              {"'f'", "float dtype F32"});
}

TEST(SafetensorsReaderTest, ReadI64OutsideInt32_IsInvalidArgument) {
  const std::string path = TempPath("i64.safetensors");
  const int64_t v[3] = {1, 2, int64_t{1} << 31};
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", DType::kI64, {3}, v}}, {}).ok());
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  int32_t out[3];
  ExpectError(r->ReadI32("ids", {3}, out), absl::StatusCode::kInvalidArgument,
              {"'ids'", "2147483648", "flat index 2", "int32"});
}

// ---------------------------------------------------------------------------
// Write errors
// ---------------------------------------------------------------------------

TEST(WriteSafetensorsTest, BadTensors_AreInvalidArgument) {
  const std::string path = TempPath("bad.safetensors");
  const float d[2] = {};
  ExpectError(WriteSafetensors(path, {{"a", DType::kF32, {1}, d}, {"a", DType::kF32, {1}, d}}, {}),
              absl::StatusCode::kInvalidArgument, {path, "'a'", "twice"});
  ExpectError(WriteSafetensors(path, {{"", DType::kF32, {1}, d}}, {}),
              absl::StatusCode::kInvalidArgument, {path, "''", "empty"});
  ExpectError(WriteSafetensors(path, {{"__metadata__", DType::kF32, {1}, d}}, {}),
              absl::StatusCode::kInvalidArgument, {"reserved"});
  ExpectError(WriteSafetensors(path, {{"n", DType::kF32, {2}, nullptr}}, {}),
              absl::StatusCode::kInvalidArgument, {path, "'n'", "null data", "8 bytes"});
  ExpectError(WriteSafetensors(path, {{"neg", DType::kF32, {-1}, d}}, {}),
              absl::StatusCode::kInvalidArgument, {"'neg'", "[-1]"});
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "a rejected write created the file";
  EXPECT_TRUE(WriteSafetensors(path, {{"empty", DType::kF32, {0, 4}, nullptr}}, {}).ok());
}

TEST(WriteSafetensorsTest, MissingParentDirectory_IsInternalNamingPathAndErrno) {
  const std::string path = TempPath("no_such_dir") + "/x.safetensors";
  const float d[1] = {};
  ExpectError(WriteSafetensors(path, {{"a", DType::kF32, {1}, d}}, {}),
              absl::StatusCode::kInternal, {path + ".tmp", "No such file or directory"});
}

TEST(WriteSafetensorsTest, ExistingFile_IsReplaced) {
  const std::string path = TempPath("replace.safetensors");
  WriteSmallFile(path, "old");
  WriteSmallFile(path, "new");
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->names(), ElementsAre("new"));
}

// ---------------------------------------------------------------------------
// bf16 and f16 conversions
// ---------------------------------------------------------------------------

float Bits(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

TEST(Bf16Test, EveryBf16Value_RoundTripsExactly) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = BF16ToFloat(static_cast<uint16_t>(b));
    uint32_t widened;
    std::memcpy(&widened, &f, 4);
    ASSERT_EQ(widened, b << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(f)))) << std::hex << b;
    } else {
      ASSERT_EQ(FloatToBF16(f), b) << std::hex << b;
    }
  }
}

TEST(Bf16Test, FloatToBF16_RoundsToNearestTiesToEven) {
  EXPECT_EQ(FloatToBF16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBF16(Bits(0x3f808000)), 0x3f80);  // tie, 0x3f80 is even: down
  EXPECT_EQ(FloatToBF16(Bits(0x3f818000)), 0x3f82);  // tie, 0x3f81 is odd: up
  EXPECT_EQ(FloatToBF16(Bits(0x3f808001)), 0x3f81);  // above the tie: up
  EXPECT_EQ(FloatToBF16(Bits(0x3f807fff)), 0x3f80);  // below the tie: down
  EXPECT_EQ(FloatToBF16(-Bits(0x3f818000)), 0xbf82);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to +inf
  EXPECT_EQ(FloatToBF16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(FloatToBF16(Bits(0x00000001)), 0x0000);  // tiny denormal to +0
  const uint16_t nan = FloatToBF16(Bits(0x7f800001));  // signalling NaN, payload in low bits
  EXPECT_TRUE(std::isnan(BF16ToFloat(nan))) << std::hex << nan;
  EXPECT_EQ(BF16ToFloat(0x4049), 3.140625f);
}

TEST(F16Test, EveryF16Value_RoundTripsExactly) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(FloatToF16(f), h) << std::hex << h << " = " << f;
    }
  }
}

TEST(F16Test, KnownValues_ConvertExactlyAndRoundToNearestEven) {
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToFloat(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
  EXPECT_TRUE(std::isinf(F16ToFloat(0x7c00)));
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);   // below the halfway point to 65536
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);   // halfway: ties to even = inf
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);         // tie between 0 and 1 ulp
  EXPECT_EQ(FloatToF16(std::ldexp(1.5f, -25)), 0x0001);         // above the tie
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 ulp ties to even 2
  EXPECT_EQ(FloatToF16(std::ldexp(1023.5f, -24)), 0x0400);      // carries into the normals
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie at 1: stays even
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie at odd: up
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
}

}  // namespace
}  // namespace chunkflow::engine
