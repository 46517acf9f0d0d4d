// JSONL token data and its conversion to Megatron-LM's indexed dataset.
//
// One JSON object per line:
//
//   {"input_ids": [151644, 872, 198], "labels": [-100, 872, 198]}
//
//   input_ids  required; a non-empty array of JSON integers >= 0 (token ids)
//   labels     optional (absent or null = none); an array of JSON integers of
//              the same length, each >= 0 or -100 (the ignore index)
//
// Other keys are ignored. Blank lines (only whitespace) are skipped. Numbers
// must be JSON integers: 1.5, 1.0, "7" and true are errors.
//
//   absl::StatusOr<std::vector<JsonlRecord>> records = ReadJsonl("/data/sft.jsonl");
//   absl::StatusOr<std::vector<int64_t>> lengths = ReadJsonlLengths("/data/sft.jsonl");
//   absl::Status s = ConvertJsonlToIndexed("/data/sft.jsonl", "/data/sft", std::nullopt);
//
// Errors: NOT_FOUND for a missing file; INVALID_ARGUMENT for a bad line, the
// message starting with `path:line:` (1-based) and naming the problem (invalid
// JSON, not an object, missing input_ids, empty input_ids, a non-integer id, a
// labels length mismatch); the errno's code if the file cannot be read.

#ifndef CHUNKFLOW_DATASET_JSONL_H_
#define CHUNKFLOW_DATASET_JSONL_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dataset/indexed_dataset.h"

namespace chunkflow::dataset {

// The ignore index in `labels` (Hugging Face / PyTorch cross-entropy).
inline constexpr int64_t kIgnoreIndex = -100;

struct JsonlRecord {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // empty if the record has none
};

// Every record of the file, in order (blank lines skipped).
absl::StatusOr<std::vector<JsonlRecord>> ReadJsonl(absl::string_view path);

// The input_ids length of every record, validating each line as ReadJsonl does
// without keeping the tokens.
absl::StatusOr<std::vector<int64_t>> ReadJsonlLengths(absl::string_view path);

// Writes the records' input_ids to <out_prefix>.bin/.idx, one document per
// record, in Megatron-LM's format (indexed_dataset.h). dtype nullopt picks
// SmallestDTypeFor(the largest token id). Megatron's format has no labels, so
// if any record has labels, a parallel int32 dataset <out_prefix>.labels.bin /
// <out_prefix>.labels.idx is written as well: document i holds record i's
// labels, or its input_ids when it has none (the usual "labels = input_ids"
// default). Open it with IndexedDataset::Open(out_prefix + ".labels").
//
// The whole file is validated before anything is written, and each output
// appears only when complete (see IndexedDatasetWriter).
// Errors: as ReadJsonl; INVALID_ARGUMENT naming path:line, the value and the
// dtype when a token does not fit the requested dtype, or for an empty file;
// the writer's errors for the output.
absl::Status ConvertJsonlToIndexed(absl::string_view jsonl_path, absl::string_view out_prefix,
                                   std::optional<DType> dtype);

}  // namespace chunkflow::dataset

#endif  // CHUNKFLOW_DATASET_JSONL_H_
