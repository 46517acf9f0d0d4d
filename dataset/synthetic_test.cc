#include "dataset/synthetic.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataset/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::dataset {
namespace {

using ::chunkflow::dataset::testing::ExpectError;
using ::testing::ElementsAre;

SyntheticSpec Parse(const std::string& spec) {
  absl::StatusOr<SyntheticSpec> s = ParseSyntheticSpec(spec);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : SyntheticSpec{};
}

// Fraction of lengths in [lo, hi].
double Fraction(const std::vector<int64_t>& lengths, int64_t lo, int64_t hi) {
  const int64_t n =
      std::count_if(lengths.begin(), lengths.end(), [&](int64_t x) { return x >= lo && x <= hi; });
  return static_cast<double>(n) / static_cast<double>(lengths.size());
}

// ===========================================================================
// Spec parsing
// ===========================================================================

TEST(ParseSyntheticSpecTest, Parse_MixOnly_UsesDefaults) {
  const SyntheticSpec s = Parse("synthetic:paper-eval");
  EXPECT_EQ(s.mix, "paper-eval");
  EXPECT_EQ(s.n, 10000);
  EXPECT_EQ(s.seed, 1u);
  EXPECT_EQ(s.max_length, 131072);
  EXPECT_EQ(Parse("synthetic:lmsys").max_length, 300000);
  EXPECT_EQ(Parse("synthetic:uniform:n=5").max_length, 131072);
}

TEST(ParseSyntheticSpecTest, Parse_AllKeys_Parsed) {
  const SyntheticSpec s = Parse("synthetic:lmsys:max=5000,n=20,seed=18446744073709551615");
  EXPECT_EQ(s.mix, "lmsys");
  EXPECT_EQ(s.n, 20);
  EXPECT_EQ(s.seed, 18446744073709551615u);
  EXPECT_EQ(s.max_length, 5000);
}

TEST(ParseSyntheticSpecTest, Parse_MissingPrefix_InvalidArgument) {
  ExpectError(ParseSyntheticSpec("lmsys:n=5").status(), absl::StatusCode::kInvalidArgument,
              {"lmsys:n=5", "synthetic:"});
}

TEST(ParseSyntheticSpecTest, Parse_UnknownMix_InvalidArgumentListsMixes) {
  ExpectError(ParseSyntheticSpec("synthetic:zipf:n=5").status(), absl::StatusCode::kInvalidArgument,
              {"unknown mix 'zipf'", "paper-eval, lmsys, uniform"});
}

TEST(ParseSyntheticSpecTest, Parse_UnknownKey_InvalidArgumentNamesKey) {
  ExpectError(ParseSyntheticSpec("synthetic:uniform:n=5,min=3").status(),
              absl::StatusCode::kInvalidArgument, {"unknown key 'min'", "n, seed, max"});
}

TEST(ParseSyntheticSpecTest, Parse_BadValues_InvalidArgumentNamesValue) {
  ExpectError(ParseSyntheticSpec("synthetic:uniform:n=0").status(),
              absl::StatusCode::kInvalidArgument, {"n=0"});
  ExpectError(ParseSyntheticSpec("synthetic:uniform:n=ten").status(),
              absl::StatusCode::kInvalidArgument, {"n=ten"});
  ExpectError(ParseSyntheticSpec("synthetic:uniform:max=-4").status(),
              absl::StatusCode::kInvalidArgument, {"max=-4"});
  ExpectError(ParseSyntheticSpec("synthetic:uniform:seed=-1").status(),
              absl::StatusCode::kInvalidArgument, {"seed=-1"});
  ExpectError(ParseSyntheticSpec("synthetic:uniform:n").status(),
              absl::StatusCode::kInvalidArgument, {"'n' is not key=value"});
  ExpectError(ParseSyntheticSpec("synthetic:uniform:").status(), absl::StatusCode::kInvalidArgument,
              {"is not key=value"});
}

TEST(ParseSyntheticSpecTest, Parse_RepeatedKey_InvalidArgument) {
  ExpectError(ParseSyntheticSpec("synthetic:uniform:n=5,n=6").status(),
              absl::StatusCode::kInvalidArgument, {"key 'n' given twice"});
}

TEST(SyntheticMixNamesTest, SyntheticMixNames_ListsDocumentedMixes) {
  EXPECT_THAT(SyntheticMixNames(), ElementsAre("paper-eval", "lmsys", "uniform"));
}

// ===========================================================================
// Determinism and bounds
// ===========================================================================

TEST(GenerateLengthsTest, GenerateLengths_SameSpec_SameVector) {
  for (const std::string& mix : SyntheticMixNames()) {
    const SyntheticSpec s = Parse(absl::StrCat("synthetic:", mix, ":n=10000,seed=42"));
    EXPECT_EQ(GenerateLengths(s), GenerateLengths(s)) << mix;
  }
}

TEST(GenerateLengthsTest, GenerateLengths_DifferentSeeds_Differ) {
  const std::vector<int64_t> a = GenerateLengths(Parse("synthetic:paper-eval:n=1000,seed=1"));
  const std::vector<int64_t> b = GenerateLengths(Parse("synthetic:paper-eval:n=1000,seed=2"));
  ASSERT_EQ(a.size(), b.size());
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, 100);  // independent draws coincide rarely
}

// Pins the exact sequence, so a change of generator or mapping (or a platform
// that maps differently) fails here.
TEST(GenerateLengthsTest, GenerateLengths_PaperEvalSeed1_MatchesGolden) {
  EXPECT_THAT(GenerateLengths(Parse("synthetic:paper-eval:n=8,seed=1")),
              ElementsAre(414, 136, 914, 97, 64, 106, 32, 137));
  EXPECT_THAT(GenerateLengths(Parse("synthetic:uniform:n=4,seed=7,max=1000")),
              ElementsAre(935, 523, 479, 37));
}

TEST(GenerateLengthsTest, GenerateLengths_SmallerN_IsPrefixOfLarger) {
  const std::vector<int64_t> small = GenerateLengths(Parse("synthetic:lmsys:n=5000,seed=3"));
  const std::vector<int64_t> large = GenerateLengths(Parse("synthetic:lmsys:n=9000,seed=3"));
  ASSERT_EQ(small.size(), 5000u);
  EXPECT_TRUE(std::equal(small.begin(), small.end(), large.begin()));
}

TEST(GenerateLengthsTest, GenerateLengths_EveryMix_WithinOneAndMax) {
  for (const std::string& mix : SyntheticMixNames()) {
    for (int64_t max : {1, 10, 2000, 50000, 300000}) {
      const SyntheticSpec s = Parse(absl::StrCat("synthetic:", mix, ":n=20000,max=", max));
      const std::vector<int64_t> lengths = GenerateLengths(s);
      ASSERT_EQ(lengths.size(), 20000u);
      EXPECT_GE(*std::min_element(lengths.begin(), lengths.end()), 1) << mix << " max=" << max;
      EXPECT_LE(*std::max_element(lengths.begin(), lengths.end()), max) << mix << " max=" << max;
    }
  }
}

TEST(GenerateLengthsTest, GenerateLengths_InvalidSpec_Empty) {
  EXPECT_TRUE(GenerateLengths(SyntheticSpec{"zipf", 10, 1, 100}).empty());
  EXPECT_TRUE(GenerateLengths(SyntheticSpec{"uniform", 0, 1, 100}).empty());
  EXPECT_TRUE(GenerateLengths(SyntheticSpec{"uniform", 10, 1, 0}).empty());
}

// ===========================================================================
// Mixture shapes
// ===========================================================================

// Fractions are checked against the bucket probabilities in synthetic.h; with
// n=200000 one standard deviation of a fraction p is sqrt(p(1-p)/n) <= 0.0011,
// so the tolerances below are wide (>= 5 sigma).
TEST(GenerateLengthsTest, GenerateLengths_PaperEval_MatchesPaperFractions) {
  const std::vector<int64_t> l = GenerateLengths(Parse("synthetic:paper-eval:n=200000,seed=1"));
  EXPECT_GE(Fraction(l, 1, 1023), 0.88);
  EXPECT_LE(Fraction(l, 1, 1023), 0.92);
  EXPECT_GE(Fraction(l, 1024, 4095), 0.07);
  EXPECT_LE(Fraction(l, 1024, 4095), 0.09);
  EXPECT_LT(Fraction(l, 32769, 131072), 0.001);  // 0.05% expected (about 100 of 200000)
  EXPECT_GT(Fraction(l, 32769, 131072), 0.0);
  EXPECT_LE(*std::max_element(l.begin(), l.end()), 131072);
}

TEST(GenerateLengthsTest, GenerateLengths_Lmsys_LongTailed) {
  const std::vector<int64_t> l = GenerateLengths(Parse("synthetic:lmsys:n=1000000,seed=1"));
  EXPECT_GT(Fraction(l, 1, 4095), 0.99);  // 99.5% expected
  EXPECT_GT(Fraction(l, 1, 1023), 0.90);  // mostly a few hundred tokens (93% expected)
  // About 100 lengths from [131072, 300000] and 900 from [32768, 131071]
  // are expected, so the longest is far above 100000.
  EXPECT_GT(*std::max_element(l.begin(), l.end()), 100000);
  EXPECT_LE(*std::max_element(l.begin(), l.end()), 300000);
}

TEST(GenerateLengthsTest, GenerateLengths_LogUniformBucket_OctavesEquallyLikely) {
  // paper-eval's first bucket [32, 1023] holds 5 octaves; P(k) ~ 1/k gives each
  // about 0.9 * ln(2) / ln(1024/32) = 0.18 of all documents.
  const std::vector<int64_t> l = GenerateLengths(Parse("synthetic:paper-eval:n=200000,seed=5"));
  for (int64_t lo = 32; lo < 1024; lo *= 2) {
    EXPECT_NEAR(Fraction(l, lo, 2 * lo - 1), 0.18, 0.01) << "octave " << lo;
  }
}

TEST(GenerateLengthsTest, GenerateLengths_Uniform_FlatOverRange) {
  const std::vector<int64_t> l = GenerateLengths(Parse("synthetic:uniform:n=200000,max=1000"));
  for (int64_t lo = 1; lo <= 1000; lo += 250) {
    EXPECT_NEAR(Fraction(l, lo, lo + 249), 0.25, 0.01) << "from " << lo;
  }
}

// ===========================================================================
// Single documents and tokens
// ===========================================================================

TEST(SyntheticLengthTest, SyntheticLength_AnyDocument_MatchesGenerateLengths) {
  const SyntheticSpec s = Parse("synthetic:lmsys:n=10000,seed=9");
  const std::vector<int64_t> all = GenerateLengths(s);
  for (int64_t doc : {0, 1, 4095, 4096, 4097, 8191, 9999}) {
    EXPECT_EQ(SyntheticLength(s, doc), all[doc]) << "doc " << doc;
  }
  EXPECT_EQ(SyntheticLength(s, -1), 0);
}

TEST(SyntheticTokensTest, SyntheticTokens_Document_LengthMatchesAndIdsInVocab) {
  const SyntheticSpec s = Parse("synthetic:paper-eval:n=100,seed=4");
  const std::vector<int64_t> lengths = GenerateLengths(s);
  for (int64_t doc = 0; doc < 100; ++doc) {
    std::vector<int64_t> tokens;
    SyntheticTokens(s, doc, 1000, &tokens);
    ASSERT_EQ(static_cast<int64_t>(tokens.size()), lengths[doc]);
    for (int64_t t : tokens) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, 1000);
    }
  }
}

TEST(SyntheticTokensTest, SyntheticTokens_SameArguments_SameTokens) {
  const SyntheticSpec s = Parse("synthetic:uniform:n=10,seed=4,max=500");
  std::vector<int64_t> a, b, other_doc, other_seed;
  SyntheticTokens(s, 3, 151936, &a);
  SyntheticTokens(s, 3, 151936, &b);
  EXPECT_EQ(a, b);
  SyntheticTokens(s, 4, 151936, &other_doc);
  SyntheticTokens(Parse("synthetic:uniform:n=10,seed=5,max=500"), 3, 151936, &other_seed);
  const size_t n = std::min({a.size(), other_doc.size(), other_seed.size()});
  ASSERT_GT(n, 4u);
  EXPECT_FALSE(std::equal(a.begin(), a.begin() + n, other_doc.begin()));
  EXPECT_FALSE(std::equal(a.begin(), a.begin() + n, other_seed.begin()));
}

TEST(SyntheticTokensTest, SyntheticTokens_VocabBelowOne_Empty) {
  std::vector<int64_t> tokens = {1, 2};
  SyntheticTokens(Parse("synthetic:uniform"), 0, 0, &tokens);
  EXPECT_TRUE(tokens.empty());
}

}  // namespace
}  // namespace chunkflow::dataset
