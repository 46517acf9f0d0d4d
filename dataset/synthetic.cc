#include "dataset/synthetic.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace chunkflow::dataset {
namespace {

constexpr absl::string_view kPrefix = "synthetic:";
constexpr int64_t kPpm = 1000000;  // bucket probabilities are in parts per million
constexpr int64_t kBlock = 4096;   // documents per generator
constexpr int64_t kMaxDocuments = 1000000000;
constexpr int64_t kMaxLength = std::numeric_limits<int32_t>::max();
constexpr int64_t kToMax = -1;                           // a bucket's hi: "up to max_length"
constexpr uint64_t kLengthStream = 0x6c656e67746873ULL;  // "lengths"
constexpr uint64_t kTokenStream = 0x746f6b656e73ULL;     // "tokens"

// ===========================================================================
// Mixes (keep in sync with the table in synthetic.h and docs/datasets.md)
// ===========================================================================

struct Bucket {
  int64_t lo;
  int64_t hi;   // inclusive, or kToMax
  int64_t ppm;  // probability in parts per million
  bool log_uniform;
};

struct Mix {
  const char* name;
  int64_t default_max;
  std::vector<Bucket> buckets;  // ppm sums to kPpm
};

const std::vector<Mix>& Mixes() {
  static const std::vector<Mix>* mixes = new std::vector<Mix>{
      {"paper-eval",
       131072,
       {{32, 1023, 900000, true},
        {1024, 4095, 80000, true},
        {4096, 32767, 19500, true},
        {32768, kToMax, 500, true}}},
      {"lmsys",
       300000,
       {{16, 255, 600000, true},
        {256, 1023, 330000, true},
        {1024, 4095, 65000, true},
        {4096, 32767, 4000, true},
        {32768, 131071, 900, true},
        {131072, kToMax, 100, true}}},
      {"uniform", 131072, {{1, kToMax, kPpm, false}}},
  };
  return *mixes;
}

const Mix* FindMix(absl::string_view name) {
  for (const Mix& m : Mixes()) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

// ===========================================================================
// Integer-only sampling from raw mt19937_64 outputs
// ===========================================================================

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::mt19937_64 Generator(uint64_t seed, uint64_t stream, uint64_t index) {
  return std::mt19937_64(SplitMix64(seed ^ SplitMix64(stream ^ SplitMix64(index))));
}

// Uniform in [0, n), n >= 1, unbiased: rejects the 2^64 mod n lowest outputs.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;
  while (true) {
    const uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

// One bucket clipped to max_length, with its octaves [start, end] for the
// log-uniform draw: octave j starts at lo * 2^j.
struct Range {
  int64_t lo = 1;
  int64_t hi = 1;
  bool log_uniform = false;
  std::vector<int64_t> starts;
  std::vector<int64_t> sizes;
  std::vector<uint64_t> weights;  // envelope mass of each octave, scaled to integers
  uint64_t total_weight = 0;
};

Range MakeRange(const Bucket& b, int64_t max_length) {
  Range r;
  r.hi = std::min(b.hi == kToMax ? max_length : b.hi, max_length);
  r.lo = std::min(b.lo, r.hi);
  r.log_uniform = b.log_uniform;
  for (int64_t start = r.lo; start <= r.hi; start *= 2) {
    r.starts.push_back(start);
    r.sizes.push_back(std::min(2 * start - 1, r.hi) - start + 1);
  }
  // The envelope is 1/start on each octave; its mass there is size/start.
  // Scaled by lo * 2^(J-1): size * 2^(J-1-j), an integer below 2^37.
  const int octaves = static_cast<int>(r.starts.size());
  for (int j = 0; j < octaves; ++j) {
    r.weights.push_back(static_cast<uint64_t>(r.sizes[j]) << (octaves - 1 - j));
    r.total_weight += r.weights.back();
  }
  return r;
}

// P(k) proportional to 1/k on [lo, hi], by rejection from the octave envelope:
// pick an octave by its envelope mass, k uniformly in it, and accept with
// probability start/k (= (1/k) / (1/start)). Accepts at least half the time.
int64_t DrawLogUniform(const Range& r, std::mt19937_64& rng) {
  while (true) {
    uint64_t w = UniformBelow(rng, r.total_weight);
    size_t j = 0;
    while (w >= r.weights[j]) w -= r.weights[j++];
    const int64_t k = r.starts[j] + static_cast<int64_t>(UniformBelow(rng, r.sizes[j]));
    if (UniformBelow(rng, static_cast<uint64_t>(k)) < static_cast<uint64_t>(r.starts[j])) {
      return k;
    }
  }
}

struct Sampler {
  std::vector<Range> ranges;
  std::vector<int64_t> cumulative_ppm;
};

Sampler MakeSampler(const Mix& mix, int64_t max_length) {
  Sampler s;
  int64_t acc = 0;
  for (const Bucket& b : mix.buckets) {
    s.ranges.push_back(MakeRange(b, max_length));
    acc += b.ppm;
    s.cumulative_ppm.push_back(acc);
  }
  return s;
}

int64_t Draw(const Sampler& s, std::mt19937_64& rng) {
  const int64_t u = static_cast<int64_t>(UniformBelow(rng, kPpm));
  size_t b = 0;
  while (u >= s.cumulative_ppm[b]) ++b;
  const Range& r = s.ranges[b];
  if (r.log_uniform) return DrawLogUniform(r, rng);
  return r.lo + static_cast<int64_t>(UniformBelow(rng, r.hi - r.lo + 1));
}

bool Valid(const SyntheticSpec& spec) {
  return FindMix(spec.mix) != nullptr && spec.max_length >= 1;
}

// Appends the lengths of documents [block * kBlock, block * kBlock + count).
void AppendBlock(const Sampler& s, uint64_t seed, int64_t block, int64_t count,
                 std::vector<int64_t>* out) {
  std::mt19937_64 rng = Generator(seed, kLengthStream, static_cast<uint64_t>(block));
  for (int64_t i = 0; i < count; ++i) out->push_back(Draw(s, rng));
}

// ===========================================================================
// Spec parsing
// ===========================================================================

absl::Status SpecError(absl::string_view spec, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("synthetic spec '", spec, "': ", what,
                   " (form: synthetic:<mix>:n=<count>,seed=<s>,max=<max_tokens>; mixes: ",
                   absl::StrJoin(SyntheticMixNames(), ", "), ")"));
}

absl::Status ParseInt(absl::string_view spec, absl::string_view key, absl::string_view value,
                      int64_t lo, int64_t hi, int64_t* out) {
  if (!absl::SimpleAtoi(value, out) || *out < lo || *out > hi) {
    return SpecError(spec,
                     absl::StrCat(key, "=", value, " is not an integer in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

absl::Status ParseParams(absl::string_view spec, absl::string_view params, SyntheticSpec* out,
                         bool* max_given) {
  absl::flat_hash_set<std::string> seen;
  for (absl::string_view item : absl::StrSplit(params, ',')) {
    const std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.size() != 2 || kv[0].empty()) {
      return SpecError(spec, absl::StrCat("'", item, "' is not key=value"));
    }
    const absl::string_view key = kv[0];
    const absl::string_view value = kv[1];
    if (!seen.insert(std::string(key)).second) {
      return SpecError(spec, absl::StrCat("key '", key, "' given twice"));
    }
    absl::Status s;
    if (key == "n") {
      s = ParseInt(spec, key, value, 1, kMaxDocuments, &out->n);
    } else if (key == "max") {
      s = ParseInt(spec, key, value, 1, kMaxLength, &out->max_length);
      *max_given = true;
    } else if (key == "seed") {
      if (!absl::SimpleAtoi(value, &out->seed) || absl::StartsWith(value, "-")) {
        s = SpecError(spec, absl::StrCat("seed=", value, " is not an unsigned 64-bit integer"));
      }
    } else {
      s = SpecError(spec, absl::StrCat("unknown key '", key, "' (keys: n, seed, max)"));
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

// ===========================================================================
// Public API
// ===========================================================================

std::vector<std::string> SyntheticMixNames() {
  std::vector<std::string> names;
  for (const Mix& m : Mixes()) names.push_back(m.name);
  return names;
}

absl::StatusOr<SyntheticSpec> ParseSyntheticSpec(absl::string_view spec) {
  absl::string_view rest = spec;
  if (!absl::ConsumePrefix(&rest, kPrefix)) {
    return SpecError(spec, "does not start with 'synthetic:'");
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(rest, absl::MaxSplits(':', 1));
  const Mix* mix = FindMix(parts[0]);
  if (mix == nullptr) return SpecError(spec, absl::StrCat("unknown mix '", parts[0], "'"));
  SyntheticSpec out;
  out.mix = mix->name;
  bool max_given = false;
  if (parts.size() == 2) {
    if (absl::Status s = ParseParams(spec, parts[1], &out, &max_given); !s.ok()) return s;
  }
  if (!max_given) out.max_length = mix->default_max;
  return out;
}

std::vector<int64_t> GenerateLengths(const SyntheticSpec& spec) {
  std::vector<int64_t> out;
  if (!Valid(spec) || spec.n < 1) return out;
  const Sampler s = MakeSampler(*FindMix(spec.mix), spec.max_length);
  out.reserve(spec.n);
  for (int64_t block = 0; block * kBlock < spec.n; ++block) {
    AppendBlock(s, spec.seed, block, std::min(kBlock, spec.n - block * kBlock), &out);
  }
  return out;
}

int64_t SyntheticLength(const SyntheticSpec& spec, int64_t doc) {
  if (!Valid(spec) || doc < 0) return 0;
  const Sampler s = MakeSampler(*FindMix(spec.mix), spec.max_length);
  std::vector<int64_t> block;
  AppendBlock(s, spec.seed, doc / kBlock, doc % kBlock + 1, &block);
  return block.back();
}

void SyntheticTokens(const SyntheticSpec& spec, int64_t doc, int64_t vocab_size,
                     std::vector<int64_t>* tokens) {
  tokens->clear();
  if (vocab_size < 1) return;
  const int64_t length = SyntheticLength(spec, doc);
  tokens->reserve(length);
  std::mt19937_64 rng = Generator(spec.seed, kTokenStream, static_cast<uint64_t>(doc));
  for (int64_t i = 0; i < length; ++i) {
    tokens->push_back(static_cast<int64_t>(UniformBelow(rng, static_cast<uint64_t>(vocab_size))));
  }
}

}  // namespace chunkflow::dataset
