#include "cli/cluster_command.h"

#include <cuda_runtime_api.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "coordinator/service/service.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "proto/chunkflow.grpc.pb.h"
#include "worker/agent/worker_daemon.h"
#include "worker/engine/model_config.h"

namespace chunkflow::cli {
namespace v1 = ::chunkflow::v1;
namespace {

// Blocks SIGINT and SIGTERM in the calling thread (and every thread it starts
// later) and calls `on_signal` from a watcher thread when one arrives, so
// shutdown runs as ordinary code instead of inside a signal handler.
class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this, on_signal] {
      while (!stop_) {
        timespec ts{0, 200'000'000};
        const int sig = sigtimedwait(&set_, nullptr, &ts);
        if (sig > 0) on_signal(sig);
      }
    });
  }
  ~SignalWatcher() {
    stop_ = true;
    thread_.join();
  }

 private:
  sigset_t set_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;  // step 0, loss 0, ... are printed too
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string StateName(v1::JobState s) {
  std::string n = v1::JobState_Name(s);
  return absl::AsciiStrToLower(n.substr(std::string("JOB_STATE_").size()));
}

std::string WorkerStateName(v1::WorkerState s) {
  std::string n = v1::WorkerState_Name(s);
  return absl::AsciiStrToLower(n.substr(std::string("WORKER_STATE_").size()));
}

std::string Duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "-";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  return ctx;
}

absl::Status Rpc(const grpc::Status& s, const std::string& coordinator) {
  if (s.ok()) return absl::OkStatus();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
      s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", coordinator,
                                               " (--coordinator): ", s.error_message()));
  }
  return coordinator::FromGrpc(s);
}

void PrintJob(const v1::Job& j, std::ostream& out) {
  const v1::JobSpec& s = j.spec();
  out << absl::StrFormat("job        %s%s\n", j.id(), s.name().empty() ? "" : " (" + s.name() + ")");
  out << absl::StrFormat("state      %s\n", StateName(j.state()));
  out << absl::StrFormat("steps      %d / %d committed, %d tokens trained, last loss %.4f\n",
                         j.steps_committed(), s.steps(), j.tokens_trained(), j.last_loss());
  out << absl::StrFormat("shape      dp %d x pp %d, global batch %d, dataset %s\n", s.dp(), s.pp(),
                         s.global_batch(), s.dataset().path());
  out << absl::StrFormat("schedule   ChunkSize %d, K %d, %s (submitted with ChunkSize %d, K %d)\n",
                         j.current_schedule().chunk_size(), j.current_schedule().k(),
                         v1::BalancePolicy_Name(j.current_schedule().balance()),
                         s.schedule().chunk_size(), s.schedule().k());
  if (j.fitted_cost_model().stages_size() > 0) {
    out << "cost model (fitted from reported op times; backward "
        << absl::StrFormat("%.2f", j.fitted_cost_model().backward_ratio()) << "x forward)\n";
    for (int i = 0; i < j.fitted_cost_model().stages_size(); ++i) {
      const v1::StageCost& c = j.fitted_cost_model().stages(i);
      out << absl::StrFormat("  stage %d  %.3g s/token + %.3g s/attention pair + %.3g s\n", i,
                             c.linear_s_per_token(), c.quadratic_s_per_pair(), c.fixed_s());
    }
  } else {
    out << "cost model (prior from the model shape; refitted after the first steps)\n";
  }
  if (j.checkpoint_requested()) {
    out << "checkpoint requested (chunkflowctl checkpoint): after the next planned step\n";
  }
  if (!j.error().empty()) out << "error      " << j.error() << "\n";
  out << "events\n";
  const int first = std::max(0, j.events_size() - 12);
  for (int i = first; i < j.events_size(); ++i) out << "  " << j.events(i) << "\n";
}

// Streams a job's events as progress lines until the job ends, or until
// `stop` (given each event after it is printed) returns true. `on_context`
// sees the stream's context first (to cancel it from another thread).
// Returns the job as it is then.
absl::StatusOr<v1::Job> Watch(v1::AdminService::Stub* stub, const std::string& coordinator,
                              const std::string& job_id, std::ostream& progress,
                              std::function<void(grpc::ClientContext*)> on_context = nullptr,
                              std::function<bool(const v1::JobEvent&)> stop = nullptr) {
  v1::GetJobRequest get;
  get.set_job_id(job_id);
  v1::Job job;
  if (absl::Status s = Rpc(stub->GetJob(Context(absl::Seconds(10)).get(), get, &job), coordinator);
      !s.ok()) {
    return s;
  }
  const int64_t steps = job.spec().steps();
  grpc::ClientContext ctx;
  if (on_context) on_context(&ctx);
  v1::WatchJobRequest req;
  req.set_job_id(job_id);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = stub->WatchJob(&ctx, req);
  v1::JobEvent e;
  while (reader->Read(&e)) {
    if (!e.message().empty()) {
      progress << "[" << job_id << "] " << e.message() << "\n";
    } else {
      progress << absl::StrFormat(
          "step %d/%d  loss %.4f  %.0f tokens/s  step %.2f s  ETA %s\n", e.step() + 1, steps,
          e.loss(), e.tokens_per_second(), e.step_seconds(), Duration(e.eta_seconds()));
    }
    progress.flush();
    if (stop && stop(e)) {
      ctx.TryCancel();
      while (reader->Read(&e)) {
      }
      break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) {
    return Rpc(st, coordinator);
  }
  if (absl::Status s = Rpc(stub->GetJob(Context(absl::Seconds(10)).get(), get, &job), coordinator);
      !s.ok()) {
    return s;
  }
  return job;
}

}  // namespace

std::string SmallModelConfigJson() {
  engine::ModelConfig c = engine::TinyQwen2Config();
  c.hidden_size = 256;
  c.intermediate_size = 704;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.num_hidden_layers = 4;
  c.vocab_size = 4096;
  c.max_position_embeddings = 8192;
  return engine::ToHfConfigJson(c);
}

// ---------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------

absl::Status RunCoordinatorCommand(const CoordinatorCommandOptions& o, std::ostream& out) {
  if (o.db_dir.empty()) return absl::InvalidArgumentError("--db is required (RocksDB directory)");
  coordinator::ServerOptions so;
  so.listen = o.listen;
  so.db_dir = o.db_dir;
  so.metrics_listen = o.metrics_listen;
  so.heartbeat_timeout = o.heartbeat_timeout;
  so.heartbeat_interval = std::min(absl::Seconds(1), o.heartbeat_timeout / 4);
  so.comm_timeout = o.comm_timeout;
  // The signal thread only notifies; this thread shuts the server down (a
  // signal during Start is kept until then).
  absl::Notification stop;
  SignalWatcher signals([&](int sig) {
    if (stop.HasBeenNotified()) return;
    out << "coordinator: signal " << sig << ", shutting down" << std::endl;
    stop.Notify();
  });
  absl::StatusOr<std::unique_ptr<coordinator::CoordinatorServer>> s =
      coordinator::CoordinatorServer::Start(so);
  if (!s.ok()) return s.status();
  std::unique_ptr<coordinator::CoordinatorServer> server = std::move(*s);
  if (!o.port_file.empty()) {
    const std::string tmp = o.port_file + ".tmp";
    std::ofstream f(tmp);
    f << server->port() << "\n";
    f.close();
    if (!f || std::rename(tmp.c_str(), o.port_file.c_str()) != 0) {
      return absl::UnavailableError(absl::StrCat("--port_file: cannot write ", o.port_file));
    }
  }
  out << "coordinator listening on port " << server->port() << " (database " << o.db_dir;
  if (server->metrics_port() > 0) out << ", /metrics on port " << server->metrics_port();
  out << ")" << std::endl;
  stop.WaitForNotification();
  server->Shutdown();
  server.reset();
  return absl::OkStatus();
}

absl::Status RunWorkerCommand(const WorkerCommandOptions& o, std::ostream& out) {
  worker::WorkerDaemonOptions wo;
  wo.coordinator = o.coordinator;
  wo.name = o.name;
  wo.host = o.host;
  wo.metrics_listen = o.metrics_listen;
  wo.give_up_after = o.give_up_after;
  wo.device = o.device;
  wo.cuda_device = o.cuda_device;
  wo.precision = o.precision;
  wo.links = o.links;
  wo.offload_state = o.offload_state;
  wo.log = &out;
  // SIGINT / SIGTERM are blocked before the daemon starts any thread (gRPC's
  // channel, the /metrics server): threads inherit the mask, so a signal
  // reaches the watcher and stops the worker cleanly instead of killing the
  // process from whichever thread the kernel picks. A signal during Create
  // stops the daemon as soon as it exists. `daemon` outlives the watcher.
  std::unique_ptr<worker::WorkerDaemon> daemon;
  std::atomic<worker::WorkerDaemon*> live{nullptr};
  std::atomic<bool> signalled{false};
  SignalWatcher signals([&](int sig) {
    out << "worker: signal " << sig << ", stopping" << std::endl;
    signalled = true;
    if (worker::WorkerDaemon* w = live.load()) w->Stop();
  });
  absl::StatusOr<std::unique_ptr<worker::WorkerDaemon>> d = worker::WorkerDaemon::Create(wo);
  if (!d.ok()) return d.status();
  daemon = std::move(*d);
  live = daemon.get();
  if (signalled) daemon->Stop();
  out << "worker " << (o.name.empty() ? "(unnamed)" : o.name) << " connecting to "
      << o.coordinator;
  if (daemon->metrics_port() > 0) out << ", /metrics on port " << daemon->metrics_port();
  out << std::endl;
  return daemon->Run();
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

absl::Status RunAdminCommand(const AdminCommandOptions& o, std::ostream& out,
                             std::ostream& progress) {
  if (o.format != "table" && o.format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format must be 'table' or 'json', got '", o.format, "'"));
  }
  auto stub = v1::AdminService::NewStub(
      worker::CoordinatorChannel(o.coordinator));
  const bool json = o.format == "json";
  auto need = [](const std::string& value, const char* flag) {
    return value.empty() ? absl::InvalidArgumentError(absl::StrCat(flag, " is required"))
                         : absl::OkStatus();
  };
  // One unary call: the coordinator's status as is, then the response as JSON
  // or through `table`.
  auto call = [&](auto method, const auto& req, auto* resp, auto table) -> absl::Status {
    if (absl::Status s = Rpc(((*stub).*method)(Context(o.timeout).get(), req, resp), o.coordinator);
        !s.ok()) {
      return s;
    }
    if (json) {
      out << Json(*resp) << "\n";
    } else {
      table();
    }
    return absl::OkStatus();
  };
  using Stub = v1::AdminService::Stub;
  const std::string& c = o.command;
  if (c == "submit") {
    v1::SubmitJobRequest req;
    *req.mutable_spec() = o.spec;
    v1::Job job;
    if (absl::Status s = call(&Stub::SubmitJob, req, &job, [&] {
          out << "submitted " << job.id() << " (" << StateName(job.state()) << "; needs "
              << job.spec().dp() * job.spec().pp() << " workers)\n";
        });
        !s.ok() || !o.watch_after_submit) {
      return s;
    }
    AdminCommandOptions w = o;
    w.command = "watch";
    w.job_id = job.id();
    return RunAdminCommand(w, out, progress);
  }
  if (c == "get-job") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    v1::GetJobRequest req;
    req.set_job_id(o.job_id);
    v1::Job job;
    return call(&Stub::GetJob, req, &job, [&] { PrintJob(job, out); });
  }
  if (c == "list-jobs") {
    v1::ListJobsResponse resp;
    return call(&Stub::ListJobs, v1::ListJobsRequest(), &resp, [&] {
      out << absl::StrFormat("%-12s %-10s %-12s %-10s %-9s %s\n", "JOB", "STATE", "STEPS", "LOSS",
                             "DP x PP", "NAME");
      for (const v1::Job& j : resp.jobs()) {
        out << absl::StrFormat("%-12s %-10s %-12s %-10.4f %-9s %s\n", j.id(), StateName(j.state()),
                               absl::StrCat(j.steps_committed(), "/", j.spec().steps()),
                               j.last_loss(), absl::StrCat(j.spec().dp(), " x ", j.spec().pp()),
                               j.spec().name());
      }
    });
  }
  if (c == "cancel") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    v1::CancelJobRequest req;
    req.set_job_id(o.job_id);
    req.set_reason(o.reason);
    v1::Job job;
    return call(&Stub::CancelJob, req, &job, [&] {
      out << job.id() << " " << StateName(job.state()) << " after " << job.steps_committed()
          << " steps\n";
    });
  }
  if (c == "list-workers") {
    v1::ListWorkersResponse resp;
    return call(&Stub::ListWorkers, v1::ListWorkersRequest(), &resp, [&] {
      out << absl::StrFormat("%-16s %-9s %-12s %-6s %-4s %-16s %-8s %-6s %s\n", "WORKER",
                             "STATE", "JOB", "STAGE", "DP", "HOST", "DEVICE", "LINKS",
                             "PEAK MiB");
      for (const v1::Worker& w : resp.workers()) {
        const bool assigned = !w.job_id().empty();
        out << absl::StrFormat("%-16s %-9s %-12s %-6s %-4s %-16s %-8s %-6s %.1f\n", w.id(),
                               WorkerStateName(w.state()), assigned ? w.job_id() : "-",
                               assigned ? std::to_string(w.stage()) : "-",
                               assigned ? std::to_string(w.dp_index()) : "-", w.host(),
                               w.device().name(),
                               w.links() == v1::CommBootstrap::BACKEND_NCCL ? "nccl" : "gloo",
                               static_cast<double>(w.peak_memory_bytes()) / (1 << 20));
      }
    });
  }
  if (c == "drain") {
    if (absl::Status s = need(o.worker_id, "--worker"); !s.ok()) return s;
    v1::DrainWorkerRequest req;
    req.set_worker_id(o.worker_id);
    v1::Worker w;
    return call(&Stub::DrainWorker, req, &w, [&] {
      out << w.id() << " draining (state " << WorkerStateName(w.state())
          << "): it takes no new job\n";
    });
  }
  if (c == "update-schedule") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    v1::UpdateScheduleRequest req;
    req.set_job_id(o.job_id);
    *req.mutable_schedule() = o.schedule;
    v1::Job job;
    return call(&Stub::UpdateSchedule, req, &job, [&] {
      out << job.id() << ": ChunkSize " << job.current_schedule().chunk_size() << ", K "
          << job.current_schedule().k() << " from the next planned step\n";
    });
  }
  if (c == "checkpoint") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    v1::CheckpointJobRequest req;
    req.set_job_id(o.job_id);
    v1::Job job;
    if (!o.wait) {
      return call(&Stub::CheckpointJob, req, &job, [&] {
        out << "checkpoint requested for " << job.id() << ": after its next planned step\n";
      });
    }
    // The request goes out once the watch has its first event (the job's
    // state), so the checkpoint's event cannot pass before the watch.
    absl::Status asked = absl::OkStatus();
    bool sent = false;
    v1::JobEvent saved;
    absl::StatusOr<v1::Job> end =
        Watch(stub.get(), o.coordinator, o.job_id, progress, nullptr, [&](const v1::JobEvent& e) {
          if (!sent) {
            sent = true;
            asked = Rpc(stub->CheckpointJob(Context(o.timeout).get(), req, &job), o.coordinator);
            return !asked.ok();
          }
          if (e.checkpoint_path().empty()) return false;
          saved = e;
          return true;
        });
    if (!asked.ok()) return asked;
    if (!end.ok()) return end.status();
    if (saved.checkpoint_path().empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", o.job_id, " ended ", StateName(end->state()),
                       " before the checkpoint was written",
                       end->error().empty() ? "" : ": " + end->error()));
    }
    if (json) {
      out << Json(saved) << "\n";
    } else {
      out << "checkpoint of " << o.job_id << " after step " << saved.step() << ": "
          << saved.checkpoint_path() << "\n";
    }
    return absl::OkStatus();
  }
  if (c == "steps") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    v1::ListStepsRequest req;
    req.set_job_id(o.job_id);
    v1::ListStepsResponse resp;
    return call(&Stub::ListSteps, req, &resp, [&] {
      out << absl::StrFormat("%6s %-9s %10s %9s %8s %7s %10s %3s  %s\n", "STEP", "STATE", "LOSS",
                             "TOKENS", "SECONDS", "CHUNKS", "CHUNKSIZE", "K", "DOCUMENTS");
      for (const v1::StepSummary& s : resp.steps()) {
        std::vector<int64_t> docs(s.samples().begin(), s.samples().end());
        std::string list =
            absl::StrJoin(docs.begin(), docs.begin() + std::min<size_t>(docs.size(), 8), ",");
        if (docs.size() > 8) absl::StrAppend(&list, ",... (", docs.size(), ")");
        out << absl::StrFormat("%6d %-9s %10.4f %9d %8.2f %7d %10d %3d  %s\n", s.step(),
                               s.committed() ? "committed" : "planned", s.loss(), s.tokens(),
                               s.step_seconds(), s.chunks(), s.chunk_size(), s.k(), list);
      }
    });
  }
  if (c == "watch") {
    if (absl::Status s = need(o.job_id, "--job"); !s.ok()) return s;
    absl::StatusOr<v1::Job> job = Watch(stub.get(), o.coordinator, o.job_id, progress);
    if (!job.ok()) return job.status();
    if (json) {
      out << Json(*job) << "\n";
    } else {
      out << job->id() << " " << StateName(job->state()) << ": " << job->steps_committed() << "/"
          << job->spec().steps() << " steps, last loss " << absl::StrFormat("%.4f", job->last_loss())
          << "\n";
    }
    if (job->state() == v1::JOB_STATE_FAILED || job->state() == v1::JOB_STATE_CANCELLED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", job->id(), " ended ", StateName(job->state()),
          job->error().empty() ? "" : ": " + job->error()));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown admin command '", c, "'"));
}

// ---------------------------------------------------------------------------
// local
// ---------------------------------------------------------------------------

namespace {

struct Child {
  std::string name;
  std::vector<std::string> args;
  std::string log;
  pid_t pid = -1;
  int restarts = 0;
  absl::Time restart_at = absl::InfiniteFuture();  // when it exited: its next start
};

absl::Status Spawn(const std::string& self, Child* c, const std::map<std::string, std::string>& env) {
  const int fd = ::open(c->log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot open ", c->log, ": ", std::strerror(errno)));
  std::vector<std::string> argv = {self};
  argv.insert(argv.end(), c->args.begin(), c->args.end());
  // Everything the child needs is built before fork: after it, in a
  // multi-threaded parent, the child may only call async-signal-safe functions.
  std::vector<char*> raw;
  for (std::string& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    const std::string key = entry.substr(0, entry.find('='));
    if (env.count(key) == 0) env_strings.push_back(entry);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  sigset_t all;
  sigfillset(&all);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    // The child: signals unblocked, output to its log, its own environment.
    pthread_sigmask(SIG_UNBLOCK, &all, nullptr);
    // If `local` dies without stopping it (SIGKILL, a crash), the child
    // gets SIGTERM instead of running on as an orphan. (The signal follows
    // the forking thread: the supervisor's restarts end with it, after the
    // job.) A parent already gone before the prctl took effect: exit now.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) _exit(1);
    // Its own process group: a terminal's Ctrl-C reaches `local` alone,
    // which then stops the workers and the coordinator in order (the
    // coordinator stopping first made the watch fail with a bare CANCELLED).
    ::setpgid(0, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execve(raw[0], raw.data(), envp.data());
    _exit(127);
  }
  ::close(fd);
  c->pid = pid;
  return absl::OkStatus();
}

// SIGTERM to every child of `cs` at once, then one shared grace period for
// all of them, then SIGKILL for whoever is left: a cluster of n workers stops
// in one grace period, not n.
void StopChildren(const std::vector<Child*>& cs, absl::Duration grace) {
  for (Child* c : cs) {
    if (c->pid > 0) ::kill(c->pid, SIGTERM);
  }
  const absl::Time end = absl::Now() + grace;
  for (bool running = true; running && absl::Now() < end;) {
    running = false;
    for (Child* c : cs) {
      if (c->pid > 0 && ::waitpid(c->pid, nullptr, WNOHANG) == c->pid) c->pid = -1;
      running = running || c->pid > 0;
    }
    if (running) absl::SleepFor(absl::Milliseconds(50));
  }
  for (Child* c : cs) {
    if (c->pid <= 0) continue;
    ::kill(c->pid, SIGKILL);
    ::waitpid(c->pid, nullptr, 0);
    c->pid = -1;
  }
}

absl::Status MakeDir(const std::string& d) {
  if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("cannot create ", d, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunLocalCommand(const LocalCommandOptions& o, std::ostream& out,
                             std::ostream& progress) {
  v1::JobSpec spec = o.spec;
  if (spec.dp() < 1 || spec.pp() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dp and --pp must be >= 1, got ", spec.dp(), " and ", spec.pp()));
  }
  // The binary's real path, so `ps` and `pgrep chunkflowctl` show the
  // children by name (argv[0] "/proc/self/exe" hid them).
  std::string self = o.self;
  if (self.empty()) {
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    self = ec ? "/proc/self/exe" : exe.string();
  }
  const std::string run = absl::StrCat(
      o.workdir, "/", absl::FormatTime("%Y%m%d-%H%M%S", absl::Now(), absl::LocalTimeZone()), "-",
      ::getpid());
  for (const std::string& d : {o.workdir, run, run + "/logs"}) {
    if (absl::Status s = MakeDir(d); !s.ok()) return s;
  }
  if (spec.checkpoint_dir().empty()) spec.set_checkpoint_dir(run + "/checkpoints");

  std::atomic<bool> interrupted{false};
  absl::Mutex ctx_mu;
  grpc::ClientContext* watch_ctx = nullptr;
  SignalWatcher signals([&](int) {
    if (!interrupted.exchange(true)) progress << "\ninterrupted: stopping the cluster" << std::endl;
    absl::MutexLock lock(&ctx_mu);
    if (watch_ctx != nullptr) watch_ctx->TryCancel();
  });

  // The coordinator first; it writes its port to a file once it listens.
  const std::string port_file = run + "/coordinator.port";
  std::vector<Child> children;
  children.push_back({"coordinator",
                      {"coordinator", absl::StrCat("--listen=127.0.0.1:", o.port),
                       "--db=" + run + "/db", "--port_file=" + port_file},
                      run + "/logs/coordinator.log"});
  if (o.metrics_port >= 0) {
    children.back().args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:", o.metrics_port));
  }
  // The workers together, then the coordinator (it outlives them, so they
  // leave their job cleanly instead of losing it).
  auto stop_all = [&] {
    std::vector<Child*> workers;
    for (size_t i = 1; i < children.size(); ++i) workers.push_back(&children[i]);
    StopChildren(workers, absl::Seconds(10));
    if (!children.empty()) StopChildren({&children[0]}, absl::Seconds(10));
  };
  if (absl::Status s = Spawn(self, &children[0], {}); !s.ok()) return s;
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    std::ifstream in(port_file);
    if (!(in >> port)) port = 0;
    if (port == 0) {
      if (::waitpid(children[0].pid, nullptr, WNOHANG) == children[0].pid) {
        children[0].pid = -1;
        return absl::InternalError(
            absl::StrCat("the coordinator exited at start; see ", children[0].log));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  if (port == 0) {
    stop_all();
    return absl::DeadlineExceededError(
        absl::StrCat("the coordinator did not start within 30 s; see ", children[0].log));
  }
  const std::string address = absl::StrCat("127.0.0.1:", port);
  const int world = spec.dp() * spec.pp();
  const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  std::map<std::string, std::string> env;
  // The user's OMP_NUM_THREADS wins (the children inherit it); otherwise the
  // cores are split between the workers.
  const char* user_threads = std::getenv("OMP_NUM_THREADS");
  const std::string threads = user_threads != nullptr
                                  ? std::string(user_threads)
                                  : std::to_string(std::max(1u, cpus / static_cast<unsigned>(world)));
  if (user_threads == nullptr) {
    env["OMP_NUM_THREADS"] = threads;
  }
  int gpus = 0;
  if (o.device == "cuda") {
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
      stop_all();
      return absl::UnavailableError("--device=cuda but this machine has no CUDA device");
    }
    if (o.links == "nccl" && world > gpus) {
      stop_all();
      return absl::InvalidArgumentError(absl::StrCat(
          "--links=nccl needs one GPU per worker: dp x pp = ", world, " workers on ", gpus,
          " GPU(s); use --links=gloo to share GPUs or lower --dp / --pp"));
    }
  }
  for (int i = 0; i < world; ++i) {
    Child w{absl::StrCat("worker-", i),
            {"worker", "--coordinator=" + address, absl::StrCat("--name=worker-", i),
             "--give_up_after_s=60"},
            absl::StrCat(run, "/logs/worker-", i, ".log")};
    if (o.device == "cuda") {
      for (std::string a : {std::string("--device=cuda"), absl::StrCat("--cuda_device=", i % gpus),
                            "--precision=" + o.precision, "--links=" + o.links,
                            "--offload_state=" + o.offload_state}) {
        w.args.push_back(std::move(a));
      }
    }
    if (o.metrics_port >= 0) {  // 0: a free port each, as the coordinator's
      w.args.push_back(absl::StrCat("--metrics_listen=127.0.0.1:",
                                    o.metrics_port > 0 ? o.metrics_port + 1 + i : 0));
    }
    children.push_back(std::move(w));
    if (absl::Status s = Spawn(self, &children.back(), env); !s.ok()) {
      stop_all();
      return s;
    }
  }
  progress << "local cluster: coordinator " << address << " and " << world << " workers (dp "
           << spec.dp() << " x pp " << spec.pp() << "), " << threads
           << " thread(s) each; logs in " << run << "/logs" << std::endl;
  if (o.metrics_port > 0) {
    progress << "metrics: coordinator http://127.0.0.1:" << o.metrics_port << "/metrics, workers "
             << o.metrics_port + 1 << ".." << o.metrics_port + world << std::endl;
  } else if (o.metrics_port == 0) {
    progress << "metrics: on free ports; each process logs its own (\"/metrics on port\") in "
             << run << "/logs" << std::endl;
  }

  // A supervisor restarts a worker that dies (as Kubernetes would), up to 3
  // times each, 1, 2 and 4 s after it exited; the coordinator resumes the
  // job from its last checkpoint. A worker that dies a fourth time ends the
  // run with an error naming it (the job could never finish without it).
  std::atomic<bool> done{false};
  std::atomic<bool> gave_up{false};
  std::string gave_up_why;  // set once, before gave_up
  absl::Mutex children_mu;
  std::thread supervisor([&] {
    while (!done) {
      {
        absl::MutexLock lock(&children_mu);
        for (size_t i = 1; i < children.size(); ++i) {
          Child& c = children[i];
          int status = 0;
          if (c.pid > 0 && ::waitpid(c.pid, &status, WNOHANG) == c.pid) {
            c.pid = -1;
            if (done || interrupted || gave_up) continue;
            const std::string how = WIFSIGNALED(status)
                                        ? absl::StrCat("signal ", WTERMSIG(status))
                                        : absl::StrCat("status ", WEXITSTATUS(status));
            progress << c.name << " exited (" << how << "); see " << c.log << std::endl;
            if (c.restarts < 3) {
              c.restart_at = absl::Now() + absl::Seconds(1 << c.restarts);
              ++c.restarts;
            } else {
              gave_up_why = absl::StrCat(c.name, " exited 4 times (last: ", how, "); see ", c.log);
              gave_up = true;
              absl::MutexLock ctx_lock(&ctx_mu);
              if (watch_ctx != nullptr) watch_ctx->TryCancel();
            }
          }
          if (c.pid <= 0 && absl::Now() >= c.restart_at && !done && !interrupted && !gave_up) {
            c.restart_at = absl::InfiniteFuture();
            progress << "restarting " << c.name << " (restart " << c.restarts << " of 3)"
                     << std::endl;
            (void)Spawn(self, &c, env);
          }
        }
      }
      absl::SleepFor(absl::Milliseconds(200));
    }
  });

  auto stub = v1::AdminService::NewStub(
      worker::CoordinatorChannel(address));
  absl::Status result;
  v1::Job job;
  {
    v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    result = Rpc(stub->SubmitJob(Context(absl::Seconds(30)).get(), req, &job), address);
  }
  const absl::Time start = absl::Now();
  if (result.ok()) {
    progress << "submitted " << job.id() << ": " << spec.steps() << " steps of "
             << spec.global_batch() << " documents from " << job.spec().dataset().path()
             << ", ChunkSize " << job.spec().schedule().chunk_size() << ", K "
             << job.spec().schedule().k() << std::endl;
    absl::StatusOr<v1::Job> end =
        Watch(stub.get(), address, job.id(), progress, [&](grpc::ClientContext* ctx) {
          absl::MutexLock lock(&ctx_mu);
          const bool stop = interrupted || gave_up;
          watch_ctx = stop ? nullptr : ctx;
          if (stop) ctx->TryCancel();
        });
    {
      absl::MutexLock lock(&ctx_mu);
      watch_ctx = nullptr;
    }
    if (!end.ok()) {
      result = end.status();
    } else {
      job = *end;
    }
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (gave_up) {
    result = absl::UnavailableError(absl::StrCat(gave_up_why, "; ", job.id(), " was ",
                                                 StateName(job.state()), " (",
                                                 job.steps_committed(), " steps committed)"));
  } else if (interrupted && !(result.ok() && job.state() == v1::JOB_STATE_COMPLETED)) {
    result = absl::CancelledError(
        job.id().empty() ? std::string("interrupted before the job was submitted")
                         : absl::StrCat("interrupted; ", job.id(), " was ", StateName(job.state()),
                                        " (", job.steps_committed(), " steps committed)"));
  } else if (result.ok() && job.state() == v1::JOB_STATE_COMPLETED) {
    out << absl::StrFormat("%s completed: %d steps, %d tokens in %.1f s (%.0f tokens/s); final loss %.4f\n",
                           job.id(), job.steps_committed(), job.tokens_trained(), seconds,
                           job.tokens_trained() / std::max(seconds, 1e-9), job.last_loss());
    out << absl::StrFormat("checkpoint (Hugging Face sharded): %s/%s/step-%06d\n",
                           spec.checkpoint_dir(), job.id(), job.steps_committed() - 1);
    if (o.keep_running && !interrupted) {
      progress << "--keep_running: the cluster stays up; Ctrl-C stops it" << std::endl;
      while (!interrupted) absl::SleepFor(absl::Milliseconds(200));
    }
  } else if (result.ok()) {
    result = interrupted ? absl::CancelledError(absl::StrCat("interrupted; ", job.id(), " was ",
                                                             StateName(job.state())))
                         : absl::FailedPreconditionError(absl::StrCat(
                               job.id(), " ended ", StateName(job.state()),
                               job.error().empty() ? "" : ": " + job.error()));
  }
  done = true;
  supervisor.join();
  stop_all();
  progress << "cluster stopped; logs in " << run << "/logs" << std::endl;
  return result;
}

}  // namespace chunkflow::cli
