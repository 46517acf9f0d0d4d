// Megatron-LM's indexed dataset (`.bin` + `.idx`, magic "MMIDIDX"): a reader
// that memory-maps both files and a writer that produces exactly the bytes
// megatron/core/datasets/indexed_dataset.py writes, so datasets move both ways
// between ChunkFlow and Megatron-LM.
//
//   absl::StatusOr<std::unique_ptr<IndexedDataset>> ds =
//       IndexedDataset::Open("/data/corpus_text_document");  // no extension
//   if (!ds.ok()) return ds.status();
//   std::vector<int64_t> tokens;
//   absl::Status s = (*ds)->ReadDocument(0, &tokens);
//
//   auto w = IndexedDatasetWriter::Create("/tmp/out", DType::kUInt16);
//   (*w)->AddDocument({1, 2, 3});
//   absl::Status done = (*w)->Finish();  // writes /tmp/out.bin and /tmp/out.idx
//
// The `.idx` layout, all little-endian (offsets in bytes):
//
//   0   char[9]   magic "MMIDIDX\x00\x00"
//   9   uint64    version, always 1
//   17  uint8     dtype code of the tokens in .bin (see DType)
//   18  uint64    sequence_count  (S)
//   26  uint64    document_count  (D = documents + 1)
//   34  int32[S]  sequence_lengths, in tokens
//       int64[S]  sequence_pointers, byte offset of each sequence in .bin
//       int64[D]  document_indices: 0 = d[0] <= d[1] <= ... <= d[D-1] = S;
//                 document i is sequences [d[i], d[i+1]) concatenated
//      (int8[S]   sequence_modes, written by newer Megatron for multimodal
//                 data; ignored here, like any other trailing bytes)
//
// `.bin` holds the sequences' tokens back to back as raw dtype values.
//
// Open validates everything above before returning (sizes, counts, bounds of
// every sequence against the .bin size, document indices), so ReadDocument
// only fails on a bad argument. Error codes: NOT_FOUND for a missing file,
// DATA_LOSS for corrupt or truncated content, INVALID_ARGUMENT for bad
// arguments. Messages name the file, the offending value and what to check.

#ifndef CHUNKFLOW_DATASET_INDEXED_DATASET_H_
#define CHUNKFLOW_DATASET_INDEXED_DATASET_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace chunkflow::dataset {

// Token dtypes, valued as Megatron's dtype codes. Codes 6 (float64) and 7
// (float32) exist in Megatron but are not token types; Open rejects them.
enum class DType : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kUInt16 = 8,
};

// "uint8", "int8", "int16", "int32", "int64", "uint16"; "invalid" otherwise.
absl::string_view DTypeName(DType dtype);
// Bytes per token: 1, 1, 2, 4, 8, 2; 0 for a value outside the enum.
int64_t DTypeSize(DType dtype);
// Whether `value` is representable in `dtype`.
bool DTypeHolds(DType dtype, int64_t value);

// Megatron's DType.optimal_dtype: uint16 when max_token_id < 65500, else
// int32; int64 beyond the int32 range (Megatron never gets there).
// Errors: INVALID_ARGUMENT for a negative max_token_id.
absl::StatusOr<DType> SmallestDTypeFor(int64_t max_token_id);

// Read-only view of one Megatron indexed dataset. Thread-safe after Open (all
// methods are const and the mappings are read-only).
class IndexedDataset {
 public:
  // Maps <prefix>.idx and <prefix>.bin and validates them.
  // Errors: NOT_FOUND if either file is missing; DATA_LOSS for bad magic,
  // version or dtype code, a truncated .idx, a sequence that is empty, has a
  // negative length or reaches past the end of .bin, or document indices that
  // do not start at 0, decrease, or do not end at sequence_count; other codes
  // (from errno) if a file cannot be read or mapped.
  static absl::StatusOr<std::unique_ptr<IndexedDataset>> Open(absl::string_view prefix);

  IndexedDataset(const IndexedDataset&) = delete;
  IndexedDataset& operator=(const IndexedDataset&) = delete;
  ~IndexedDataset();

  const std::string& prefix() const { return prefix_; }
  DType dtype() const { return dtype_; }
  int64_t num_sequences() const { return num_sequences_; }
  int64_t num_documents() const { return static_cast<int64_t>(document_lengths_.size()); }
  // Tokens in document `doc` (the sum of its sequences' lengths); 0 for a
  // document with no sequences (Megatron allows repeated document indices).
  // Requires 0 <= doc < num_documents().
  int64_t document_length(int64_t doc) const { return document_lengths_[doc]; }
  // Every document's length, computed at Open.
  absl::Span<const int64_t> document_lengths() const { return document_lengths_; }

  // Replaces *tokens with document `doc`'s tokens, widened to int64.
  // Errors: INVALID_ARGUMENT if doc is outside [0, num_documents()).
  absl::Status ReadDocument(int64_t doc, std::vector<int64_t>* tokens) const;

 private:
  IndexedDataset() = default;
  absl::Status MapFiles();
  absl::Status ParseHeader();
  absl::Status ValidateSequences() const;
  absl::Status ValidateDocuments();
  int32_t SequenceLength(int64_t seq) const;
  int64_t SequencePointer(int64_t seq) const;
  int64_t DocumentIndex(int64_t i) const;

  std::string prefix_;
  std::string idx_path_;
  std::string bin_path_;
  const uint8_t* idx_ = nullptr;  // mmap of .idx (nullptr when empty)
  int64_t idx_size_ = 0;
  const uint8_t* bin_ = nullptr;  // mmap of .bin (nullptr when empty)
  int64_t bin_size_ = 0;
  DType dtype_ = DType::kUInt16;
  int64_t num_sequences_ = 0;
  int64_t document_count_ = 0;  // entries of document_indices = documents + 1
  int64_t lengths_offset_ = 0;
  int64_t pointers_offset_ = 0;
  int64_t doc_indices_offset_ = 0;
  std::vector<int64_t> document_lengths_;
};

// Writes a dataset in Megatron's format, one sequence per document (what
// Megatron's preprocess_data.py writes without --split-sentences). Writes go
// to <prefix>.bin.tmp and <prefix>.idx.tmp; Finish renames them into place,
// so a failed or abandoned write never leaves a half dataset under <prefix>.
// The destructor removes the temporary files if Finish did not succeed.
// Not thread-safe.
class IndexedDatasetWriter {
 public:
  // Errors: INVALID_ARGUMENT for a dtype outside the enum; the errno's code
  // (NOT_FOUND for a missing directory) if <prefix>.bin.tmp cannot be created.
  static absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> Create(absl::string_view prefix,
                                                                      DType dtype);

  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;
  ~IndexedDatasetWriter();

  // Appends one document (one sequence).
  // Errors: INVALID_ARGUMENT for an empty document, more than 2^31-1 tokens, or
  // a token that does not fit the dtype (the message names the token's
  // position, value and dtype); FAILED_PRECONDITION after Finish; the errno's
  // code on a write failure.
  absl::Status AddDocument(absl::Span<const int64_t> tokens);

  int64_t num_documents() const { return static_cast<int64_t>(lengths_.size()); }

  // Writes the .idx, closes both files and renames them to <prefix>.bin and
  // <prefix>.idx (replacing existing ones): Prepare, then Commit.
  // Errors: FAILED_PRECONDITION if called twice; the errno's code on failure.
  absl::Status Finish();

  // The two halves of Finish, for writers that must land together (tokens
  // and labels): Prepare writes and closes everything as .tmp files, where
  // all the I/O that can fail happens; Commit only renames them into place.
  // Without Commit the destructor removes the .tmp files.
  // Errors: FAILED_PRECONDITION for Prepare twice or Commit before Prepare.
  absl::Status Prepare();
  absl::Status Commit();

 private:
  IndexedDatasetWriter(std::string prefix, DType dtype, std::FILE* bin);
  absl::Status WriteIndex(const std::string& path) const;

  std::string prefix_;
  DType dtype_;
  std::FILE* bin_ = nullptr;
  bool finish_called_ = false;
  bool prepared_ = false;   // .tmp files complete
  bool committed_ = false;  // renamed into place
  int64_t bin_bytes_ = 0;
  std::vector<int32_t> lengths_;
  std::vector<uint8_t> buffer_;  // one document's encoded tokens
};

}  // namespace chunkflow::dataset

#endif  // CHUNKFLOW_DATASET_INDEXED_DATASET_H_
