// Seeded synthetic datasets with long-tailed length distributions, for
// planning, benchmarks and training without real data.
//
// Spec string: "synthetic:<mix>" or "synthetic:<mix>:<key>=<value>,..." with
//   n=<count>       documents, default 10000 (1 to 1000000000)
//   seed=<s>        uint64, default 1
//   max=<tokens>    longest allowed length, default 131072, or 300000 for
//                   lmsys (1 to 2147483647)
//
// Each mix is a mixture of buckets. A bucket [lo, hi] is drawn with the given
// probability; inside it a length k is log-uniform (exactly: P(k) ~ 1/k, the
// discrete log-uniform, so each octave gets about the same share), except for
// `uniform`. Buckets are clipped to max (lo and hi become min(lo, max) and
// min(hi, max)), so every length is in [1, max].
//
//   paper-eval  the ChunkFlow paper's evaluation mix (long-tailed SFT data)
//               [32, 1023]        90%
//               [1024, 4095]       8%
//               [4096, 32767]      1.95%
//               [32768, max]       0.05%
//   lmsys       LMSysChat1M-like: 99.5% under 4K, mostly a few hundred tokens,
//               rare ones up to max (~300K)
//               [16, 255]         60%
//               [256, 1023]       33%
//               [1024, 4095]       6.5%
//               [4096, 32767]      0.4%
//               [32768, 131071]    0.09%
//               [131072, max]      0.01%
//   uniform     [1, max] uniformly, every length equally likely (for tests)
//
// Deterministic on every platform: draws are raw std::mt19937_64 outputs (its
// sequence is fixed by the C++ standard) mapped to ranges by integer code here
// (std::uniform_int_distribution and friends differ between standard
// libraries), with no floating point. Documents are generated in blocks of
// 4096, each block from its own generator seeded by (seed, block), so the
// length of document i does not depend on n (n=100 gives the first 100 lengths
// of n=1000) and one document's length is computed without the others.
//
//   absl::StatusOr<SyntheticSpec> spec = ParseSyntheticSpec("synthetic:lmsys:n=50000,seed=7");
//   if (!spec.ok()) return spec.status();
//   std::vector<int64_t> lengths = GenerateLengths(*spec);
//   std::vector<int64_t> tokens;
//   SyntheticTokens(*spec, /*doc=*/3, /*vocab_size=*/151936, &tokens);  // lengths[3] tokens

#ifndef CHUNKFLOW_DATASET_SYNTHETIC_H_
#define CHUNKFLOW_DATASET_SYNTHETIC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace chunkflow::dataset {

struct SyntheticSpec {
  std::string mix;    // one of SyntheticMixNames()
  int64_t n = 10000;  // documents
  uint64_t seed = 1;
  int64_t max_length = 131072;  // tokens; 300000 is lmsys's default
};

// "paper-eval", "lmsys", "uniform".
std::vector<std::string> SyntheticMixNames();

// Parses "synthetic:<mix>[:n=..,seed=..,max=..]", filling in the defaults.
// Errors: INVALID_ARGUMENT naming the bad part: a missing "synthetic:" prefix,
// an unknown mix (the message lists the valid ones), an unknown or repeated
// key, an item without '=', or a value that is not an integer in its range.
absl::StatusOr<SyntheticSpec> ParseSyntheticSpec(absl::string_view spec);

// The n document lengths of `spec`, each in [1, spec.max_length]. Same spec,
// same vector. Empty if spec.mix is unknown or n < 1 or max_length < 1 (specs
// from ParseSyntheticSpec are always valid).
std::vector<int64_t> GenerateLengths(const SyntheticSpec& spec);

// GenerateLengths(spec)[doc], for any doc >= 0 (also beyond n), computed from
// doc's block alone; 0 for an invalid spec or doc < 0.
int64_t SyntheticLength(const SyntheticSpec& spec, int64_t doc);

// Replaces *tokens with document doc's tokens: SyntheticLength(spec, doc) of
// them, each uniform in [0, vocab_size), from a generator seeded by
// (spec.seed, doc). Empty if vocab_size < 1 or the length is 0.
void SyntheticTokens(const SyntheticSpec& spec, int64_t doc, int64_t vocab_size,
                     std::vector<int64_t>* tokens);

}  // namespace chunkflow::dataset

#endif  // CHUNKFLOW_DATASET_SYNTHETIC_H_
