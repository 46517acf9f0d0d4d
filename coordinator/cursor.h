// The dataset cursor: which documents form each step's global batch.
//
// Deterministic and seeded. The documents are read as an endless stream of
// epochs; epoch e is a Fisher-Yates shuffle of [0, n) driven by
// std::mt19937_64 (its output is fixed by the C++ standard; the bounded draw is
// ours, since the standard distributions differ between library
// implementations). Step s takes stream positions [s * batch, (s + 1) * batch),
// so a batch may straddle an epoch boundary and every document is consumed
// exactly once per epoch: nothing is dropped at an epoch's end.
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

  // Documents of global step `step` (counting across epochs), in stream order.
  // Errors: INVALID_ARGUMENT for step < 0.
  absl::StatusOr<std::vector<int64_t>> Batch(int64_t step);

  // The epoch the first document of `step` belongs to.
  int64_t EpochOf(int64_t step) const { return step * batch_ / num_documents_; }

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
