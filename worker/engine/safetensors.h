// Hugging Face safetensors: a reader for one file, a model directory or a
// sharded checkpoint, and an atomic writer whose files load in the Python
// `safetensors` library and in transformers' from_pretrained.
//
//   absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open("/models/qwen");
//   if (!r.ok()) return r.status();
//   std::vector<float> w(896 * 896);
//   absl::Status s = r->ReadF32("model.layers.0.self_attn.q_proj.weight", {896, 896}, w.data());
//
//   std::vector<float> bias = {0.5f, -1.0f};
//   absl::Status done = WriteSafetensors(
//       "/tmp/out.safetensors", {{"bias", DType::kF32, {2}, bias.data()}}, {{"format", "pt"}});
//
// The file layout, all little-endian:
//
//   0      uint64    N, the header's length in bytes
//   8      char[N]   JSON: {"name": {"dtype": "F32", "shape": [2, 3],
//                           "data_offsets": [begin, end]}, ...,
//                           "__metadata__": {"key": "value", ...}}  (optional)
//   8 + N  bytes     the buffer; [begin, end) of each tensor is relative to it
//
// A sharded checkpoint is a directory with model.safetensors.index.json, whose
// "weight_map" maps every tensor name to the shard file that holds it.
//
// Open reads headers only and keeps the files open; each Read* call preads the
// one tensor it wants, so a multi-GB checkpoint costs no RAM until read. A
// reader is cheap to copy (copies share the open files) and its const methods
// are safe to call from several threads at once.

#ifndef CHUNKFLOW_WORKER_ENGINE_SAFETENSORS_H_
#define CHUNKFLOW_WORKER_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace chunkflow::engine {

// ---------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------

// The element types this engine reads and writes. Other safetensors dtypes
// (F64, I8, U8, BOOL, F8_*, ...) are rejected by Open as unsupported.
enum class DType { kF32, kF16, kBF16, kI32, kI64 };

// The safetensors spelling: "F32", "F16", "BF16", "I32", "I64".
const char* DTypeName(DType dtype);
// Bytes per element: 4, 2, 2, 4, 8.
int64_t DTypeSize(DType dtype);

// bf16 is the top half of an fp32. FloatToBF16 rounds to nearest, ties to
// even; NaN stays NaN (quiet), +-inf stay inf. BF16ToFloat is exact.
uint16_t FloatToBF16(float value);
float BF16ToFloat(uint16_t bits);

// IEEE half. FloatToF16 rounds to nearest, ties to even, with subnormals;
// |value| >= 65520 becomes inf; NaN stays NaN (quiet). F16ToFloat is exact.
uint16_t FloatToF16(float value);
float F16ToFloat(uint16_t bits);

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] is a scalar (numel 1)
  int64_t numel = 0;
  int64_t offset = 0;  // absolute byte offset of the data in `file` (8 + N + begin)
  int64_t nbytes = 0;  // numel * DTypeSize(dtype)
  std::string file;    // the .safetensors file holding it
};

class SafetensorsReader {
 public:
  // `path` is a .safetensors file, or a directory holding model.safetensors
  // (preferred, as in transformers) or model.safetensors.index.json, in which
  // case every shard named in its weight_map is opened.
  //
  // Errors:
  //   NOT_FOUND         no such file or directory; a directory with neither
  //                     model.safetensors nor model.safetensors.index.json.
  //   INVALID_ARGUMENT  a file shorter than 8 bytes; a header length beyond
  //                     the file (or above safetensors' 100 MB limit); bad
  //                     JSON or a field of the wrong JSON type; an unknown
  //                     dtype; data_offsets outside the buffer or whose size
  //                     is not numel * dtype size; an index without a
  //                     weight_map, naming a missing shard, or naming a tensor
  //                     its shard lacks; one tensor name in two shards.
  //   INTERNAL          an I/O error (open, stat, read) with strerror.
  static absl::StatusOr<SafetensorsReader> Open(const std::string& path);

  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // The tensor's header entry, or nullptr if there is no such tensor.
  const TensorInfo* Find(std::string_view name) const;
  // The "__metadata__" map; for a sharded checkpoint the union over shards
  // (the first shard in file-name order wins a key they disagree on).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The path given to Open.
  const std::string& path() const { return path_; }

  // Reads tensor `name` as fp32 into out[numel]: F32 is copied, BF16 and F16
  // are widened exactly.
  // Errors: NOT_FOUND "tensor 'x' missing from <path>"; INVALID_ARGUMENT when
  // the shape is not `expected_shape` ("tensor 'x' has shape [2,3], expected
  // [3,2]") or the dtype is an integer; INTERNAL on a read error.
  absl::Status ReadF32(std::string_view name, const std::vector<int64_t>& expected_shape,
                       float* out) const;

  // Reads an I32 or I64 tensor into out[numel]; I64 values must fit int32.
  // Errors: as ReadF32, plus INVALID_ARGUMENT for a float dtype or an I64
  // value outside int32 (naming the value and its flat index).
  absl::Status ReadI32(std::string_view name, const std::vector<int64_t>& expected_shape,
                       int32_t* out) const;

 private:
  struct OpenFile;  // an fd, closed when the last reader sharing it goes
  struct Entry {
    TensorInfo info;
    std::shared_ptr<const OpenFile> file;
  };

  SafetensorsReader() = default;

  absl::Status AddFile(const std::string& file_path);
  absl::Status OpenIndex(const std::string& dir, const std::string& index_path);
  absl::StatusOr<const Entry*> Lookup(std::string_view name,
                                      const std::vector<int64_t>& expected_shape) const;

  std::string path_;
  std::map<std::string, Entry, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * DTypeSize(dtype) bytes, little-endian
};

// Writes one safetensors file to `path` + ".tmp", fsyncs it and renames it
// over `path`, so readers never see half a file. The parent directory must
// exist. The bytes match what the Rust/Python safetensors serializer writes:
// compact JSON with "__metadata__" first (omitted when empty), each entry as
// {"dtype","shape","data_offsets"}, the header padded with spaces to a
// multiple of 8, and the data back to back with no gaps, ordered by dtype
// size (largest first) then by name, so every tensor is aligned to its
// element size in the file. Errors: INVALID_ARGUMENT for an empty, reserved
// ("__metadata__") or duplicate name, a negative dimension, or null data with
// a nonzero size; INTERNAL for an I/O error, naming the path and strerror
// (the .tmp file is removed).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_SAFETENSORS_H_
