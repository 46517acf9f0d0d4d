// chunkflowctl's cluster commands: the two daemons (coordinator, worker),
// every AdminService call, `watch`, and `local` (a whole cluster of processes
// on this machine: the README's main job).

#ifndef CHUNKFLOW_CLI_CLUSTER_COMMAND_H_
#define CHUNKFLOW_CLI_CLUSTER_COMMAND_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/chunkflow.pb.h"

namespace chunkflow::cli {

struct CoordinatorCommandOptions {
  std::string listen = "127.0.0.1:50051";
  std::string db_dir;
  std::string metrics_listen;
  std::string port_file;  // written with the bound port once listening
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration comm_timeout = absl::Seconds(600);  // CoordinatorOptions says why
};
// Serves until SIGINT/SIGTERM. Prints "coordinator listening on <port>".
absl::Status RunCoordinatorCommand(const CoordinatorCommandOptions& o, std::ostream& out);

struct WorkerCommandOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::string name;
  std::string host = "127.0.0.1";
  std::string metrics_listen;
  absl::Duration give_up_after = absl::ZeroDuration();
  std::string device = "cpu";  // cpu or cuda
  int cuda_device = 0;
  std::string precision = "bf16";
  std::string links = "gloo";
  std::string offload_state = "auto";  // cuda: auto, never or always
};
// Serves until SIGINT/SIGTERM, a SHUTDOWN control, or give_up_after without
// the coordinator.
absl::Status RunWorkerCommand(const WorkerCommandOptions& o, std::ostream& out);

// One AdminService call. `command`: submit, get-job, list-jobs, cancel,
// list-workers, drain, update-schedule, watch, steps. `format`: table or json.
struct AdminCommandOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::string command;
  std::string format = "table";
  std::string job_id;
  std::string worker_id;
  std::string reason;
  chunkflow::v1::JobSpec spec;          // submit
  chunkflow::v1::ScheduleParams schedule;  // update-schedule
  bool watch_after_submit = false;
  bool wait = true;  // checkpoint: wait for it to be written
  absl::Duration timeout = absl::Seconds(10);
};
// Errors: the coordinator's status (INVALID_ARGUMENT, NOT_FOUND, ...) with
// its message; UNAVAILABLE naming the address when it cannot be reached;
// for watch, FAILED_PRECONDITION when the job ended FAILED or CANCELLED; for
// checkpoint, FAILED_PRECONDITION when the job ended before it was written.
absl::Status RunAdminCommand(const AdminCommandOptions& o, std::ostream& out,
                             std::ostream& progress);

struct LocalCommandOptions {
  chunkflow::v1::JobSpec spec;  // dataset, model, dp, pp, steps, ...
  std::string workdir = "/tmp/chunkflow-local";  // db/, checkpoints/, logs/
  int port = 0;           // coordinator port; 0: a free one
  int metrics_port = -1;  // coordinator /metrics; -1: none, 0: a free one
  std::string self;       // this binary (to start the daemons); empty: /proc/self/exe
  bool keep_running = false;  // serve until Ctrl-C after the job (for scraping)
  // Workers' engine: "cpu", or "cuda" (worker i on GPU i % GPUs, with
  // `precision`, `links` and `offload_state` as the worker command's).
  std::string device = "cpu";
  std::string precision = "bf16";
  std::string links = "gloo";
  std::string offload_state = "auto";
};
// Starts the coordinator and dp x pp workers as child processes on loopback,
// submits the job, prints progress, and stops everything when the job ends or
// on Ctrl-C. Errors: the job's, or a daemon that exited early (naming its log);
// INVALID_ARGUMENT for --device=cuda --links=nccl with more workers than GPUs.
absl::Status RunLocalCommand(const LocalCommandOptions& o, std::ostream& out,
                             std::ostream& progress);

// The model `local` trains when no model is given: Qwen2-style, hidden 256,
// 4 layers, vocab 4096 (about 4.0 M parameters).
std::string SmallModelConfigJson();

}  // namespace chunkflow::cli

#endif  // CHUNKFLOW_CLI_CLUSTER_COMMAND_H_
