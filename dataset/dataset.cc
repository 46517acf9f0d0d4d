#include "dataset/dataset.h"

#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "dataset/indexed_dataset.h"
#include "dataset/jsonl.h"
#include "dataset/synthetic.h"

namespace chunkflow::dataset {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::Status NotFound(absl::string_view spec) {
  return absl::NotFoundError(absl::StrCat(
      spec,
      ": no such dataset; accepted forms: synthetic:<mix>:n=..,seed=..,max=.. , a .jsonl "
      "file, or a Megatron-LM prefix P with P.idx and P.bin (P.idx and P.bin also work)"));
}

absl::StatusOr<std::vector<int64_t>> ReadIndexedLengths(absl::string_view prefix) {
  absl::StatusOr<std::unique_ptr<IndexedDataset>> ds = IndexedDataset::Open(prefix);
  if (!ds.ok()) return ds.status();
  const absl::Span<const int64_t> lengths = (*ds)->document_lengths();
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix, ".idx: document ", i,
          " is empty (no sequences); ChunkFlow trains every document: rebuild the dataset "
          "without empty documents"));
    }
  }
  return std::vector<int64_t>(lengths.begin(), lengths.end());
}

}  // namespace

namespace {

// The file readers' lengths, refused when there are none: an empty dataset
// is a mistake (a wrong path, a failed export), and every command that reads
// one would otherwise fail later with a message that does not name it.
absl::StatusOr<std::vector<int64_t>> NotEmpty(absl::string_view spec,
                                              absl::StatusOr<std::vector<int64_t>> lengths) {
  if (lengths.ok() && lengths->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(spec, ": the dataset has no documents"));
  }
  return lengths;
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ReadDocumentLengths(absl::string_view spec) {
  if (absl::StartsWith(spec, "synthetic:")) {
    absl::StatusOr<SyntheticSpec> parsed = ParseSyntheticSpec(spec);
    if (!parsed.ok()) return parsed.status();
    return GenerateLengths(*parsed);
  }
  if (absl::EndsWith(spec, ".jsonl")) {
    if (!Exists(std::string(spec))) return NotFound(spec);
    return NotEmpty(spec, ReadJsonlLengths(spec));
  }
  absl::string_view prefix = spec;
  if (!absl::ConsumeSuffix(&prefix, ".idx")) absl::ConsumeSuffix(&prefix, ".bin");
  if (prefix.empty() ||
      (!Exists(absl::StrCat(prefix, ".idx")) && !Exists(absl::StrCat(prefix, ".bin")))) {
    return NotFound(spec);
  }
  // With only one of the two files present, Open names the missing one.
  return NotEmpty(spec, ReadIndexedLengths(prefix));
}

}  // namespace chunkflow::dataset
