// The dataset cursor: which documents form each step's global batch.
//
// Deterministic and seeded. The documents are read as an endless stream of
// epochs; epoch e is a Fisher-Yates shuffle of [0, n) driven by
// std::mt19937_64 (its output is fixed by the C++ standard; the bounded draw is
// ours, since the standard distributions differ between library
// implementations). Batches never straddle an epoch: epoch e has
// ceil(n / batch) steps, step i of it takes positions [i * batch, (i + 1) *
// batch) of epoch e's order, and the epoch's last step takes what is left
// (n mod batch documents, when that is not 0). So every document is consumed
// exactly once per epoch, nothing is dropped, and no batch holds a document
// twice (a straddling batch could: the tail of epoch e and the head of e + 1
// may share one, and two copies of a sequence in one step would share its
// state store on the worker).
//
//   absl::StatusOr<DatasetCursor> cursor =
//       DatasetCursor::Create(/*num_documents=*/lengths.size(), /*seed=*/1, /*batch=*/256);
//   absl::StatusOr<std::vector<int64_t>> docs = cursor->Batch(/*step=*/0);

#ifndef CHUNKFLOW_COORDINATOR_CURSOR_H_
#define CHUNKFLOW_COORDINATOR_CURSOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace chunkflow {

// Permutation of [0, n) for (seed, epoch).
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch);

class DatasetCursor {
 public:
  // Errors: INVALID_ARGUMENT unless 1 <= batch <= num_documents (a batch
  // larger than the dataset would hold a document twice).
  static absl::StatusOr<DatasetCursor> Create(int64_t num_documents, uint64_t seed,
                                              int64_t batch);

  // Documents of global step `step` (counting across epochs), in stream order:
  // `batch` of them, fewer for the last step of an epoch.
  // Errors: INVALID_ARGUMENT for step < 0.
  absl::StatusOr<std::vector<int64_t>> Batch(int64_t step);

  // The epoch the first document of `step` belongs to.
  int64_t EpochOf(int64_t step) const { return step / StepsPerEpoch(); }
  int64_t StepsPerEpoch() const { return (num_documents_ + batch_ - 1) / batch_; }

 private:
  DatasetCursor(int64_t num_documents, uint64_t seed, int64_t batch)
      : num_documents_(num_documents), seed_(seed), batch_(batch) {}
  const std::vector<int64_t>& Order(int64_t epoch);

  int64_t num_documents_;
  uint64_t seed_;
  int64_t batch_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_order_;
};

}  // namespace chunkflow

#endif  // CHUNKFLOW_COORDINATOR_CURSOR_H_
