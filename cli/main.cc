// chunkflowctl: the ChunkFlow admin client.
//
//   chunkflowctl plan [flags]      plan a dataset offline and compare strategies
//   chunkflowctl convert [flags]   JSONL with input_ids -> Megatron .bin/.idx
//
// Flags live here, and only here; the commands are libraries (cli/*_command.h).

#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/plan_command.h"
#include "dataset/indexed_dataset.h"
#include "dataset/jsonl.h"

ABSL_FLAG(std::string, dataset, "synthetic:paper-eval:n=20000,seed=1",
          "plan: Megatron .bin/.idx prefix, a .jsonl file, or "
          "synthetic:<mix>:n=<count>,seed=<s>,max=<tokens> (mixes: paper-eval, lmsys, uniform)");
ABSL_FLAG(int64_t, global_batch, 256, "plan: sequences per step");
ABSL_FLAG(int64_t, steps, 4, "plan: steps to plan, from the start of the seeded cursor");
ABSL_FLAG(uint64_t, seed, 1, "plan: seed of the dataset cursor's shuffle");
ABSL_FLAG(int64_t, chunk_size, 8192, "plan: ChunkSize, tokens per chunk");
ABSL_FLAG(int32_t, k, 1, "plan: chunks of one sequence that keep activations at once");
ABSL_FLAG(int32_t, dp, 2, "plan: data-parallel ranks");
ABSL_FLAG(int32_t, pp, 4, "plan: pipeline stages");
ABSL_FLAG(std::string, model, "qwen2.5-7b",
          "plan: model preset (tiny, qwen2.5-0.5b, qwen2.5-7b, qwen2.5-14b, llama3-8b)");
ABSL_FLAG(std::string, model_config, "",
          "plan: Hugging Face config.json (or its folder); overrides --model");
ABSL_FLAG(double, device_tflops, 400, "plan: effective TFLOP/s per device for the cost model");
ABSL_FLAG(double, memory_budget_gib, 80, "plan: device memory budget per stage, GiB");
ABSL_FLAG(int64_t, max_length, 0,
          "plan: packing length of the baselines; 0 = the dataset's longest document");
ABSL_FLAG(bool, sweep, false,
          "plan: search ChunkSize (1K..256K) x K (1,2,4,8) for the fastest pair that fits");
ABSL_FLAG(std::string, format, "table", "plan: 'table' or 'json' (json: ChunkFlow's whole plan)");
ABSL_FLAG(std::string, output, "", "plan: write the result here instead of stdout");
ABSL_FLAG(std::string, input, "", "convert: JSONL file with input_ids (and optional labels)");
ABSL_FLAG(std::string, output_prefix, "", "convert: output prefix for <prefix>.bin/.idx");
ABSL_FLAG(std::string, dtype, "auto", "convert: token dtype: auto, uint16 or int32");

namespace {

constexpr char kUsage[] = R"(the ChunkFlow admin client.

Commands:
  plan      Plan a dataset's global batches with ChunkFlow and the baselines
            (plain packing; Megatron-style padding and packing, with and without
            full recompute), simulate them, and print a side-by-side table:
            chunks per step, dp imbalance, bubble, step time, peak memory per
            stage, speedup. No cluster needed.
              chunkflowctl plan --dataset=synthetic:lmsys:n=50000 --dp=4 --pp=4 \
                  --chunk_size=16384 --k=2
              chunkflowctl plan --dataset=/data/corpus_text_document --sweep
              chunkflowctl plan --format=json --output=plan.json
  convert   Convert JSONL (one {"input_ids": [...], "labels": [...]} per line)
            to a Megatron-LM indexed dataset <prefix>.bin/.idx.
              chunkflowctl convert --input=data.jsonl --output_prefix=/data/corpus

Flags are listed below (prefix says which command uses them).)";

int Fail(const absl::Status& s) {
  std::cerr << "chunkflowctl: error: " << s.ToString() << "\n";
  return 1;
}

int RunPlan() {
  chunkflow::cli::PlanOptions o;
  o.dataset = absl::GetFlag(FLAGS_dataset);
  o.global_batch = absl::GetFlag(FLAGS_global_batch);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.chunk_size = absl::GetFlag(FLAGS_chunk_size);
  o.k = absl::GetFlag(FLAGS_k);
  o.dp = absl::GetFlag(FLAGS_dp);
  o.pp = absl::GetFlag(FLAGS_pp);
  o.model = absl::GetFlag(FLAGS_model);
  o.model_config = absl::GetFlag(FLAGS_model_config);
  o.device_tflops = absl::GetFlag(FLAGS_device_tflops);
  o.memory_budget_gib = absl::GetFlag(FLAGS_memory_budget_gib);
  o.max_length = absl::GetFlag(FLAGS_max_length);
  o.sweep = absl::GetFlag(FLAGS_sweep);
  o.format = absl::GetFlag(FLAGS_format);
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) {
    absl::Status s = chunkflow::cli::RunPlanCommand(o, std::cout, std::cerr);
    return s.ok() ? 0 : Fail(s);
  }
  // Plan first, write after: a failed run leaves an existing file untouched.
  std::ostringstream text;
  absl::Status s = chunkflow::cli::RunPlanCommand(o, text, std::cerr);
  if (!s.ok()) return Fail(s);
  std::ofstream file(output, std::ios::trunc);
  if (!(file << text.str()) || !file.flush()) {
    return Fail(absl::PermissionDeniedError(absl::StrCat("--output: cannot write ", output)));
  }
  std::cerr << "wrote " << output << "\n";
  return 0;
}

int RunConvert() {
  const std::string input = absl::GetFlag(FLAGS_input);
  const std::string prefix = absl::GetFlag(FLAGS_output_prefix);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  if (input.empty() || prefix.empty()) {
    return Fail(absl::InvalidArgumentError("convert needs --input and --output_prefix"));
  }
  std::optional<chunkflow::dataset::DType> dtype;
  if (dtype_name == "uint16") {
    dtype = chunkflow::dataset::DType::kUInt16;
  } else if (dtype_name == "int32") {
    dtype = chunkflow::dataset::DType::kInt32;
  } else if (dtype_name != "auto") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--dtype must be auto, uint16 or int32, got '", dtype_name, "'")));
  }
  absl::Status s = chunkflow::dataset::ConvertJsonlToIndexed(input, prefix, dtype);
  if (!s.ok()) return Fail(s);
  std::cerr << "wrote " << prefix << ".bin and " << prefix << ".idx\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // --help lists this file's flags (Abseil's default matches <program>.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "cli/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::cerr << "chunkflowctl: " << kUsage << "\n\nrun 'chunkflowctl --help' for the flags\n";
    return 2;
  }
  const std::string command = args[1];
  if (command == "plan") return RunPlan();
  if (command == "convert") return RunConvert();
  std::cerr << "chunkflowctl: unknown command '" << command << "'; commands: plan, convert\n";
  return 2;
}
