#include "dataset/tokens.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "dataset/dataset.h"
#include "dataset/jsonl.h"
#include "gtest/gtest.h"

namespace chunkflow::dataset {
namespace {

std::string Tmp(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  return std::string(t ? t : "/tmp") + "/" + name;
}

TEST(TokenSource, Synthetic_LengthsMatchDatasetAndTokensInVocab) {
  const std::string spec = "synthetic:lmsys:n=50,seed=4,max=3000";
  absl::StatusOr<std::unique_ptr<TokenSource>> src = TokenSource::Open(spec, 100);
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_EQ((*src)->lengths(), *ReadDocumentLengths(spec));
  std::vector<int32_t> t, l, again;
  ASSERT_TRUE((*src)->Read(7, &t, &l).ok());
  EXPECT_EQ(static_cast<int64_t>(t.size()), (*src)->lengths()[7]);
  EXPECT_TRUE(l.empty());
  for (int32_t x : t) ASSERT_TRUE(x >= 0 && x < 100);
  ASSERT_TRUE((*src)->Read(7, &again, &l).ok());
  EXPECT_EQ(t, again);
  EXPECT_EQ((*src)->Read(50, &t, &l).code(), absl::StatusCode::kOutOfRange);
}

TEST(TokenSource, JsonlAndConvertedIndexed_SameTokensAndLabels) {
  const std::string path = Tmp("tok.jsonl");
  std::ofstream(path) << "{\"input_ids\": [5, 6, 7], \"labels\": [-100, 6, 7]}\n"
                      << "{\"input_ids\": [8, 9]}\n";
  absl::StatusOr<std::unique_ptr<TokenSource>> j = TokenSource::Open(path, 0);
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_TRUE(ConvertJsonlToIndexed(path, Tmp("tok"), std::nullopt).ok());
  absl::StatusOr<std::unique_ptr<TokenSource>> m = TokenSource::Open(Tmp("tok"), 0);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<int32_t> t, l;
  ASSERT_TRUE((*j)->Read(0, &t, &l).ok());
  EXPECT_EQ(t, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(l, (std::vector<int32_t>{-100, 6, 7}));
  ASSERT_TRUE((*m)->Read(0, &t, &l).ok());
  EXPECT_EQ(t, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(l, (std::vector<int32_t>{-100, 6, 7}));
  ASSERT_TRUE((*j)->Read(1, &t, &l).ok());
  EXPECT_TRUE(l.empty());  // no labels: labels = tokens
  ASSERT_TRUE((*m)->Read(1, &t, &l).ok());
  EXPECT_EQ(t, (std::vector<int32_t>{8, 9}));
  EXPECT_EQ(l, (std::vector<int32_t>{8, 9}));  // the converter's labels file repeats them
}

// CountTargets agrees with the engine's rule (labels[p] != -100 for p >= 1,
// tokens when there are no labels) on every kind of source.
TEST(TokenSource, CountTargets_MatchesTheEngineRule) {
  const std::string path = Tmp("targets.jsonl");
  std::ofstream(path) << "{\"input_ids\": [5, 6, 7, 8], \"labels\": [-100, -100, 7, 8]}\n"
                      << "{\"input_ids\": [8, 9, 3]}\n"
                      << "{\"input_ids\": [4]}\n";
  std::unique_ptr<TokenSource> j = *TokenSource::Open(path, 0);
  EXPECT_EQ(*j->CountTargets(0), 2);
  EXPECT_EQ(*j->CountTargets(1), 2);
  EXPECT_EQ(*j->CountTargets(2), 0);
  ASSERT_TRUE(ConvertJsonlToIndexed(path, Tmp("targets"), std::nullopt).ok());
  std::unique_ptr<TokenSource> m = *TokenSource::Open(Tmp("targets"), 0);
  for (int64_t d = 0; d < 3; ++d) EXPECT_EQ(*m->CountTargets(d), *j->CountTargets(d)) << d;
  std::unique_ptr<TokenSource> syn = *TokenSource::Open("synthetic:lmsys:n=20,seed=2,max=900", 50);
  for (int64_t d = 0; d < 20; ++d) {
    std::vector<int32_t> t, l;
    ASSERT_TRUE(syn->Read(d, &t, &l).ok());
    EXPECT_EQ(*syn->CountTargets(d), static_cast<int64_t>(t.size()) - 1) << d;
  }
  EXPECT_EQ(syn->CountTargets(20).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(TokenSource, MissingPath_NotFound) {
  EXPECT_EQ(TokenSource::Open("/no/such/prefix", 0).status().code(), absl::StatusCode::kNotFound);
}

// Labels come as a pair of files or not at all: half a pair would read as
// "no labels" and train on the prompts the labels mask with -100.
TEST(TokenSource, HalfTheLabelsFiles_NotFoundNamingTheMissingOne) {
  const std::string path = Tmp("half.jsonl");
  std::ofstream(path) << "{\"input_ids\": [5, 6, 7], \"labels\": [-100, 6, 7]}\n";
  for (const char* gone : {".labels.bin", ".labels.idx"}) {
    const std::string prefix = Tmp(std::string("half_") + (gone + 8));  // half_bin, half_idx
    ASSERT_TRUE(ConvertJsonlToIndexed(path, prefix, std::nullopt).ok());
    ASSERT_TRUE(TokenSource::Open(prefix, 0).ok());
    ASSERT_EQ(std::remove((prefix + gone).c_str()), 0);
    absl::Status s = TokenSource::Open(prefix, 0).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_NE(s.message().find(prefix + gone + " does not"), std::string::npos) << s;
  }
}

TEST(TokenSource, LabelsOfOtherDocumentLengths_InvalidArgumentNamingTheDocument) {
  const std::string a = Tmp("pair_a.jsonl"), b = Tmp("pair_b.jsonl");
  std::ofstream(a) << "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2, 3]}\n"
                   << "{\"input_ids\": [4, 5], \"labels\": [4, 5]}\n";
  std::ofstream(b) << "{\"input_ids\": [1, 2], \"labels\": [1, 2]}\n"
                   << "{\"input_ids\": [4, 5, 6], \"labels\": [4, 5, 6]}\n";
  ASSERT_TRUE(ConvertJsonlToIndexed(a, Tmp("pair_a"), std::nullopt).ok());
  ASSERT_TRUE(ConvertJsonlToIndexed(b, Tmp("pair_b"), std::nullopt).ok());
  for (const char* ext : {".idx", ".bin"}) {
    std::ifstream from(Tmp("pair_b.labels") + ext, std::ios::binary);
    std::ofstream(Tmp("pair_a.labels") + ext, std::ios::binary) << from.rdbuf();
  }
  absl::Status s = TokenSource::Open(Tmp("pair_a"), 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("document 0 has 2 labels for 3 tokens"), std::string::npos) << s;
}

TEST(TokenSource, NoDocuments_InvalidArgumentNamingTheFile) {
  const std::string path = Tmp("none.jsonl");
  std::ofstream(path) << "\n";
  absl::Status s = TokenSource::Open(path, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(path + ": the dataset has no documents"), std::string::npos) << s;
}

}  // namespace
}  // namespace chunkflow::dataset
