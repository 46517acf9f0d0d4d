// Helpers shared by the benchmark binaries (worker/engine:engine_bench, the
// CUDA benches): the token stream the PyTorch baselines mirror, flag lists,
// timing, aligned tables, child processes and their one-line JSON results.

#ifndef CHUNKFLOW_TOOLS_BENCH_BENCH_UTIL_H_
#define CHUNKFLOW_TOOLS_BENCH_BENCH_UTIL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace chunkflow::bench {

// splitmix64; tools/bench/torch_step.py mirrors it so both see the same tokens.
uint64_t NextSplitMix64(uint64_t& state);
// The benchmarks' token ids: one splitmix64 stream over every sequence in
// order, (z >> 32) % vocab per token; *checksum = the sum of the ids (what
// the PyTorch scripts report back).
std::vector<std::vector<int32_t>> SplitMix64Tokens(const std::vector<int64_t>& lengths,
                                                   int64_t vocab, uint64_t seed,
                                                   int64_t* checksum);

// A comma-separated list of positive integers. Errors: INVALID_ARGUMENT
// naming --flag and the bad part.
absl::StatusOr<std::vector<int64_t>> ParseInts(const std::string& flag, const std::string& text);

double Median(std::vector<double> v);
// Seconds on the steady clock.
double Now();

// The first `left` columns are left-aligned, the rest right-aligned; a row of
// one cell is a note printed as is. The first row is the header.
void PrintTable(const std::string& title, size_t left,
                const std::vector<std::vector<std::string>>& rows);

std::string ShellQuote(const std::string& s);
// Runs `command` with sh; returns its stdout (stderr passes through), or an
// error naming the command when it cannot start or exits non-zero.
absl::StatusOr<std::string> RunChild(const std::string& command);
// The last line of `out` that starts with '{': a child's JSON result.
std::string LastJsonLine(const std::string& out);
// A number or string value of a flat one-line JSON object we wrote ourselves
// (the children's results): enough for them, not a general JSON parser.
std::optional<double> JsonNumber(const std::string& line, const std::string& key);
std::string JsonStringValue(const std::string& line, const std::string& key);
std::string Quoted(const std::string& s);

// A PyTorch baseline script run as a child process (`python script args`):
// its JSON result line, or a note - printed in the table instead of numbers -
// saying why there is none: skipped (no python, no torch, no script) or
// failed (the child failed, no "step_seconds_median" in its result, or its
// "token_checksum" differs from `checksum` when that is >= 0). Progress goes
// to stderr prefixed with `tag`.
struct BaselineResult {
  std::string line;
  std::string note;
};
BaselineResult RunTorchBaseline(const std::string& python, const std::string& script,
                                const std::string& args, int64_t checksum,
                                const std::string& tag);
// %.6g
std::string Num(double v);

// The --json output of a benchmark: its rows (JSON objects) as an array.
// Nothing for an empty path. Errors: UNAVAILABLE naming the path.
absl::Status WriteJsonArray(const std::string& path, const std::vector<std::string>& rows);

}  // namespace chunkflow::bench

#endif  // CHUNKFLOW_TOOLS_BENCH_BENCH_UTIL_H_
