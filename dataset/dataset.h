// The coordinator's view of a dataset: one length (in tokens) per document,
// whatever the format. Document i of the result is document i of the dataset,
// the id the planner and the cursor use.
//
// `spec` is one of
//   synthetic:<mix>[:n=..,seed=..,max=..]   generated lengths (synthetic.h)
//   <path>.jsonl                            JSONL with input_ids (jsonl.h)
//   <prefix>, <prefix>.idx or <prefix>.bin  Megatron-LM indexed dataset
//                                           (indexed_dataset.h)
//
//   absl::StatusOr<std::vector<int64_t>> lengths =
//       ReadDocumentLengths("/data/corpus_text_document");
//   if (!lengths.ok()) return lengths.status();
//
// Every returned length is >= 1: ChunkFlow trains every document, so an empty
// document (possible in a Megatron-LM dataset) is reported as an error.

#ifndef CHUNKFLOW_DATASET_DATASET_H_
#define CHUNKFLOW_DATASET_DATASET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace chunkflow::dataset {

// Errors: NOT_FOUND naming the path and the accepted forms when no file
// matches; INVALID_ARGUMENT for a bad synthetic spec, a bad JSONL line
// (path:line), an empty Megatron-LM document (naming its index) or a file
// dataset without documents (naming it); DATA_LOSS for a corrupt Megatron-LM
// dataset; other codes from reading the files.
absl::StatusOr<std::vector<int64_t>> ReadDocumentLengths(absl::string_view spec);

}  // namespace chunkflow::dataset

#endif  // CHUNKFLOW_DATASET_DATASET_H_
