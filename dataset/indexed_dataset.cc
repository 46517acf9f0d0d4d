#include "dataset/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace chunkflow::dataset {

// The files are little-endian; values are copied in and out with memcpy.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "indexed_dataset.cc assumes a little-endian host");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr absl::string_view kMagicText = "MMIDIDX\\x00\\x00";
constexpr int64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;  // magic, version, dtype, 2 counts
constexpr int64_t kMaxSequenceLength = std::numeric_limits<int32_t>::max();

// Unaligned little-endian load (the .idx arrays start at byte 34).
template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void AppendLE(T v, std::string* out) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out->append(bytes, sizeof(T));
}

bool IsKnownDType(int code) {
  return code == 1 || code == 2 || code == 3 || code == 4 || code == 5 || code == 8;
}

// Decodes `n` tokens of type T at `p`, appending them to `out`.
template <typename T>
void DecodeAppend(const uint8_t* p, int64_t n, std::vector<int64_t>* out) {
  for (int64_t i = 0; i < n; ++i) out->push_back(static_cast<int64_t>(Load<T>(p + i * sizeof(T))));
}

void DecodeTokens(DType dtype, const uint8_t* p, int64_t n, std::vector<int64_t>* out) {
  switch (dtype) {
    case DType::kUInt8:
      return DecodeAppend<uint8_t>(p, n, out);
    case DType::kInt8:
      return DecodeAppend<int8_t>(p, n, out);
    case DType::kInt16:
      return DecodeAppend<int16_t>(p, n, out);
    case DType::kInt32:
      return DecodeAppend<int32_t>(p, n, out);
    case DType::kInt64:
      return DecodeAppend<int64_t>(p, n, out);
    case DType::kUInt16:
      return DecodeAppend<uint16_t>(p, n, out);
  }
}

// Writes `v` (in range for dtype) as DTypeSize(dtype) little-endian bytes:
// the low bytes of its two's complement.
void EncodeToken(int64_t item, int64_t v, uint8_t* out) {
  const uint64_t bits = static_cast<uint64_t>(v);
  std::memcpy(out, &bits, static_cast<size_t>(item));
}

std::string DTypeRange(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return "[0, 255]";
    case DType::kInt8:
      return "[-128, 127]";
    case DType::kInt16:
      return "[-32768, 32767]";
    case DType::kUInt16:
      return "[0, 65535]";
    case DType::kInt32:
      return "[-2147483648, 2147483647]";
    case DType::kInt64:
      return "the int64 range";
  }
  return "nothing";
}

// Maps `path` read-only. An empty file maps to (nullptr, 0).
absl::Status MapReadOnly(const std::string& path, absl::string_view prefix, const uint8_t** data,
                         int64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          path, ": no such file; a Megatron-LM indexed dataset '", prefix, "' needs both ", prefix,
          ".idx and ", prefix, ".bin: check the path prefix"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file: pass the dataset prefix, without .idx/.bin"));
  }
  *size = static_cast<int64_t>(st.st_size);
  *data = nullptr;
  if (*size > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(*size), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot mmap ", *size, " bytes"));
    }
    *data = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
  return absl::OkStatus();
}

absl::Status ErrnoError(int err, const std::string& path, absl::string_view action) {
  return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot ", action,
                                               " (does the directory exist and is it writable?)"));
}

// Buffered little-endian writes to a FILE*.
class LEFileWriter {
 public:
  explicit LEFileWriter(std::FILE* f) : f_(f) {}
  template <typename T>
  void Put(T v) {
    AppendLE(v, &buf_);
    if (buf_.size() >= (1 << 20)) Flush();
  }
  void PutBytes(const char* p, size_t n) { buf_.append(p, n); }
  // False if any write failed.
  bool Flush() {
    if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), f_) != buf_.size()) ok_ = false;
    buf_.clear();
    return ok_;
  }

 private:
  std::FILE* f_;
  std::string buf_;
  bool ok_ = true;
};

}  // namespace

// ===========================================================================
// DType
// ===========================================================================

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return "uint8";
    case DType::kInt8:
      return "int8";
    case DType::kInt16:
      return "int16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt16:
      return "uint16";
  }
  return "invalid";
}

int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt8:
      return 1;
    case DType::kInt16:
    case DType::kUInt16:
      return 2;
    case DType::kInt32:
      return 4;
    case DType::kInt64:
      return 8;
  }
  return 0;
}

bool DTypeHolds(DType dtype, int64_t value) {
  switch (dtype) {
    case DType::kUInt8:
      return value >= 0 && value <= 255;
    case DType::kInt8:
      return value >= -128 && value <= 127;
    case DType::kInt16:
      return value >= -32768 && value <= 32767;
    case DType::kUInt16:
      return value >= 0 && value <= 65535;
    case DType::kInt32:
      return value >= std::numeric_limits<int32_t>::min() &&
             value <= std::numeric_limits<int32_t>::max();
    case DType::kInt64:
      return true;
  }
  return false;
}

absl::StatusOr<DType> SmallestDTypeFor(int64_t max_token_id) {
  if (max_token_id < 0) {
    return absl::InvalidArgumentError(absl::StrCat("SmallestDTypeFor: max_token_id ", max_token_id,
                                                   " is negative: token ids are >= 0"));
  }
  if (max_token_id < 65500) return DType::kUInt16;  // Megatron's optimal_dtype threshold
  if (max_token_id <= std::numeric_limits<int32_t>::max()) return DType::kInt32;
  return DType::kInt64;
}

// ===========================================================================
// IndexedDataset: open and validate
// ===========================================================================

absl::StatusOr<std::unique_ptr<IndexedDataset>> IndexedDataset::Open(absl::string_view prefix) {
  std::unique_ptr<IndexedDataset> ds(new IndexedDataset());
  ds->prefix_ = std::string(prefix);
  ds->idx_path_ = ds->prefix_ + ".idx";
  ds->bin_path_ = ds->prefix_ + ".bin";
  if (absl::Status s = ds->MapFiles(); !s.ok()) return s;
  if (absl::Status s = ds->ParseHeader(); !s.ok()) return s;
  if (absl::Status s = ds->ValidateSequences(); !s.ok()) return s;
  if (absl::Status s = ds->ValidateDocuments(); !s.ok()) return s;
  return ds;
}

IndexedDataset::~IndexedDataset() {
  if (idx_ != nullptr) ::munmap(const_cast<uint8_t*>(idx_), static_cast<size_t>(idx_size_));
  if (bin_ != nullptr) ::munmap(const_cast<uint8_t*>(bin_), static_cast<size_t>(bin_size_));
}

absl::Status IndexedDataset::MapFiles() {
  if (absl::Status s = MapReadOnly(idx_path_, prefix_, &idx_, &idx_size_); !s.ok()) return s;
  return MapReadOnly(bin_path_, prefix_, &bin_, &bin_size_);
}

absl::Status IndexedDataset::ParseHeader() {
  if (idx_size_ < kHeaderBytes) {
    return absl::DataLossError(absl::StrCat(idx_path_, ": truncated header (", idx_size_,
                                            " bytes, a Megatron-LM .idx header has ", kHeaderBytes,
                                            "): is the file complete?"));
  }
  const absl::string_view magic(reinterpret_cast<const char*>(idx_), sizeof(kMagic));
  if (magic != absl::string_view(kMagic, sizeof(kMagic))) {
    return absl::DataLossError(
        absl::StrCat(idx_path_, ": bad magic (got ", absl::BytesToHexString(magic), ", expected ",
                     kMagicText, "): is this a Megatron-LM indexed dataset?"));
  }
  const uint64_t version = Load<uint64_t>(idx_ + 9);
  if (version != 1) {
    return absl::DataLossError(absl::StrCat(idx_path_, ": unsupported version ", version,
                                            " (expected 1): is this a Megatron-LM MMIDIDX file?"));
  }
  const int code = idx_[17];
  if (code == 6 || code == 7) {
    return absl::DataLossError(absl::StrCat(
        idx_path_, ": dtype code ", code, " (", code == 6 ? "float64" : "float32",
        ") is a floating-point type; token datasets need an integer dtype (1 uint8, 2 int8, "
        "3 int16, 4 int32, 5 int64, 8 uint16)"));
  }
  if (!IsKnownDType(code)) {
    return absl::DataLossError(absl::StrCat(idx_path_, ": unknown dtype code ", code,
                                            " (valid: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, "
                                            "8 uint16): is the header corrupt?"));
  }
  dtype_ = static_cast<DType>(code);
  const uint64_t seqs = Load<uint64_t>(idx_ + 18);
  const uint64_t docs = Load<uint64_t>(idx_ + 26);
  const uint64_t room = static_cast<uint64_t>(idx_size_ - kHeaderBytes);
  // Bound each count first so that the byte total below cannot overflow.
  if (seqs > room / 12 || docs > room / 8 || seqs * 12 + docs * 8 > room) {
    return absl::DataLossError(absl::StrCat(
        idx_path_, ": truncated: the header declares ", seqs, " sequences and ", docs,
        " document indices, which need ", kHeaderBytes, " + 12 * ", seqs, " + 8 * ", docs,
        " bytes, but the file has ", idx_size_, " bytes: was it copied completely?"));
  }
  if (docs == 0) {
    return absl::DataLossError(absl::StrCat(
        idx_path_, ": document_count is 0, expected at least 1 (document_indices starts with 0)"));
  }
  num_sequences_ = static_cast<int64_t>(seqs);
  document_count_ = static_cast<int64_t>(docs);
  lengths_offset_ = kHeaderBytes;
  pointers_offset_ = lengths_offset_ + 4 * num_sequences_;
  doc_indices_offset_ = pointers_offset_ + 8 * num_sequences_;
  // Bytes after document_indices (Megatron's int8 sequence_modes for
  // multimodal data, or anything else) are ignored.
  return absl::OkStatus();
}

int32_t IndexedDataset::SequenceLength(int64_t seq) const {
  return Load<int32_t>(idx_ + lengths_offset_ + 4 * seq);
}

int64_t IndexedDataset::SequencePointer(int64_t seq) const {
  return Load<int64_t>(idx_ + pointers_offset_ + 8 * seq);
}

int64_t IndexedDataset::DocumentIndex(int64_t i) const {
  return Load<int64_t>(idx_ + doc_indices_offset_ + 8 * i);
}

absl::Status IndexedDataset::ValidateSequences() const {
  const int64_t item = DTypeSize(dtype_);
  for (int64_t i = 0; i < num_sequences_; ++i) {
    const int64_t len = SequenceLength(i);
    const int64_t ptr = SequencePointer(i);
    if (len < 0) {
      return absl::DataLossError(absl::StrCat(idx_path_, ": sequence ", i, " has negative length ",
                                              len, ": the .idx is corrupt"));
    }
    if (len == 0) {
      return absl::DataLossError(
          absl::StrCat(idx_path_, ": sequence ", i,
                       " is empty (length 0): rebuild the dataset without empty sequences"));
    }
    const int64_t bytes = len * item;
    if (ptr < 0 || ptr > bin_size_ || bytes > bin_size_ - ptr) {
      return absl::DataLossError(
          absl::StrCat(idx_path_, ": sequence ", i, " (pointer ", ptr, ", ", len, " tokens of ",
                       DTypeName(dtype_), " = ", bytes, " bytes) lies outside ", bin_path_, " (",
                       bin_size_, " bytes): is the .bin truncated or from another dataset?"));
    }
  }
  return absl::OkStatus();
}

absl::Status IndexedDataset::ValidateDocuments() {
  const int64_t first = DocumentIndex(0);
  if (first != 0) {
    return absl::DataLossError(absl::StrCat(idx_path_, ": document_indices[0] is ", first,
                                            ", expected 0: the .idx is corrupt"));
  }
  document_lengths_.assign(document_count_ - 1, 0);
  int64_t prev = 0;
  for (int64_t i = 1; i < document_count_; ++i) {
    const int64_t at = DocumentIndex(i);
    if (at < prev) {
      return absl::DataLossError(absl::StrCat(idx_path_, ": document_indices[", i, "] = ", at,
                                              " is less than document_indices[", i - 1,
                                              "] = ", prev, ": indices must not decrease"));
    }
    if (at > num_sequences_) {
      return absl::DataLossError(absl::StrCat(idx_path_, ": document_indices[", i, "] = ", at,
                                              " exceeds sequence_count ", num_sequences_,
                                              ": the .idx is corrupt"));
    }
    int64_t tokens = 0;
    for (int64_t s = prev; s < at; ++s) tokens += SequenceLength(s);
    document_lengths_[i - 1] = tokens;
    prev = at;
  }
  if (prev != num_sequences_) {
    return absl::DataLossError(absl::StrCat(idx_path_, ": document_indices ends at ", prev,
                                            ", expected sequence_count ", num_sequences_,
                                            ": the last document must end at the last sequence"));
  }
  return absl::OkStatus();
}

// ===========================================================================
// IndexedDataset: reads
// ===========================================================================

absl::Status IndexedDataset::ReadDocument(int64_t doc, std::vector<int64_t>* tokens) const {
  if (doc < 0 || doc >= num_documents()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix_, ": document ", doc, " is out of range [0, ", num_documents(), ")"));
  }
  tokens->clear();
  tokens->reserve(document_lengths_[doc]);
  const int64_t end = DocumentIndex(doc + 1);
  for (int64_t s = DocumentIndex(doc); s < end; ++s) {
    DecodeTokens(dtype_, bin_ + SequencePointer(s), SequenceLength(s), tokens);
  }
  return absl::OkStatus();
}

// ===========================================================================
// IndexedDatasetWriter
// ===========================================================================

absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> IndexedDatasetWriter::Create(
    absl::string_view prefix, DType dtype) {
  if (!IsKnownDType(static_cast<int>(dtype))) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": invalid dtype code ",
                                                   static_cast<int>(dtype),
                                                   " (valid: 1-5 and 8, see DType)"));
  }
  const std::string tmp = absl::StrCat(prefix, ".bin.tmp");
  std::FILE* bin = std::fopen(tmp.c_str(), "wb");
  if (bin == nullptr) return ErrnoError(errno, tmp, "create");
  return std::unique_ptr<IndexedDatasetWriter>(
      new IndexedDatasetWriter(std::string(prefix), dtype, bin));
}

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, DType dtype, std::FILE* bin)
    : prefix_(std::move(prefix)), dtype_(dtype), bin_(bin) {}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (bin_ != nullptr) std::fclose(bin_);
  if (!committed_) {
    std::remove((prefix_ + ".bin.tmp").c_str());
    std::remove((prefix_ + ".idx.tmp").c_str());
  }
}

absl::Status IndexedDatasetWriter::AddDocument(absl::Span<const int64_t> tokens) {
  const int64_t doc = num_documents();
  if (finish_called_) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix_, ": AddDocument after Finish (document ", doc, ")"));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix_, ": document ", doc, " is empty: Megatron-LM datasets hold no empty sequences"));
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n > kMaxSequenceLength) {
    return absl::InvalidArgumentError(absl::StrCat(prefix_, ": document ", doc, " has ", n,
                                                   " tokens, more than the int32 length field "
                                                   "holds (",
                                                   kMaxSequenceLength, ")"));
  }
  const int64_t item = DTypeSize(dtype_);
  buffer_.resize(static_cast<size_t>(n * item));
  for (int64_t i = 0; i < n; ++i) {
    if (!DTypeHolds(dtype_, tokens[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          prefix_, ": document ", doc, ", token ", i, ": value ", tokens[i], " does not fit dtype ",
          DTypeName(dtype_), " (range ", DTypeRange(dtype_), "): use a wider dtype such as ",
          dtype_ == DType::kInt32 ? "int64" : "int32"));
    }
    EncodeToken(item, tokens[i], buffer_.data() + i * item);
  }
  if (std::fwrite(buffer_.data(), 1, buffer_.size(), bin_) != buffer_.size()) {
    return ErrnoError(errno, prefix_ + ".bin.tmp", "write");
  }
  lengths_.push_back(static_cast<int32_t>(n));
  return absl::OkStatus();
}

absl::Status IndexedDatasetWriter::WriteIndex(const std::string& path) const {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return ErrnoError(errno, path, "create");
  LEFileWriter w(f);
  const uint64_t seqs = lengths_.size();
  w.PutBytes(kMagic, sizeof(kMagic));
  w.Put<uint64_t>(1);  // version
  w.Put<uint8_t>(static_cast<uint8_t>(dtype_));
  w.Put<uint64_t>(seqs);
  w.Put<uint64_t>(seqs + 1);  // document_count: one sequence per document, plus the leading 0
  for (int32_t len : lengths_) w.Put<int32_t>(len);
  int64_t pointer = 0;
  for (int32_t len : lengths_) {
    w.Put<int64_t>(pointer);
    pointer += static_cast<int64_t>(len) * DTypeSize(dtype_);
  }
  for (uint64_t d = 0; d <= seqs; ++d) w.Put<int64_t>(static_cast<int64_t>(d));
  if (!w.Flush()) {
    const int err = errno;
    std::fclose(f);
    return ErrnoError(err, path, "write");
  }
  if (std::fclose(f) != 0) return ErrnoError(errno, path, "write");
  return absl::OkStatus();
}

absl::Status IndexedDatasetWriter::Finish() {
  if (absl::Status s = Prepare(); !s.ok()) return s;
  return Commit();
}

absl::Status IndexedDatasetWriter::Prepare() {
  if (finish_called_) {
    return absl::FailedPreconditionError(absl::StrCat(prefix_, ": Finish called twice"));
  }
  finish_called_ = true;
  const std::string bin_tmp = prefix_ + ".bin.tmp";
  const int closed = std::fclose(bin_);
  bin_ = nullptr;
  if (closed != 0) return ErrnoError(errno, bin_tmp, "write");
  if (absl::Status s = WriteIndex(prefix_ + ".idx.tmp"); !s.ok()) return s;
  prepared_ = true;
  return absl::OkStatus();
}

absl::Status IndexedDatasetWriter::Commit() {
  if (!prepared_ || committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat(prefix_, committed_ ? ": Commit called twice" : ": Commit before Prepare"));
  }
  // .bin first: a reader that finds the new .idx also finds its .bin.
  for (const char* ext : {".bin", ".idx"}) {
    const std::string to = prefix_ + ext;
    const std::string from = to + ".tmp";
    if (std::rename(from.c_str(), to.c_str()) != 0) return ErrnoError(errno, to, "rename into");
  }
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace chunkflow::dataset
