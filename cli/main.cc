// chunkflowctl: the ChunkFlow admin client.
//
//   chunkflowctl local [flags]     the main job: a whole cluster on this machine
//   chunkflowctl coordinator|worker [flags]   the daemons
//   chunkflowctl submit|get-job|list-jobs|cancel|list-workers|drain|update-schedule|checkpoint|watch
//   chunkflowctl plan [flags]      plan a dataset offline and compare strategies
//   chunkflowctl convert [flags]   JSONL with input_ids -> Megatron .bin/.idx
//
// Flags live here, and only here; the commands are libraries (cli/*_command.h).

#include <csignal>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/blas_core.h"
#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/cluster_command.h"
#include "cli/plan_command.h"
#include "cli/train_command.h"
#include "dataset/indexed_dataset.h"
#include "dataset/jsonl.h"

ABSL_FLAG(std::string, dataset, "",
          "plan/train/eval/submit/local: Megatron .bin/.idx prefix, a .jsonl file, or "
          "synthetic:<mix>:n=<count>,seed=<s>,max=<tokens> (mixes: paper-eval, lmsys, uniform); "
          "default: plan synthetic:paper-eval:n=20000,seed=1, the others "
          "synthetic:lmsys:n=2000,seed=1,max=2048");
ABSL_FLAG(int64_t, global_batch, -1,
          "plan/train/submit/local: sequences per step (default: plan 256, the others 16)");
ABSL_FLAG(int64_t, steps, -1,
          "plan/train/submit/local: steps, from the start of the seeded cursor (default: plan 4, "
          "train 10, submit 10, local 20)");
ABSL_FLAG(uint64_t, seed, 1,
          "plan/train/eval/submit/local: seed of the dataset cursor's shuffle and of random "
          "weights");
ABSL_FLAG(int64_t, chunk_size, -1,
          "plan/train/eval/submit/local: ChunkSize, tokens per chunk (default: plan and eval "
          "8192, train 1024, submit 4096, local 512; update-schedule: keep the job's)");
ABSL_FLAG(int32_t, k, -1,
          "plan/train/submit/local/update-schedule: K, chunks of one sequence that keep "
          "activations at once (default 1; update-schedule: keep the job's)");
ABSL_FLAG(int32_t, dp, -1, "plan/submit/local: data-parallel ranks (default: plan 2, submit 1, local 2)");
ABSL_FLAG(int32_t, pp, -1, "plan/submit/local: pipeline stages (default: plan 4, submit 1, local 2)");
ABSL_FLAG(std::string, model, "qwen2.5-7b",
          "plan: model preset (tiny, qwen2.5-0.5b, qwen2.5-7b, qwen2.5-14b, llama3-8b)");
ABSL_FLAG(std::string, model_config, "",
          "plan/train/eval/submit/local: Hugging Face config.json (or its folder); plan: "
          "overrides --model; the others: random weights of that shape");
ABSL_FLAG(double, device_tflops, 400, "plan: effective TFLOP/s per device for the cost model");
ABSL_FLAG(double, memory_budget_gib, -1,
          "plan/submit/local: device memory budget per stage, GiB (default: plan 80; submit and "
          "local 0 = none). Over it, the coordinator lowers K, then ChunkSize, for the next step");
ABSL_FLAG(int64_t, max_length, 0,
          "plan: packing length of the baselines; 0 = the dataset's longest document");
ABSL_FLAG(bool, sweep, false,
          "plan: search ChunkSize (1K..256K) x K (1,2,4,8) for the fastest pair that fits");
ABSL_FLAG(std::string, format, "table",
          "plan/eval and the admin commands: 'table' or 'json' (plan's json: ChunkFlow's whole "
          "plan)");
ABSL_FLAG(std::string, output, "", "plan: write the result here instead of stdout");
ABSL_FLAG(std::string, input, "", "convert: JSONL file with input_ids (and optional labels)");
ABSL_FLAG(std::string, output_prefix, "", "convert: output prefix for <prefix>.bin/.idx");
ABSL_FLAG(std::string, dtype, "auto", "convert: token dtype: auto, uint16 or int32");
ABSL_FLAG(std::string, model_dir, "",
          "train/eval/submit/local: Hugging Face model folder (config.json + *.safetensors; "
          "optimizer.safetensors resumes AdamW). With neither --model_dir nor --model_config, "
          "a tiny random Qwen2");
ABSL_FLAG(int32_t, stages, 1, "train/eval: pipeline stages run in this process");
ABSL_FLAG(std::string, optimizer, "adamw",
          "train/submit/local: 'adamw' or 'sgd' (plain, for debugging)");
ABSL_FLAG(double, lr, 1e-3, "train/submit/local: learning rate");
ABSL_FLAG(double, weight_decay, 0.0,
          "train/submit/local: AdamW decoupled weight decay of the matrices");
ABSL_FLAG(double, clip, 1.0, "train/submit/local: max global gradient norm; 0 turns clipping off");
ABSL_FLAG(double, beta2, -1,
          "train/submit/local: AdamW's beta2, in (0, 1) (default: train 0.999, torch's; "
          "submit/local 0.95, the LLM fine-tuning recipes')");
ABSL_FLAG(std::string, output_dir, "",
          "train: write the checkpoint here (config.json, model.safetensors, "
          "optimizer.safetensors)");
ABSL_FLAG(int64_t, max_documents, 0, "eval: documents to evaluate from the start; 0 = all");
ABSL_FLAG(std::string, coordinator, "127.0.0.1:50051",
          "worker and admin commands: host:port of the coordinator");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "coordinator: host:port to serve gRPC on");
ABSL_FLAG(std::string, db, "", "coordinator: RocksDB directory (jobs, step log, workers)");
ABSL_FLAG(std::string, port_file, "", "coordinator: write the bound port here once listening");
ABSL_FLAG(std::string, metrics_listen, "",
          "coordinator/worker: host:port for Prometheus /metrics (port 0: a free one); empty: none");
ABSL_FLAG(double, heartbeat_timeout_s, 10,
          "coordinator: a worker silent this long is lost (its job goes back to a checkpoint)");
ABSL_FLAG(double, comm_timeout_s, 600,
          "coordinator: bound on every worker communicator operation and rendezvous (a rank "
          "waiting for a slower one: long chains, dp skew, checkpoint loading). A lost or "
          "frozen worker ends the others' waits sooner: the coordinator aborts the job at "
          "heartbeat_timeout_s");
ABSL_FLAG(std::string, name, "", "worker: stable worker name (e.g. the pod name); submit: job name");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "worker: address or interface Gloo listens on for its peers");
ABSL_FLAG(double, give_up_after_s, 0,
          "worker: exit after this long without reaching the coordinator; 0 = retry forever");
ABSL_FLAG(std::string, job, "", "get-job/cancel/update-schedule/checkpoint/watch/steps: the job id");
ABSL_FLAG(bool, wait, true,
          "checkpoint: wait until the checkpoint is written and print where (false: only ask)");
ABSL_FLAG(std::string, worker, "", "drain: the worker id");
ABSL_FLAG(std::string, device, "cpu",
          "train, worker, local: cpu (the CPU engine) or cuda (the CUDA engine; train: on GPU "
          "0, worker: on --cuda_device, local: worker i on GPU i % GPUs)");
ABSL_FLAG(int32_t, cuda_device, 0, "worker --device=cuda: the CUDA device index");
ABSL_FLAG(std::string, precision, "bf16",
          "train, worker, local --device=cuda: bf16 (bf16 GEMMs, fp32 master weights) or fp32");
ABSL_FLAG(std::string, links, "gloo",
          "worker, local --device=cuda: gloo (through host memory; workers may share a GPU) or "
          "nccl (device memory, one GPU per worker; not yet run on GPUs, see docs/cuda.md)");
ABSL_FLAG(std::string, offload_state, "auto",
          "train, worker, local --device=cuda: where a sequence's K/V state lives: auto (on the "
          "device while it fits, else pinned host memory, one layer at a time on the device), "
          "never (on the device; a step whose state does not fit fails), always (pinned host)");
ABSL_FLAG(std::string, reason, "", "cancel: why (recorded in the job's events)");
ABSL_FLAG(bool, watch, false, "submit: watch the job's progress after submitting it");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "submit/local: where workers write checkpoints (local: <workdir>/<run>/checkpoints)");
ABSL_FLAG(int64_t, checkpoint_every, -1,
          "submit/local: checkpoint every N steps (and after the last); default: local 5, submit 0 "
          "= only after the last");
ABSL_FLAG(std::string, workdir, "/tmp/chunkflow-local",
          "local: each run gets a folder here with db/, checkpoints/ and logs/");
ABSL_FLAG(int32_t, port, 0, "local: coordinator port (0: a free one)");
ABSL_FLAG(int32_t, metrics_port, -1,
          "local: coordinator /metrics port, workers on the next dp x pp ports (0: a free port "
          "each, logged by each process; -1: none)");
ABSL_FLAG(bool, keep_running, false,
          "local: keep the cluster up after the job (Ctrl-C stops it), e.g. for a Prometheus scrape");

namespace {

constexpr char kUsage[] = R"(the ChunkFlow admin client.

Commands:
  local     The main job: start a coordinator and dp x pp workers as processes
            on this machine, submit a job (default: a 4.0 M-parameter Qwen2-style
            model, 20 steps of 16 documents from a synthetic long-tailed dataset,
            ChunkSize 512, dp 2 x pp 2), print one progress line per step, stop
            everything at the end or on Ctrl-C.
              chunkflowctl local
              chunkflowctl local --dp=1 --pp=4 --steps=50 --chunk_size=256 --k=2
  coordinator  Run the coordinator daemon (gRPC, RocksDB, /metrics).
              chunkflowctl coordinator --listen=0.0.0.0:50051 --db=/var/lib/chunkflow \
                  --metrics_listen=0.0.0.0:9090
  worker    Run a worker daemon for one device.
              chunkflowctl worker --coordinator=coord:50051 --name=$POD_NAME --host=eth0
              On a GPU: --device=cuda [--cuda_device=N] [--precision=bf16|fp32]
              [--links=nccl|gloo] [--offload_state=auto|never|always]
  submit | get-job | list-jobs | cancel | list-workers | drain | update-schedule | checkpoint | watch | steps
            The AdminService calls (--format=json for machine output); steps
            lists a job's step log (documents, loss, tokens per step);
            checkpoint has the job save one after its next step and waits for it
            (before updating workers, say).
              chunkflowctl submit --coordinator=coord:50051 --dataset=/data/corpus \
                  --model_dir=/models/Qwen2.5-0.5B --dp=4 --pp=2 --steps=1000 \
                  --global_batch=64 --chunk_size=8192 --k=2 --checkpoint_dir=/ckpt --watch
              chunkflowctl watch --job=job-000001
              chunkflowctl update-schedule --job=job-000001 --chunk_size=4096
              chunkflowctl checkpoint --job=job-000001
  plan      Plan a dataset's global batches with ChunkFlow and the baselines
            (plain packing; Megatron-style padding and packing, with and without
            full recompute), simulate them, and print a side-by-side table:
            chunks per step, dp imbalance, bubble, step time, tokens/s, peak
            memory per stage, whether it fits the budget, speedup. No cluster
            needed.
              chunkflowctl plan --dataset=synthetic:lmsys:n=50000 --dp=4 --pp=4 \
                  --chunk_size=16384 --k=2
              chunkflowctl plan --dataset=/data/corpus_text_document --sweep
              chunkflowctl plan --format=json --output=plan.json
  train     Train a model in this process with ChunkFlow: global batches from
            the seeded cursor, chunks of --chunk_size, K, --stages pipeline
            stages; one progress line per step (loss, tokens/s, peak memory);
            a Hugging Face checkpoint in --output_dir.
              chunkflowctl train --dataset=synthetic:lmsys:n=2000,max=4096 \
                  --steps=20 --global_batch=16 --chunk_size=1024 --k=2 \
                  --output_dir=/tmp/ckpt
              chunkflowctl train --model_dir=/models/Qwen2.5-0.5B --dataset=data.jsonl
            On a GPU: --device=cuda [--precision=bf16|fp32]
            [--offload_state=auto|never|always] (the same checkpoints).
  eval      Mean loss of each document (forward only, chunk by chunk).
              chunkflowctl eval --model_dir=/tmp/ckpt --dataset=data.jsonl --format=json
  convert   Convert JSONL (one {"input_ids": [...], "labels": [...]} per line)
            to a Megatron-LM indexed dataset <prefix>.bin/.idx.
              chunkflowctl convert --input=data.jsonl --output_prefix=/data/corpus

Flags are listed below (prefix says which command uses them).)";

int Fail(const absl::Status& s) {
  std::cerr << "chunkflowctl: error: " << s.ToString() << "\n";
  return 1;
}

// A flag left at its "command default" value (-1, or empty) takes `fallback`.
int64_t Or(int64_t value, int64_t fallback) { return value == -1 ? fallback : value; }
std::string Or(const std::string& value, const std::string& fallback) {
  return value.empty() ? fallback : value;
}

chunkflow::cli::ModelSource ModelFlags() {
  chunkflow::cli::ModelSource m;
  m.model_dir = absl::GetFlag(FLAGS_model_dir);
  m.model_config = absl::GetFlag(FLAGS_model_config);
  m.seed = absl::GetFlag(FLAGS_seed);
  m.stages = absl::GetFlag(FLAGS_stages);
  return m;
}

// --beta2 when given (in (0, 1), checked); -1 when not.
absl::StatusOr<double> Beta2Flag() {
  const double b = absl::GetFlag(FLAGS_beta2);
  if (b == -1) return -1.0;
  if (!(b > 0 && b < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--beta2 must be in (0, 1), got ", b));
  }
  return b;
}

int RunTrain() {
  chunkflow::cli::TrainCommandOptions o;
  o.model = ModelFlags();
  o.dataset = Or(absl::GetFlag(FLAGS_dataset), o.dataset);
  o.steps = Or(absl::GetFlag(FLAGS_steps), o.steps);
  o.global_batch = Or(absl::GetFlag(FLAGS_global_batch), o.global_batch);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.train.chunk_size = Or(absl::GetFlag(FLAGS_chunk_size), int64_t{1024});
  o.train.k = static_cast<int32_t>(Or(absl::GetFlag(FLAGS_k), 1));
  const std::string opt = absl::GetFlag(FLAGS_optimizer);
  if (opt == "adamw") {
    o.train.optimizer = chunkflow::engine::OptimizerKind::kAdamW;
  } else if (opt == "sgd") {
    o.train.optimizer = chunkflow::engine::OptimizerKind::kSgd;
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--optimizer must be 'adamw' or 'sgd', got '", opt, "'")));
  }
  o.train.lr = static_cast<float>(absl::GetFlag(FLAGS_lr));
  o.train.weight_decay = static_cast<float>(absl::GetFlag(FLAGS_weight_decay));
  o.train.clip = static_cast<float>(absl::GetFlag(FLAGS_clip));
  absl::StatusOr<double> beta2 = Beta2Flag();
  if (!beta2.ok()) return Fail(beta2.status());
  if (*beta2 >= 0) o.train.beta2 = static_cast<float>(*beta2);
  o.output_dir = absl::GetFlag(FLAGS_output_dir);
  o.device = absl::GetFlag(FLAGS_device);
  o.precision = absl::GetFlag(FLAGS_precision);
  o.offload_state = absl::GetFlag(FLAGS_offload_state);
  absl::Status s = chunkflow::cli::RunTrainCommand(o, std::cout, std::cerr);
  return s.ok() ? 0 : Fail(s);
}

int RunEval() {
  chunkflow::cli::EvalCommandOptions o;
  o.model = ModelFlags();
  o.dataset = Or(absl::GetFlag(FLAGS_dataset), std::string("synthetic:lmsys:n=2000,seed=1,max=2048"));
  o.chunk_size = Or(absl::GetFlag(FLAGS_chunk_size), int64_t{8192});
  o.max_documents = absl::GetFlag(FLAGS_max_documents);
  o.format = absl::GetFlag(FLAGS_format);
  absl::Status s = chunkflow::cli::RunEvalCommand(o, std::cout, std::cerr);
  return s.ok() ? 0 : Fail(s);
}

// The job spec of submit and local from the flags.
absl::StatusOr<chunkflow::v1::JobSpec> SpecFromFlags(bool local) {
  chunkflow::v1::JobSpec spec;
  spec.set_name(absl::GetFlag(FLAGS_name));
  spec.set_dp(static_cast<int32_t>(Or(absl::GetFlag(FLAGS_dp), local ? 2 : 1)));
  spec.set_pp(static_cast<int32_t>(Or(absl::GetFlag(FLAGS_pp), local ? 2 : 1)));
  spec.set_steps(Or(absl::GetFlag(FLAGS_steps), local ? 20 : 10));
  spec.set_global_batch(Or(absl::GetFlag(FLAGS_global_batch), 16));
  spec.set_seed(static_cast<int64_t>(absl::GetFlag(FLAGS_seed)));
  spec.mutable_dataset()->set_path(
      Or(absl::GetFlag(FLAGS_dataset), std::string("synthetic:lmsys:n=2000,seed=1,max=2048")));
  spec.mutable_schedule()->set_chunk_size(Or(absl::GetFlag(FLAGS_chunk_size), local ? 512 : 4096));
  spec.mutable_schedule()->set_k(static_cast<int32_t>(Or(absl::GetFlag(FLAGS_k), 1)));
  chunkflow::v1::OptimizerConfig* opt = spec.mutable_optimizer();
  opt->set_name(absl::GetFlag(FLAGS_optimizer));
  opt->set_lr(absl::GetFlag(FLAGS_lr));
  opt->set_weight_decay(absl::GetFlag(FLAGS_weight_decay));
  opt->set_clip_norm(absl::GetFlag(FLAGS_clip));
  absl::StatusOr<double> beta2 = Beta2Flag();
  if (!beta2.ok()) return beta2.status();
  // 0.95 spelled out: the spec's own default (job_spec.cc) would read 0 as unset.
  opt->set_beta2(*beta2 >= 0 ? *beta2 : 0.95);
  const double budget = absl::GetFlag(FLAGS_memory_budget_gib);
  if (budget > 0) spec.set_memory_budget_bytes(static_cast<int64_t>(budget * (1LL << 30)));
  spec.set_checkpoint_dir(absl::GetFlag(FLAGS_checkpoint_dir));
  spec.set_checkpoint_every(Or(absl::GetFlag(FLAGS_checkpoint_every), local ? 5 : 0));
  const std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  const std::string model_config = absl::GetFlag(FLAGS_model_config);
  if (!model_dir.empty() && !model_config.empty()) {
    return absl::InvalidArgumentError("pass --model_dir or --model_config, not both");
  }
  if (!model_dir.empty()) {
    spec.mutable_model()->set_path(model_dir);
  } else if (!model_config.empty()) {
    std::ifstream in(model_config);
    std::stringstream text;
    if (!(text << in.rdbuf())) {
      return absl::NotFoundError(absl::StrCat("--model_config: cannot read ", model_config));
    }
    spec.mutable_model()->set_config_json(text.str());
  } else if (local) {
    spec.mutable_model()->set_config_json(chunkflow::cli::SmallModelConfigJson());
  }
  return spec;
}

int RunCluster(const std::string& command) {
  if (command == "coordinator") {
    chunkflow::cli::CoordinatorCommandOptions o;
    o.listen = absl::GetFlag(FLAGS_listen);
    o.db_dir = absl::GetFlag(FLAGS_db);
    o.port_file = absl::GetFlag(FLAGS_port_file);
    o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
    o.heartbeat_timeout = absl::Seconds(absl::GetFlag(FLAGS_heartbeat_timeout_s));
    o.comm_timeout = absl::Seconds(absl::GetFlag(FLAGS_comm_timeout_s));
    absl::Status s = chunkflow::cli::RunCoordinatorCommand(o, std::cerr);
    return s.ok() ? 0 : Fail(s);
  }
  if (command == "worker") {
    chunkflow::cli::WorkerCommandOptions o;
    o.coordinator = absl::GetFlag(FLAGS_coordinator);
    o.name = absl::GetFlag(FLAGS_name);
    o.host = absl::GetFlag(FLAGS_host);
    o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
    o.give_up_after = absl::Seconds(absl::GetFlag(FLAGS_give_up_after_s));
    o.device = absl::GetFlag(FLAGS_device);
    o.cuda_device = absl::GetFlag(FLAGS_cuda_device);
    o.precision = absl::GetFlag(FLAGS_precision);
    o.links = absl::GetFlag(FLAGS_links);
    o.offload_state = absl::GetFlag(FLAGS_offload_state);
    absl::Status s = chunkflow::cli::RunWorkerCommand(o, std::cerr);
    return s.ok() ? 0 : Fail(s);
  }
  if (command == "local") {
    absl::StatusOr<chunkflow::v1::JobSpec> spec = SpecFromFlags(true);
    if (!spec.ok()) return Fail(spec.status());
    chunkflow::cli::LocalCommandOptions o;
    o.spec = *spec;
    o.workdir = absl::GetFlag(FLAGS_workdir);
    o.port = absl::GetFlag(FLAGS_port);
    o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
    o.keep_running = absl::GetFlag(FLAGS_keep_running);
    o.device = absl::GetFlag(FLAGS_device);
    o.precision = absl::GetFlag(FLAGS_precision);
    o.links = absl::GetFlag(FLAGS_links);
    o.offload_state = absl::GetFlag(FLAGS_offload_state);
    absl::Status s = chunkflow::cli::RunLocalCommand(o, std::cout, std::cerr);
    return s.ok() ? 0 : Fail(s);
  }
  chunkflow::cli::AdminCommandOptions o;
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.command = command;
  o.format = absl::GetFlag(FLAGS_format);
  o.job_id = absl::GetFlag(FLAGS_job);
  o.worker_id = absl::GetFlag(FLAGS_worker);
  o.reason = absl::GetFlag(FLAGS_reason);
  o.watch_after_submit = absl::GetFlag(FLAGS_watch);
  o.wait = absl::GetFlag(FLAGS_wait);
  if (command == "submit") {
    absl::StatusOr<chunkflow::v1::JobSpec> spec = SpecFromFlags(false);
    if (!spec.ok()) return Fail(spec.status());
    o.spec = *spec;
  }
  if (command == "update-schedule") {
    // Flags left at their defaults keep the job's value (0 = keep).
    o.schedule.set_chunk_size(Or(absl::GetFlag(FLAGS_chunk_size), 0));
    o.schedule.set_k(static_cast<int32_t>(Or(absl::GetFlag(FLAGS_k), 0)));
  }
  absl::Status s = chunkflow::cli::RunAdminCommand(o, std::cout, std::cerr);
  return s.ok() ? 0 : Fail(s);
}

int RunPlan() {
  chunkflow::cli::PlanOptions o;
  o.dataset = Or(absl::GetFlag(FLAGS_dataset), std::string("synthetic:paper-eval:n=20000,seed=1"));
  o.global_batch = Or(absl::GetFlag(FLAGS_global_batch), int64_t{256});
  o.steps = Or(absl::GetFlag(FLAGS_steps), int64_t{4});
  o.seed = absl::GetFlag(FLAGS_seed);
  o.chunk_size = Or(absl::GetFlag(FLAGS_chunk_size), int64_t{8192});
  o.k = static_cast<int32_t>(Or(absl::GetFlag(FLAGS_k), 1));
  o.dp = static_cast<int32_t>(Or(absl::GetFlag(FLAGS_dp), 2));
  o.pp = static_cast<int32_t>(Or(absl::GetFlag(FLAGS_pp), 4));
  o.model = absl::GetFlag(FLAGS_model);
  o.model_config = absl::GetFlag(FLAGS_model_config);
  o.device_tflops = absl::GetFlag(FLAGS_device_tflops);
  o.memory_budget_gib = absl::GetFlag(FLAGS_memory_budget_gib) < 0
                            ? 80.0
                            : absl::GetFlag(FLAGS_memory_budget_gib);
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
  chunkflow::kernels::cpu::SelectBlasCore(argv);  // before anything else: may re-exec
  absl::SetProgramUsageMessage(kUsage);
  // --help lists this file's flags (Abseil's default matches <program>.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "cli/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  // A crash (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE) prints its signal and
  // a stack trace to stderr - a daemon's log - before the process dies as it
  // would have. SIGTERM is an ordinary stop (the daemons wait for it): back
  // to its default action.
  absl::InitializeSymbolizer(argv[0]);
  absl::InstallFailureSignalHandler(absl::FailureSignalHandlerOptions());
  std::signal(SIGTERM, SIG_DFL);
  if (args.size() != 2) {
    std::cerr << "chunkflowctl: " << kUsage << "\n\nrun 'chunkflowctl --help' for the flags\n";
    return 2;
  }
  const std::string command = args[1];
  if (command == "plan") return RunPlan();
  if (command == "convert") return RunConvert();
  if (command == "train") return RunTrain();
  if (command == "eval") return RunEval();
  for (const char* c : {"coordinator", "worker", "local", "submit", "get-job", "list-jobs", "cancel",
                        "list-workers", "drain", "update-schedule", "checkpoint", "watch",
                        "steps"}) {
    if (command == c) return RunCluster(command);
  }
  std::cerr << "chunkflowctl: unknown command '" << command
            << "'; commands: local, coordinator, worker, submit, get-job, list-jobs, cancel, "
               "list-workers, drain, update-schedule, checkpoint, watch, steps, plan, train, eval, "
               "convert\n";
  return 2;
}
