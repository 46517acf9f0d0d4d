#include "tools/bench/bench_util.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace chunkflow::bench {

// splitmix64; tools/bench/torch_step.py mirrors it so both see the same tokens.
uint64_t NextSplitMix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<std::vector<int32_t>> SplitMix64Tokens(const std::vector<int64_t>& lengths,
                                                   int64_t vocab, uint64_t seed,
                                                   int64_t* checksum) {
  std::vector<std::vector<int32_t>> out(lengths.size());
  uint64_t state = seed;
  *checksum = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    for (int64_t p = 0; p < lengths[i]; ++p) {
      const auto tok =
          static_cast<int32_t>((NextSplitMix64(state) >> 32) % static_cast<uint64_t>(vocab));
      out[i].push_back(tok);
      *checksum += tok;
    }
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> ParseInts(const std::string& flag, const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, ": '", part, "' is not a positive integer (got --", flag, "=", text, ")"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The first `left` columns are left-aligned, the rest right-aligned; a row of
// one cell is a note printed as is.
void PrintTable(const std::string& title, size_t left,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (r.size() == 1) continue;
    width.resize(std::max(width.size(), r.size()), 0);
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::printf("\n%s\n", title.c_str());
  for (size_t n = 0; n < rows.size(); ++n) {
    const auto& r = rows[n];
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      if (r.size() == 1) {
        line = r[0];
        break;
      }
      const std::string pad(width[i] - r[i].size(), ' ');
      line += (i == 0 ? "" : "  ") + (i < left ? r[i] + pad : pad + r[i]);
    }
    std::printf("%s\n", line.c_str());
    if (n == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      std::printf("%s\n", std::string(total > 2 ? total - 2 : 0, '-').c_str());
    }
  }
  std::fflush(stdout);
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs `command` with sh; returns its stdout (stderr passes through), or an
// error naming the command when it cannot start or exits non-zero.
absl::StatusOr<std::string> RunChild(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError(absl::StrCat("cannot run: ", command));
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = ::pclose(pipe);
  if (status != 0) {
    return absl::InternalError(absl::StrCat(
        "exit status ", WIFEXITED(status) ? WEXITSTATUS(status) : status, " from: ", command));
  }
  return out;
}

// The last line of `out` that starts with '{': the child's JSON result.
std::string LastJsonLine(const std::string& out) {
  std::string last;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!line.empty() && line.front() == '{') last = std::string(line);
  }
  return last;
}

// A number or string value of a flat one-line JSON object we wrote ourselves
// (the children's results): enough for them, not a general JSON parser.
std::optional<double> JsonNumber(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\":");
  if (at == std::string::npos) return std::nullopt;
  const char* begin = line.c_str() + at + key.size() + 3;
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin) return std::nullopt;
  return v;
}

std::string JsonStringValue(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\":");
  if (at == std::string::npos) return "";
  const size_t open = line.find('"', at + key.size() + 3);
  const size_t close = open == std::string::npos ? open : line.find('"', open + 1);
  if (close == std::string::npos) return "";
  return line.substr(open + 1, close - open - 1);
}

std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string Num(double v) { return absl::StrFormat("%.6g", v); }

absl::Status WriteJsonArray(const std::string& path, const std::vector<std::string>& rows) {
  if (path.empty()) return absl::OkStatus();
  std::ofstream out(path);
  out << "[" << absl::StrJoin(rows, ",\n") << "]\n";
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write --json=", path));
  return absl::OkStatus();
}

BaselineResult RunTorchBaseline(const std::string& python, const std::string& script,
                                const std::string& args, int64_t checksum,
                                const std::string& tag) {
  BaselineResult r;
  struct stat st;
  if (python.empty()) {
    r.note = "PyTorch: skipped (--torch_python is empty)";
  } else if (std::system((ShellQuote(python) + " -c 'import torch' >/dev/null 2>&1").c_str()) !=
             0) {
    r.note = absl::StrCat("PyTorch: skipped (no torch: ", python, " cannot import torch)");
  } else if (::stat(script.c_str(), &st) != 0) {
    r.note = absl::StrCat("PyTorch: skipped (script not found: ", script,
                          "; run from the repository root or set --torch_script)");
  }
  if (!r.note.empty()) return r;
  const std::string cmd = absl::StrCat(ShellQuote(python), " ", ShellQuote(script), " ", args);
  std::fprintf(stderr, "%s: PyTorch: %s\n", tag.c_str(), cmd.c_str());
  absl::StatusOr<std::string> out = RunChild(cmd);
  const std::string line = out.ok() ? LastJsonLine(*out) : "";
  if (!JsonNumber(line, "step_seconds_median")) {
    r.note = absl::StrCat("PyTorch: failed (",
                          out.ok() ? "no JSON result" : out.status().message(), ")");
    return r;
  }
  if (checksum >= 0 &&
      JsonNumber(line, "token_checksum").value_or(-1) != static_cast<double>(checksum)) {
    r.note = "PyTorch: failed (its tokens differ from ours: token_checksum mismatch)";
    return r;
  }
  r.line = line;
  return r;
}

}  // namespace chunkflow::bench
