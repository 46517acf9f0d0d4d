#include "dataset/jsonl.h"

#include <sys/types.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace chunkflow::dataset {
namespace {

using Json = nlohmann::json;

// Called with each record and its 1-based line number.
using RecordFn = std::function<absl::Status(int64_t line, JsonlRecord& record)>;

// A JSON value for an error message, cut to a readable length.
std::string Show(const Json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// "a string", "an object", ... for an error message.
std::string Kind(const Json& v) {
  if (v.is_number_float()) return "a float";
  if (v.is_null()) return "null";
  const std::string name = v.type_name();
  return absl::StrCat(name[0] == 'a' || name[0] == 'o' ? "an " : "a ", name);
}

absl::Status LineError(absl::string_view path, int64_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", what));
}

// Reads `key` (an array of integers) into *out. `allow_ignore` admits -100.
absl::Status ParseIds(absl::string_view path, int64_t line, const char* key, const Json& array,
                      bool allow_ignore, std::vector<int64_t>* out) {
  if (!array.is_array()) {
    return LineError(path, line,
                     absl::StrCat("\"", key, "\" is ", Kind(array), " (", Show(array),
                                  "), expected an array of integer token ids"));
  }
  out->clear();
  out->reserve(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const Json& v = array[i];
    const std::string where = absl::StrCat(key, "[", i, "] is ");
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return LineError(path, line, absl::StrCat(where, u, ", larger than int64"));
      }
      out->push_back(static_cast<int64_t>(u));
      continue;
    }
    if (!v.is_number_integer()) {
      return LineError(path, line,
                       absl::StrCat(where, Kind(v), " (", Show(v),
                                    "), not an integer: token ids must be JSON integers"));
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 && !(allow_ignore && id == kIgnoreIndex)) {
      return LineError(path, line,
                       absl::StrCat(where, id,
                                    allow_ignore ? ": labels must be token ids >= 0 or -100 "
                                                   "(the ignore index)"
                                                 : ": token ids must be >= 0"));
    }
    out->push_back(id);
  }
  return absl::OkStatus();
}

// Parses one non-blank line into *record.
absl::Status ParseLine(absl::string_view path, int64_t line, absl::string_view text,
                       JsonlRecord* record) {
  Json j;
  try {
    j = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {  // nlohmann reports errors by throwing
    return LineError(path, line, absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return LineError(path, line,
                     absl::StrCat("not a JSON object (got ", j.type_name(), " ", Show(j),
                                  "): each line must be {\"input_ids\": [...]}"));
  }
  auto ids = j.find("input_ids");
  if (ids == j.end()) {
    std::vector<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
    return LineError(path, line,
                     absl::StrCat("missing \"input_ids\" (keys present: ",
                                  keys.empty() ? "none" : absl::StrJoin(keys, ", "), ")"));
  }
  if (absl::Status s = ParseIds(path, line, "input_ids", *ids, false, &record->input_ids);
      !s.ok()) {
    return s;
  }
  if (record->input_ids.empty()) {
    return LineError(path, line, "\"input_ids\" is empty: every record needs at least one token");
  }
  record->labels.clear();
  auto labels = j.find("labels");
  if (labels == j.end() || labels->is_null()) return absl::OkStatus();
  if (absl::Status s = ParseIds(path, line, "labels", *labels, true, &record->labels); !s.ok()) {
    return s;
  }
  if (record->labels.size() != record->input_ids.size()) {
    return LineError(
        path, line,
        absl::StrCat("\"labels\" has ", record->labels.size(), " entries but \"input_ids\" has ",
                     record->input_ids.size(), ": they must have the same length"));
  }
  return absl::OkStatus();
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// The buffer POSIX getline grows.
struct LineBuffer {
  LineBuffer() = default;
  LineBuffer(const LineBuffer&) = delete;
  LineBuffer& operator=(const LineBuffer&) = delete;
  ~LineBuffer() { std::free(data); }
  char* data = nullptr;
  size_t capacity = 0;
};

// Calls fn for every record of the file, stopping at the first error.
absl::Status ForEachRecord(absl::string_view path, const RecordFn& fn) {
  const std::string p(path);
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(p.c_str(), "r"));
  if (f == nullptr) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat(p, ": no such file: check the JSONL path"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat(p, ": cannot open"));
  }
  LineBuffer buf;
  JsonlRecord record;
  for (int64_t line = 1;; ++line) {
    errno = 0;
    const ssize_t n = ::getline(&buf.data, &buf.capacity, f.get());
    if (n < 0) {
      if (std::ferror(f.get())) return absl::ErrnoToStatus(errno, absl::StrCat(p, ": read error"));
      return absl::OkStatus();
    }
    const absl::string_view text = absl::StripAsciiWhitespace(absl::string_view(buf.data, n));
    if (text.empty()) continue;
    if (absl::Status s = ParseLine(p, line, text, &record); !s.ok()) return s;
    if (absl::Status s = fn(line, record); !s.ok()) return s;
  }
}

// Pass 1 of the converter: validates the file and sizes the output.
struct JsonlSummary {
  int64_t records = 0;
  int64_t max_id = 0;
  bool any_labels = false;
};

absl::StatusOr<JsonlSummary> Summarize(absl::string_view path, std::optional<DType> dtype) {
  JsonlSummary sum;
  absl::Status s = ForEachRecord(path, [&](int64_t line, JsonlRecord& r) -> absl::Status {
    ++sum.records;
    sum.any_labels = sum.any_labels || !r.labels.empty();
    for (size_t i = 0; i < r.input_ids.size(); ++i) {
      const int64_t id = r.input_ids[i];
      if (dtype.has_value() && !DTypeHolds(*dtype, id)) {
        return LineError(
            path, line,
            absl::StrCat("input_ids[", i, "] = ", id, " does not fit dtype ", DTypeName(*dtype),
                         ": use a wider dtype (int32) or let the converter choose"));
      }
      if (id > sum.max_id) sum.max_id = id;
    }
    for (size_t i = 0; i < r.labels.size(); ++i) {  // labels are written as int32
      if (!DTypeHolds(DType::kInt32, r.labels[i])) {
        return LineError(path, line,
                         absl::StrCat("labels[", i, "] = ", r.labels[i],
                                      " does not fit int32, the labels' dtype"));
      }
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  if (sum.records == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no records (empty or only blank lines): nothing to convert"));
  }
  return sum;
}

}  // namespace

absl::StatusOr<std::vector<JsonlRecord>> ReadJsonl(absl::string_view path) {
  std::vector<JsonlRecord> out;
  absl::Status s = ForEachRecord(path, [&out](int64_t, JsonlRecord& r) {
    out.push_back(std::move(r));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<int64_t>> ReadJsonlLengths(absl::string_view path) {
  std::vector<int64_t> out;
  absl::Status s = ForEachRecord(path, [&out](int64_t, JsonlRecord& r) {
    out.push_back(static_cast<int64_t>(r.input_ids.size()));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status ConvertJsonlToIndexed(absl::string_view jsonl_path, absl::string_view out_prefix,
                                   std::optional<DType> dtype) {
  absl::StatusOr<JsonlSummary> sum = Summarize(jsonl_path, dtype);
  if (!sum.ok()) return sum.status();
  if (!dtype.has_value()) {
    absl::StatusOr<DType> smallest = SmallestDTypeFor(sum->max_id);
    if (!smallest.ok()) return smallest.status();
    dtype = *smallest;
  }
  auto tokens = IndexedDatasetWriter::Create(out_prefix, *dtype);
  if (!tokens.ok()) return tokens.status();
  const std::string labels_prefix = absl::StrCat(out_prefix, ".labels");
  std::unique_ptr<IndexedDatasetWriter> labels;
  if (sum->any_labels) {
    auto w = IndexedDatasetWriter::Create(labels_prefix, DType::kInt32);
    if (!w.ok()) return w.status();
    labels = *std::move(w);
  }
  absl::Status s = ForEachRecord(jsonl_path, [&](int64_t line, JsonlRecord& r) -> absl::Status {
    absl::Status added = (*tokens)->AddDocument(r.input_ids);
    if (added.ok() && labels != nullptr) {
      added = labels->AddDocument(r.labels.empty() ? r.input_ids : r.labels);
    }
    if (added.ok()) return added;
    return absl::Status(added.code(), absl::StrCat(jsonl_path, ":", line, ": ", added.message()));
  });
  if (!s.ok()) return s;
  // Everything that can fail first (both datasets written as .tmp files),
  // then the renames: tokens and labels land together, or neither does and
  // the previous conversion stays as it was.
  if (absl::Status p = (*tokens)->Prepare(); !p.ok()) return p;
  if (labels != nullptr) {
    if (absl::Status p = labels->Prepare(); !p.ok()) return p;
  }
  if (absl::Status c = (*tokens)->Commit(); !c.ok()) return c;
  if (labels != nullptr) return labels->Commit();
  // A labels dataset from an earlier conversion would not match these tokens.
  std::remove((labels_prefix + ".bin").c_str());
  std::remove((labels_prefix + ".idx").c_str());
  return absl::OkStatus();
}

}  // namespace chunkflow::dataset
