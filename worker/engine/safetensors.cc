#include "worker/engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace chunkflow::engine {

// The files are little-endian; tensor bytes are copied straight into memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors.cc assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr int64_t kMaxHeaderBytes = 100'000'000;  // safetensors' MAX_HEADER_SIZE
constexpr char kMetadataKey[] = "__metadata__";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr int64_t kChunkElements = 1 << 16;  // staging for widening reads

std::string ErrnoText() { return std::strerror(errno); }

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

std::string Quoted(std::string_view s) { return absl::StrCat("'", std::string(s), "'"); }

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::optional<DType> ParseDType(const std::string& name) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32, DType::kI64}) {
    if (name == DTypeName(d)) return d;
  }
  return std::nullopt;
}

// Reads exactly `n` bytes at `offset`, retrying short reads and EINTR.
absl::Status PreadFully(int fd, void* dst, int64_t n, int64_t offset, const std::string& path) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, static_cast<size_t>(n), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      return absl::InternalError(
          absl::StrCat("cannot read ", path, " at byte ", offset, ": ", ErrnoText()));
    }
    if (got == 0) {
      return absl::InternalError(absl::StrCat("unexpected end of ", path, " at byte ", offset,
                                              " (was the file truncated after Open?)"));
    }
    p += got;
    n -= got;
    offset += got;
  }
  return absl::OkStatus();
}

// Returns `v` as a non-negative int64, or an error naming `what`.
absl::StatusOr<int64_t> NonNegativeInt(const Json& v, const std::string& what) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(u);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", v.dump(), ", expected a non-negative integer"));
}

}  // namespace

// ---------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

int64_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kI64:
      return 8;
  }
  return 0;
}

uint16_t FloatToBF16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // NaN
  // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit.
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float BF16ToFloat(uint16_t bits) {
  const uint32_t x = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToF16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;    // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;   // >= 65520 (and inf) -> inf
  const uint32_t exp = x >> 23;
  if (exp >= 113) {  // normal half: rebias the exponent, round 13 mantissa bits
    uint32_t h = ((exp - 112) << 10) | ((x & 0x7fffffu) >> 13);
    const uint32_t rest = x & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into exp
    return sign | static_cast<uint16_t>(h);
  }
  if (exp < 102) return sign;  // below 2^-25 (half the smallest subnormal) -> 0
  // Subnormal half: units of 2^-24; the value is mant * 2^(exp - 150).
  const uint32_t mant = (x & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exp;  // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // 0x400 is the smallest normal
  return sign | static_cast<uint16_t>(h);
}

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu;
  const uint32_t mant = bits & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mant), -24);  // exact
    return sign ? -magnitude : magnitude;
  }
  if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ---------------------------------------------------------------------------
// Reader: opening
// ---------------------------------------------------------------------------

struct SafetensorsReader::OpenFile {
  OpenFile(int fd_in, std::string path_in) : fd(fd_in), path(std::move(path_in)) {}
  ~OpenFile() { ::close(fd); }
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;

  int fd;
  std::string path;
};

namespace {

// Parses one header entry into `info` (name, file and offset already set:
// `offset` holds the buffer start). `buffer_bytes` bounds data_offsets.
absl::Status ParseTensorEntry(const Json& entry, int64_t buffer_bytes, TensorInfo* info) {
  const std::string where = absl::StrCat(info->file, ": tensor ", Quoted(info->name));
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " is ", entry.type_name(), ", expected an object"));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      return absl::InvalidArgumentError(absl::StrCat(where, " has no \"", field, "\" field"));
    }
  }
  const Json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " field \"dtype\" is ", dtype.dump(), ", expected a string"));
  }
  std::optional<DType> parsed = ParseDType(dtype.get<std::string>());
  if (!parsed.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has unsupported dtype ", dtype.dump(),
                                                   ", expected one of F32, F16, BF16, I32, I64"));
  }
  info->dtype = *parsed;
  const Json& shape = entry["shape"];
  if (!shape.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " field \"shape\" is ", shape.dump(), ", expected an array"));
  }
  info->numel = 1;
  for (const Json& dim : shape) {
    absl::StatusOr<int64_t> d = NonNegativeInt(dim, absl::StrCat(where, " shape entry"));
    if (!d.ok()) return d.status();
    info->shape.push_back(*d);
    if (__builtin_mul_overflow(info->numel, *d, &info->numel)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " shape ", shape.dump(), " overflows int64"));
    }
  }
  const Json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " field \"data_offsets\" is ", offsets.dump(), ", expected [begin, end]"));
  }
  absl::StatusOr<int64_t> begin = NonNegativeInt(offsets[0], absl::StrCat(where, " data begin"));
  if (!begin.ok()) return begin.status();
  absl::StatusOr<int64_t> end = NonNegativeInt(offsets[1], absl::StrCat(where, " data end"));
  if (!end.ok()) return end.status();
  if (*begin > *end || *end > buffer_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " data_offsets [", *begin, ", ", *end, "] lie outside the ",
                     buffer_bytes, "-byte data buffer (is the file truncated?)"));
  }
  if (__builtin_mul_overflow(info->numel, DTypeSize(info->dtype), &info->nbytes) ||
      info->nbytes != *end - *begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " data_offsets [", *begin, ", ", *end, "] span ", *end - *begin,
        " bytes, expected ", info->numel, " elements of ", DTypeName(info->dtype), " = ",
        info->numel * DTypeSize(info->dtype), " bytes for shape ", ShapeText(info->shape)));
  }
  info->offset += *begin;
  return absl::OkStatus();
}

absl::Status ParseMetadata(const Json& meta, const std::string& file,
                           std::map<std::string, std::string>* out) {
  if (!meta.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": \"__metadata__\" is ",
                                                   meta.type_name(), ", expected an object"));
  }
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": \"__metadata__\" entry \"", it.key(), "\" is ",
                       it.value().dump(), ", expected a string"));
    }
    out->emplace(it.key(), it.value().get<std::string>());  // first wins across shards
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SafetensorsReader::AddFile(const std::string& file_path) {
  const int fd = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no such file: ", file_path));
    return absl::InternalError(absl::StrCat("cannot open ", file_path, ": ", ErrnoText()));
  }
  auto file = std::make_shared<const OpenFile>(fd, file_path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat("cannot stat ", file_path, ": ", ErrnoText()));
  }
  const int64_t file_bytes = st.st_size;
  if (file_bytes < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        file_path, " is truncated: ", file_bytes,
        " bytes, expected at least 8 (the header length) for a safetensors file"));
  }
  uint64_t n = 0;
  absl::Status s = PreadFully(fd, &n, 8, 0, file_path);
  if (!s.ok()) return s;
  if (n > static_cast<uint64_t>(file_bytes - 8) || n > static_cast<uint64_t>(kMaxHeaderBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        file_path, ": header length ", n, " is beyond the file (", file_bytes,
        " bytes) or above safetensors' limit of ", kMaxHeaderBytes,
        " bytes; is this a safetensors file?"));
  }
  std::string text(n, '\0');
  s = PreadFully(fd, text.data(), static_cast<int64_t>(n), 8, file_path);
  if (!s.ok()) return s;
  const int64_t buffer_start = 8 + static_cast<int64_t>(n);
  Json header;
  try {
    header = Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_path, ": the ", n, "-byte header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file_path, ": the header is a ",
                                                   header.type_name(), ", expected an object"));
  }
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      s = ParseMetadata(it.value(), file_path, &metadata_);
      if (!s.ok()) return s;
      continue;
    }
    Entry entry;
    entry.info.name = it.key();
    entry.info.file = file_path;
    entry.info.offset = buffer_start;
    entry.file = file;
    s = ParseTensorEntry(it.value(), file_bytes - buffer_start, &entry.info);
    if (!s.ok()) return s;
    auto [where, inserted] = tensors_.emplace(it.key(), std::move(entry));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(it.key()), " is in both ",
                                                     where->second.info.file, " and ", file_path,
                                                     "; each tensor must be in one shard"));
    }
  }
  return absl::OkStatus();
}

absl::Status SafetensorsReader::OpenIndex(const std::string& dir, const std::string& index_path) {
  Json index;
  try {
    std::string text;
    const int fd = ::open(index_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return absl::InternalError(absl::StrCat("cannot open ", index_path, ": ", ErrnoText()));
    }
    OpenFile closer(fd, index_path);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      return absl::InternalError(absl::StrCat("cannot stat ", index_path, ": ", ErrnoText()));
    }
    text.resize(static_cast<size_t>(st.st_size));
    absl::Status s = PreadFully(fd, text.data(), st.st_size, 0, index_path);
    if (!s.ok()) return s;
    index = Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, " is not valid JSON: ", e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        index_path, " has no \"weight_map\" object mapping tensor names to shard files"));
  }
  const Json& weight_map = index["weight_map"];
  std::set<std::string> shards;
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry \"", it.key(),
                                                     "\" is ", it.value().dump(),
                                                     ", expected a shard file name"));
    }
    shards.insert(it.value().get<std::string>());
  }
  for (const std::string& shard : shards) {
    const std::string shard_path = absl::StrCat(dir, "/", shard);
    if (!Exists(shard_path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, " names shard \"", shard, "\" but ", shard_path, " does not exist"));
    }
    absl::Status s = AddFile(shard_path);
    if (!s.ok()) return s;
  }
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    const std::string shard_path = absl::StrCat(dir, "/", it.value().get<std::string>());
    auto found = tensors_.find(it.key());
    if (found == tensors_.end() || found->second.info.file != shard_path) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, " puts tensor ", Quoted(it.key()), " in ", shard_path,
          found == tensors_.end() ? ", but no shard holds it"
                                  : absl::StrCat(", but it is in ", found->second.info.file)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::Open(const std::string& path) {
  SafetensorsReader reader;
  reader.path_ = path;
  if (!Exists(path)) {
    return absl::NotFoundError(absl::StrCat("no such safetensors file or directory: ", path));
  }
  absl::Status s;
  if (IsDirectory(path)) {
    const std::string single = absl::StrCat(path, "/", kSingleFile);
    const std::string index = absl::StrCat(path, "/", kIndexFile);
    if (Exists(single)) {
      s = reader.AddFile(single);
    } else if (Exists(index)) {
      s = reader.OpenIndex(path, index);
    } else {
      return absl::NotFoundError(absl::StrCat("directory ", path, " holds neither ", kSingleFile,
                                              " nor ", kIndexFile));
    }
  } else {
    s = reader.AddFile(path);
  }
  if (!s.ok()) return s;
  return reader;
}

// ---------------------------------------------------------------------------
// Reader: lookups and reads
// ---------------------------------------------------------------------------

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) out.push_back(name);
  return out;
}

const TensorInfo* SafetensorsReader::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.info;
}

absl::StatusOr<const SafetensorsReader::Entry*> SafetensorsReader::Lookup(
    std::string_view name, const std::vector<int64_t>& expected_shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor ", Quoted(name), " missing from ", path_));
  }
  const TensorInfo& info = it->second.info;
  if (info.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " has shape ",
                                                   ShapeText(info.shape), ", expected ",
                                                   ShapeText(expected_shape), " (in ", info.file,
                                                   "); does the config match the checkpoint?"));
  }
  return &it->second;
}

absl::Status SafetensorsReader::ReadF32(std::string_view name,
                                        const std::vector<int64_t>& expected_shape,
                                        float* out) const {
  absl::StatusOr<const Entry*> entry = Lookup(name, expected_shape);
  if (!entry.ok()) return entry.status();
  const TensorInfo& info = (*entry)->info;
  const OpenFile& file = *(*entry)->file;
  if (info.dtype == DType::kF32) return PreadFully(file.fd, out, info.nbytes, info.offset, file.path);
  if (info.dtype != DType::kBF16 && info.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " in ", info.file,
                                                   " has integer dtype ", DTypeName(info.dtype),
                                                   ", expected F32, BF16 or F16"));
  }
  std::vector<uint16_t> staging(static_cast<size_t>(std::min(info.numel, kChunkElements)));
  for (int64_t done = 0; done < info.numel;) {
    const int64_t n = std::min(info.numel - done, kChunkElements);
    absl::Status s = PreadFully(file.fd, staging.data(), n * 2, info.offset + done * 2, file.path);
    if (!s.ok()) return s;
    if (info.dtype == DType::kBF16) {
      for (int64_t i = 0; i < n; ++i) out[done + i] = BF16ToFloat(staging[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) out[done + i] = F16ToFloat(staging[i]);
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsReader::ReadI32(std::string_view name,
                                        const std::vector<int64_t>& expected_shape,
                                        int32_t* out) const {
  absl::StatusOr<const Entry*> entry = Lookup(name, expected_shape);
  if (!entry.ok()) return entry.status();
  const TensorInfo& info = (*entry)->info;
  const OpenFile& file = *(*entry)->file;
  if (info.dtype == DType::kI32) return PreadFully(file.fd, out, info.nbytes, info.offset, file.path);
  if (info.dtype != DType::kI64) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(name), " in ", info.file,
                                                   " has float dtype ", DTypeName(info.dtype),
                                                   ", expected I32 or I64"));
  }
  std::vector<int64_t> staging(static_cast<size_t>(std::min(info.numel, kChunkElements)));
  for (int64_t done = 0; done < info.numel;) {
    const int64_t n = std::min(info.numel - done, kChunkElements);
    absl::Status s = PreadFully(file.fd, staging.data(), n * 8, info.offset + done * 8, file.path);
    if (!s.ok()) return s;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = staging[i];
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", Quoted(name), " in ", info.file, " holds I64 value ", v,
                         " at flat index ", done + i, ", expected a value that fits int32"));
      }
      out[done + i] = static_cast<int32_t>(v);
    }
    done += n;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

namespace {

// safetensors' Rust Dtype order (BOOL < ... < F16 < BF16 < I32 < U32 < F32 <
// F64 < I64 < U64); its serializer writes the highest first.
int SerializerRank(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return 0;
    case DType::kBF16:
      return 1;
    case DType::kI32:
      return 2;
    case DType::kF32:
      return 3;
    case DType::kI64:
      return 4;
  }
  return -1;
}

// Validates the tensors and returns pointers to them in file order, with
// their byte sizes.
absl::Status OrderTensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                          std::vector<std::pair<const TensorToWrite*, int64_t>>* ordered) {
  std::set<std::string_view> seen;
  for (const TensorToWrite& t : tensors) {
    const std::string where = absl::StrCat("writing ", path, ": tensor ", Quoted(t.name));
    if (t.name.empty() || t.name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat(
          "writing ", path, ": tensor name ", Quoted(t.name), " is not allowed (empty or reserved)"));
    }
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is given twice; names must be unique"));
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) {
        return absl::InvalidArgumentError(absl::StrCat(where, " has invalid shape ",
                                                       ShapeText(t.shape),
                                                       ", expected non-negative dimensions"));
      }
    }
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, DTypeSize(t.dtype), &nbytes)) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is too large: shape ",
                                                     ShapeText(t.shape)));
    }
    if (t.data == nullptr && nbytes > 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, " has null data for ", nbytes,
                                                     " bytes of shape ", ShapeText(t.shape)));
    }
    ordered->emplace_back(&t, nbytes);
  }
  std::sort(ordered->begin(), ordered->end(), [](const auto& a, const auto& b) {
    const int ra = SerializerRank(a.first->dtype), rb = SerializerRank(b.first->dtype);
    return ra != rb ? ra > rb : a.first->name < b.first->name;
  });
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const void* data, int64_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = ::write(fd, p, static_cast<size_t>(std::min<int64_t>(n, 1 << 30)));
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", ErrnoText()));
    p += put;
    n -= put;
  }
  return absl::OkStatus();
}

absl::Status WriteFileBody(int fd, const std::string& tmp, const std::string& header,
                           const std::vector<std::pair<const TensorToWrite*, int64_t>>& ordered) {
  const uint64_t n = header.size();
  absl::Status s = WriteAll(fd, &n, 8, tmp);
  if (s.ok()) s = WriteAll(fd, header.data(), static_cast<int64_t>(header.size()), tmp);
  for (const auto& [t, nbytes] : ordered) {
    if (s.ok()) s = WriteAll(fd, t->data, nbytes, tmp);
  }
  if (s.ok() && ::fsync(fd) != 0) {
    s = absl::InternalError(absl::StrCat("cannot fsync ", tmp, ": ", ErrnoText()));
  }
  return s;
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<const TensorToWrite*, int64_t>> ordered;
  absl::Status s = OrderTensors(path, tensors, &ordered);
  if (!s.ok()) return s;
  // ordered_json keeps insertion order, so the header reads like the Rust
  // serializer's: "__metadata__" first, then tensors in file order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  int64_t offset = 0;
  for (const auto& [t, nbytes] : ordered) {
    nlohmann::ordered_json entry;
    entry["dtype"] = DTypeName(t->dtype);
    entry["shape"] = t->shape;
    entry["data_offsets"] = {offset, offset + nbytes};
    header[t->name] = std::move(entry);
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "writing ", path, ": a tensor name or metadata string is not valid UTF-8: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ErrnoText(),
                                            " (does the parent directory exist?)"));
  }
  s = WriteFileBody(fd, tmp, text, ordered);
  if (::close(fd) != 0 && s.ok()) {
    s = absl::InternalError(absl::StrCat("cannot close ", tmp, ": ", ErrnoText()));
  }
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ErrnoText()));
  }
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace chunkflow::engine
