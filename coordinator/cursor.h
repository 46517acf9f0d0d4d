// The dataset cursor: which documents form each step's global batch.
//
// Deterministic and seeded: epoch e visits every document once, in a
// Fisher-Yates shuffle driven by std::mt19937_64 (its output is fixed by the
// C++ standard; the bounded draw below is ours, since the standard
// distributions differ between library implementations). Step s of an epoch
// takes documents [s * batch, (s + 1) * batch) of that order; a partial last
// batch is dropped, as training loaders do.
//
//   DatasetCursor cursor(/*num_documents=*/lengths.size(), /*seed=*/1, /*batch=*/256);
//   std::vector<int64_t> docs = cursor.Batch(/*step=*/0);

#ifndef CHUNKFLOW_COORDINATOR_CURSOR_H_
#define CHUNKFLOW_COORDINATOR_CURSOR_H_

#include <cstdint>
#include <vector>

namespace chunkflow {

// Permutation of [0, n) for (seed, epoch).
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch);

class DatasetCursor {
 public:
  // Requires 1 <= batch <= num_documents.
  DatasetCursor(int64_t num_documents, uint64_t seed, int64_t batch);

  int64_t steps_per_epoch() const { return num_documents_ / batch_; }
  // Documents of global step `step` (counting across epochs).
  std::vector<int64_t> Batch(int64_t step);

 private:
  int64_t num_documents_;
  uint64_t seed_;
  int64_t batch_;
  int64_t epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace chunkflow

#endif  // CHUNKFLOW_COORDINATOR_CURSOR_H_
