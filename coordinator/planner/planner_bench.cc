// Planner speed: sequences planned per second over one million sequences, and
// the latency of planning one global batch of 1,024 sequences. Targets: over
// 1M sequences/s on one core, under 1 ms per global batch.
//
// Google Benchmark prints the table; --benchmark_format=json (or
// --benchmark_out=FILE --benchmark_out_format=json) writes JSON. The Megatron
// baseline and chunk construction alone run in the same binary as references.
//
//   bazel run -c opt //coordinator/planner:planner_bench -- --benchmark_min_time=1

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "coordinator/planner/chunking.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/planner.h"
#include "coordinator/planner/simulator.h"
#include "dataset/synthetic.h"

namespace chunkflow::planner {
namespace {

constexpr int64_t kMillion = 1000000;
constexpr int64_t kBatch = 1024;

// One million sequence lengths from the named synthetic mix.
const std::vector<Sequence>& Sequences(const char* mix) {
  static std::vector<Sequence>* cache[2] = {nullptr, nullptr};
  const int slot = mix[0] == 'l' ? 1 : 0;
  if (cache[slot] == nullptr) {
    dataset::SyntheticSpec spec =
        *dataset::ParseSyntheticSpec(std::string("synthetic:") + mix + ":n=1000000,seed=1");
    std::vector<int64_t> lengths = dataset::GenerateLengths(spec);
    cache[slot] = new std::vector<Sequence>();
    for (int64_t i = 0; i < static_cast<int64_t>(lengths.size()); ++i) {
      cache[slot]->push_back({i, lengths[i]});
    }
  }
  return *cache[slot];
}

PlanRequest Request(Strategy strategy) {
  PlanRequest req;
  req.strategy = strategy;
  req.chunk_size = 8192;
  req.k = 2;
  req.dp = 8;
  req.pp = 4;
  req.max_length = 131072;
  req.cost = CostModelFromShape(*ModelPreset("qwen2.5-7b"), req.pp, DeviceModel{});
  return req;
}

// Plans all one million sequences, batch after batch.
void PlanMillion(benchmark::State& state, Strategy strategy, const char* mix, bool simulate) {
  const std::vector<Sequence>& all = Sequences(mix);
  PlanRequest req = Request(strategy);
  const MemoryModel mem = MemoryModelFromShape(*ModelPreset("qwen2.5-7b"), req.pp);
  int64_t chunks = 0;
  for (auto _ : state) {
    for (int64_t begin = 0; begin < kMillion; begin += kBatch) {
      const int64_t end = std::min(kMillion, begin + kBatch);
      req.sequences.assign(all.begin() + begin, all.begin() + end);
      absl::StatusOr<Plan> plan = BuildPlan(req);
      if (!plan.ok()) state.SkipWithError(plan.status().ToString().c_str());
      chunks += static_cast<int64_t>(plan->chunks.size());
      if (simulate) benchmark::DoNotOptimize(Simulate(*plan, req.cost, mem));
      benchmark::DoNotOptimize(plan);
    }
  }
  state.SetItemsProcessed(state.iterations() * kMillion);
  state.counters["chunks_per_batch"] =
      static_cast<double>(chunks) / state.iterations() / ((kMillion + kBatch - 1) / kBatch);
}

void BM_PlanMillion_ChunkFlow(benchmark::State& s) {
  PlanMillion(s, Strategy::kChunkFlow, "paper-eval", false);
}
void BM_PlanMillion_ChunkFlow_LMSys(benchmark::State& s) {
  PlanMillion(s, Strategy::kChunkFlow, "lmsys", false);
}
void BM_PlanMillion_ChunkFlowAndSimulate(benchmark::State& s) {
  PlanMillion(s, Strategy::kChunkFlow, "paper-eval", true);
}
void BM_PlanMillion_MegatronPack(benchmark::State& s) {
  PlanMillion(s, Strategy::kMegatronPack, "paper-eval", false);
}

// Latency of one global batch of 1,024 sequences.
void BM_PlanGlobalBatch1024(benchmark::State& state) {
  PlanRequest req = Request(Strategy::kChunkFlow);
  const std::vector<Sequence>& all = Sequences("paper-eval");
  req.sequences.assign(all.begin(), all.begin() + kBatch);
  for (auto _ : state) benchmark::DoNotOptimize(BuildPlan(req));
  state.SetItemsProcessed(state.iterations() * kBatch);
}

// Reference: chunk construction alone on the same batch.
void BM_BuildChunks1024(benchmark::State& state) {
  const std::vector<Sequence>& all = Sequences("paper-eval");
  std::vector<Sequence> batch(all.begin(), all.begin() + kBatch);
  for (auto _ : state) benchmark::DoNotOptimize(BuildChunks(batch, 8192));
  state.SetItemsProcessed(state.iterations() * kBatch);
}

// Packing quality: chunks BFD builds per global batch of 1,024 against the
// lower bound MinChunks, over the first 1/4 of the million sequences.
void ChunkingQuality(benchmark::State& state, const char* mix) {
  const std::vector<Sequence>& all = Sequences(mix);
  const int64_t chunk_size = state.range(0);
  int64_t chunks = 0, bound = 0, batches = 0;
  for (auto _ : state) {
    chunks = bound = batches = 0;
    for (int64_t begin = 0; begin < kMillion / 4; begin += kBatch) {
      std::vector<Sequence> batch(all.begin() + begin, all.begin() + begin + kBatch);
      chunks += static_cast<int64_t>(BuildChunks(batch, chunk_size)->size());
      bound += MinChunks(batch, chunk_size);
      ++batches;
    }
  }
  state.counters["chunks"] = static_cast<double>(chunks) / batches;
  state.counters["lower_bound"] = static_cast<double>(bound) / batches;
  state.counters["excess_pct"] = 100.0 * (chunks - bound) / bound;
}
void BM_ChunkingQuality_PaperEval(benchmark::State& s) { ChunkingQuality(s, "paper-eval"); }
void BM_ChunkingQuality_LMSys(benchmark::State& s) { ChunkingQuality(s, "lmsys"); }

BENCHMARK(BM_PlanMillion_ChunkFlow)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanMillion_ChunkFlow_LMSys)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanMillion_ChunkFlowAndSimulate)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanMillion_MegatronPack)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PlanGlobalBatch1024)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BuildChunks1024)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ChunkingQuality_PaperEval)
    ->Arg(1024)->Arg(2048)->Arg(8192)->Arg(32768)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ChunkingQuality_LMSys)
    ->Arg(1024)->Arg(2048)->Arg(8192)->Arg(32768)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace chunkflow::planner

BENCHMARK_MAIN();
