// Helpers shared by the dataset tests: temporary paths, whole-file I/O, error
// matching, and a raw Megatron-LM writer for files the real writer refuses to
// produce (several sequences per document, empty documents).
//
//   const std::string prefix = TempPath("corrupt");
//   WriteRawMegatron(prefix, /*dtype_code=*/8, {{1, 2}, {3}}, {0, 2});
//   ExpectError(IndexedDataset::Open(prefix).status(), absl::StatusCode::kDataLoss, ".idx");

#ifndef CHUNKFLOW_DATASET_TEST_UTIL_H_
#define CHUNKFLOW_DATASET_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::dataset::testing {

// A fresh path under the test's temporary directory (nothing is created).
inline std::string TempPath(absl::string_view name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir != nullptr ? dir : ::testing::TempDir();
  if (!base.empty() && base.back() == '/') base.pop_back();
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(base, "/", info != nullptr ? info->name() : "test", "_", name);
}

inline std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFileOrDie(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// Overwrites sizeof(T) bytes of `path` at `offset` with `value` (little-endian).
template <typename T>
void PatchFile(const std::string& path, int64_t offset, T value) {
  std::string bytes = ReadFileOrDie(path);
  ASSERT_LE(offset + static_cast<int64_t>(sizeof(T)), static_cast<int64_t>(bytes.size()));
  std::memcpy(&bytes[offset], &value, sizeof(T));
  WriteFileOrDie(path, bytes);
}

// Checks the code and that the message contains every needle.
inline void ExpectError(const absl::Status& status, absl::StatusCode code,
                        std::vector<std::string> needles) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& needle : needles) {
    EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(needle));
  }
}

template <typename T>
void AppendLE(T v, std::string* out) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out->append(b, sizeof(T));
}

// Writes <prefix>.bin/.idx in Megatron-LM's layout with int32 (code 4) or
// uint16 (code 8) tokens, any sequences and any document indices.
inline void WriteRawMegatron(const std::string& prefix, int dtype_code,
                             const std::vector<std::vector<int64_t>>& sequences,
                             const std::vector<int64_t>& document_indices) {
  const int64_t item = dtype_code == 8 ? 2 : 4;
  std::string bin, idx("MMIDIDX\0\0", 9);
  std::vector<int64_t> pointers;
  for (const std::vector<int64_t>& seq : sequences) {
    pointers.push_back(static_cast<int64_t>(bin.size()));
    for (int64_t t : seq) {
      if (item == 2) AppendLE<uint16_t>(static_cast<uint16_t>(t), &bin);
      if (item == 4) AppendLE<int32_t>(static_cast<int32_t>(t), &bin);
    }
  }
  AppendLE<uint64_t>(1, &idx);
  AppendLE<uint8_t>(static_cast<uint8_t>(dtype_code), &idx);
  AppendLE<uint64_t>(sequences.size(), &idx);
  AppendLE<uint64_t>(document_indices.size(), &idx);
  for (const auto& seq : sequences) AppendLE<int32_t>(static_cast<int32_t>(seq.size()), &idx);
  for (int64_t p : pointers) AppendLE<int64_t>(p, &idx);
  for (int64_t d : document_indices) AppendLE<int64_t>(d, &idx);
  WriteFileOrDie(prefix + ".bin", bin);
  WriteFileOrDie(prefix + ".idx", idx);
}

}  // namespace chunkflow::dataset::testing

#endif  // CHUNKFLOW_DATASET_TEST_UTIL_H_
