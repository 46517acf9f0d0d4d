// The tokens of a dataset's documents, whatever the format: what a worker
// (or `chunkflowctl train`) reads for the sequences a plan names.
//
// `spec` takes the forms of dataset.h (synthetic mix, .jsonl, Megatron-LM
// prefix). Labels come from the JSONL records' "labels", or from a parallel
// Megatron-LM dataset <prefix>.labels (written by `chunkflowctl convert`);
// otherwise they are empty, meaning "labels = tokens".
//
//   absl::StatusOr<std::unique_ptr<TokenSource>> src = TokenSource::Open(spec, vocab);
//   std::vector<int32_t> tokens, labels;
//   absl::Status s = (*src)->Read(/*doc=*/7, &tokens, &labels);

#ifndef CHUNKFLOW_DATASET_TOKENS_H_
#define CHUNKFLOW_DATASET_TOKENS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace chunkflow::dataset {

class TokenSource {
 public:
  virtual ~TokenSource() = default;

  // `vocab_size` draws synthetic tokens in [0, vocab_size); file datasets
  // ignore it (the engine checks every id against its vocabulary). Errors: as
  // ReadDocumentLengths (dataset.h).
  static absl::StatusOr<std::unique_ptr<TokenSource>> Open(absl::string_view spec,
                                                           int64_t vocab_size);

  virtual const std::vector<int64_t>& lengths() const = 0;
  int64_t num_documents() const { return static_cast<int64_t>(lengths().size()); }

  // Errors: OUT_OF_RANGE for a doc outside [0, num_documents()); INVALID_ARGUMENT
  // for a token id that does not fit int32; read errors of the files.
  virtual absl::Status Read(int64_t doc, std::vector<int32_t>* tokens,
                            std::vector<int32_t>* labels) const = 0;

  // Positions of `doc` that carry a loss, as the engine counts them
  // (StepData::TargetCount): labels[p] != -100 for p >= 1, where labels are
  // the tokens when the dataset has none. Sources without labels answer from
  // the length alone (length - 1) without reading tokens: the coordinator
  // calls this for every document of every step. Errors: as Read.
  virtual absl::StatusOr<int64_t> CountTargets(int64_t doc) const;
};

}  // namespace chunkflow::dataset

#endif  // CHUNKFLOW_DATASET_TOKENS_H_
