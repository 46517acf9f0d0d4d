// Control-plane benchmark: one coordinator (a child process, so its CPU time
// is its own) and N simulated workers that answer every step plan at once
// with a report, and send a heartbeat every second. No training happens: what
// is measured is the coordinator's step loop - commit the step, refit the cost
// model, plan the next global batch, write it to RocksDB (synced), and send
// every worker its op list.
//
//   latency of step s = (time the plan of step s reached the LAST worker)
//                     - (time the last report of step s-1 was sent)
// i.e. from the report that completes a step (triggering its commit) to the
// next plan being everywhere, through real gRPC on loopback.
//
//   bazel run -c opt //coordinator/service:control_plane_bench -- --workers=16,64,256 \
//       --steps=40 --json=/tmp/cp.json
//
// The simulated workers run in this process (threads), on the same cores as
// the coordinator: on a 2-core machine they compete with it, so the numbers
// are an upper bound on the coordinator's own latency.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "coordinator/service/service.h"
#include "grpcpp/grpcpp.h"
#include "proto/chunkflow.grpc.pb.h"
#include "worker/engine/model_config.h"

ABSL_FLAG(std::string, workers, "16,64,256", "comma-separated worker counts (dp x 4 stages)");
ABSL_FLAG(int64_t, steps, 40, "measured steps per row (after 3 warm-up steps)");
ABSL_FLAG(int64_t, docs_per_rank, 8, "documents per dp rank in each global batch");
ABSL_FLAG(std::string, json, "", "also write the table as JSON here");
ABSL_FLAG(std::string, serve, "", "internal: run the coordinator on this database directory");

namespace {
namespace v1 = ::chunkflow::v1;
using Clock = std::chrono::steady_clock;

constexpr int kPp = 4;

struct Row {
  int workers = 0, dp = 0;
  int64_t steps = 0;
  double p50_ms = 0, p99_ms = 0, max_ms = 0, cpu_ms_per_step = 0, plan_kib = 0;
};

double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> f = absl::StrSplit(text.substr(close + 2), ' ');
  // Fields after "(comm)": state is f[0]; utime and stime are fields 14 and 15 of the line.
  int64_t utime = 0, stime = 0;
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime)) return 0;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// --serve: the coordinator process. Prints its port, serves until killed.
int Serve(const std::string& db) {
  chunkflow::coordinator::ServerOptions o;
  o.db_dir = db;
  o.heartbeat_interval = absl::Seconds(1);
  o.heartbeat_timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<chunkflow::coordinator::CoordinatorServer>> s =
      chunkflow::coordinator::CoordinatorServer::Start(o);
  if (!s.ok()) {
    std::cerr << s.status() << "\n";
    return 1;
  }
  std::cout << (*s)->port() << std::endl;
  (*s)->Wait();
  return 0;
}

// The coordinator in a child process (fork + exec: the parent already runs
// gRPC threads, which a bare fork would not carry over); its pid and port.
std::pair<pid_t, int> StartCoordinator(const std::string& db) {
  int fds[2];
  if (pipe(fds) != 0) return {-1, 0};
  std::string self = "/proc/self/exe", flag = "--serve=" + db;
  char* argv[] = {self.data(), flag.data(), nullptr};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  close(fds[0]);
  int port = 0;
  if (!absl::SimpleAtoi(line, &port)) port = 0;
  return {pid, port};
}

struct FakeWorker {
  int index = 0;
  std::unique_ptr<v1::WorkerService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>> stream;
  absl::Mutex write_mu;
  v1::RankAssignment assignment;
  std::thread reader;
  int64_t plan_bytes = 0;

  void Write(const v1::WorkerMessage& m) {
    absl::MutexLock lock(&write_mu);
    stream->Write(m);
  }
};

// Per step: when its plan reached each worker, when each report was sent.
struct Timeline {
  absl::Mutex mu;
  std::vector<std::vector<Clock::time_point>> plan_at, report_at;  // [step][worker]
};

absl::StatusOr<Row> RunRow(int n_workers, int64_t steps, int64_t docs_per_rank) {
  const int dp = n_workers / kPp;
  const std::string db = absl::StrFormat("/tmp/chunkflow_cp_bench_%d_%d", getpid(), n_workers);
  std::system(("rm -rf " + db).c_str());
  auto [pid, port] = StartCoordinator(db);
  if (port == 0) return absl::InternalError("the coordinator did not start");
  const std::string target = absl::StrCat("127.0.0.1:", port);
  const int64_t total = steps + 3;
  Timeline tl;
  tl.plan_at.assign(total, std::vector<Clock::time_point>(n_workers));
  tl.report_at.assign(total, std::vector<Clock::time_point>(n_workers));
  std::atomic<int64_t> plans_seen{0};

  std::vector<std::unique_ptr<FakeWorker>> workers;
  for (int i = 0; i < n_workers; ++i) {
    auto w = std::make_unique<FakeWorker>();
    w->index = i;
    grpc::ChannelArguments args;
    args.SetInt("chunkflow.bench.worker", i);  // one connection per worker
    w->stub = v1::WorkerService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
    v1::RegisterRequest req;
    req.set_worker_name(absl::StrCat("sim-", i));
    req.set_incarnation(1000 + i);
    req.mutable_device()->set_kind(v1::DEVICE_KIND_CPU);
    v1::RegisterResponse resp;
    grpc::ClientContext rctx;
    rctx.set_wait_for_ready(true);
    rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    grpc::Status st = w->stub->Register(&rctx, req, &resp);
    if (!st.ok()) return absl::InternalError(st.error_message());
    w->stream = w->stub->Connect(&w->ctx);
    v1::WorkerMessage hello;
    hello.mutable_hello()->set_worker_id(resp.worker_id());
    hello.mutable_hello()->set_incarnation(1000 + i);
    w->Write(hello);
    FakeWorker* raw = w.get();
    w->reader = std::thread([raw, &tl, &plans_seen, total] {
      v1::CoordinatorMessage m;
      while (raw->stream->Read(&m)) {
        if (m.has_assignment()) raw->assignment = m.assignment();
        if (!m.has_step()) continue;
        const Clock::time_point got = Clock::now();
        const v1::StepPlanForWorker& p = m.step();
        raw->plan_bytes = static_cast<int64_t>(m.ByteSizeLong());
        v1::WorkerMessage out;
        v1::StepReport* r = out.mutable_step_report();
        r->set_job_id(p.job_id());
        r->set_step(p.step());
        r->set_dp(raw->assignment.dp_index());
        r->set_stage(raw->assignment.stage());
        r->set_generation(raw->assignment.generation());
        r->set_peak_memory_bytes(1 << 20);
        r->set_step_seconds(0.01);
        for (int i = 0; i < p.ops().ops_size(); ++i) {
          int64_t tokens = 0;
          for (const v1::Chunk& c : p.chunks()) {
            if (c.id() != p.ops().ops(i).chunk()) continue;
            for (const v1::Piece& pc : c.pieces()) tokens += pc.length();
          }
          v1::OpTiming* t = r->add_timings();
          t->set_op_index(i);
          t->set_type(p.ops().ops(i).type());
          t->set_tokens(tokens);
          t->set_attention_pairs(tokens * tokens / 2);
          t->set_seconds(1e-6 * tokens + 1e-10 * tokens * tokens);
        }
        const Clock::time_point sent = Clock::now();
        raw->Write(out);
        if (p.step() < total) {
          absl::MutexLock lock(&tl.mu);
          tl.plan_at[p.step()][raw->index] = got;
          tl.report_at[p.step()][raw->index] = sent;
        }
        ++plans_seen;
      }
    });
    workers.push_back(std::move(w));
  }
  std::atomic<bool> stop{false};
  std::thread heartbeats([&] {
    while (!stop) {
      for (auto& w : workers) {
        v1::WorkerMessage hb;
        hb.mutable_heartbeat()->set_state(v1::WORKER_STATE_TRAINING);
        w->Write(hb);
      }
      for (int i = 0; i < 10 && !stop; ++i) absl::SleepFor(absl::Milliseconds(100));
    }
  });

  // Submit the job: dp x 4 ranks, docs_per_rank documents per rank per step.
  auto admin = v1::AdminService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  v1::SubmitJobRequest sreq;
  v1::JobSpec* spec = sreq.mutable_spec();
  spec->set_dp(dp);
  spec->set_pp(kPp);
  spec->set_steps(total);
  spec->set_global_batch(docs_per_rank * dp);
  spec->mutable_dataset()->set_path("synthetic:lmsys:n=200000,seed=1,max=8192");
  spec->mutable_schedule()->set_chunk_size(2048);
  spec->mutable_schedule()->set_k(2);
  spec->mutable_model()->set_config_json([] {
    chunkflow::engine::ModelConfig c = chunkflow::engine::Qwen25_0_5BConfig();
    c.num_hidden_layers = 4 * ((c.num_hidden_layers + 3) / 4);
    return chunkflow::engine::ToHfConfigJson(c);
  }());
  v1::Job job;
  grpc::ClientContext sctx;
  grpc::Status st = admin->SubmitJob(&sctx, sreq, &job);
  if (!st.ok()) return absl::InternalError(st.error_message());
  const int64_t want = total * n_workers;
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(600);
  // CPU of the coordinator over the measured steps only.
  while (plans_seen < 3 * n_workers && Clock::now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  const double cpu0 = CpuSeconds(pid);
  const int64_t seen0 = plans_seen;
  while (plans_seen < want && Clock::now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  const double cpu1 = CpuSeconds(pid);
  const double measured_steps = static_cast<double>(plans_seen - seen0) / n_workers;
  stop = true;
  heartbeats.join();
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  for (auto& w : workers) {
    w->ctx.TryCancel();
    w->reader.join();
  }
  std::system(("rm -rf " + db).c_str());
  if (plans_seen < want) return absl::DeadlineExceededError("the job did not finish in 600 s");

  std::vector<double> lat;
  for (int64_t s = 3; s < total; ++s) {
    const Clock::time_point last_report =
        *std::max_element(tl.report_at[s - 1].begin(), tl.report_at[s - 1].end());
    const Clock::time_point last_plan =
        *std::max_element(tl.plan_at[s].begin(), tl.plan_at[s].end());
    lat.push_back(std::chrono::duration<double, std::milli>(last_plan - last_report).count());
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) {
    return lat[std::min(lat.size() - 1, static_cast<size_t>(q * static_cast<double>(lat.size())))];
  };
  Row row;
  row.workers = n_workers;
  row.dp = dp;
  row.steps = static_cast<int64_t>(lat.size());
  row.p50_ms = pct(0.5);
  row.p99_ms = pct(0.99);
  row.max_ms = lat.back();
  row.cpu_ms_per_step = 1e3 * (cpu1 - cpu0) / std::max(1.0, measured_steps);
  int64_t bytes = 0;
  for (auto& w : workers) bytes += w->plan_bytes;
  row.plan_kib = static_cast<double>(bytes) / n_workers / 1024.0;
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_serve).empty()) return Serve(absl::GetFlag(FLAGS_serve));
  std::vector<Row> rows;
  std::cout << absl::StrFormat("%8s %8s %6s %10s %10s %10s %14s %12s\n", "workers", "dp x pp",
                               "steps", "p50 ms", "p99 ms", "max ms", "coord CPU ms", "plan KiB")
            << std::flush;
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_workers), ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(w, &n) || n < kPp || n % kPp != 0) {
      std::cerr << "--workers: '" << w << "' is not a positive multiple of " << kPp << "\n";
      return 2;
    }
    absl::StatusOr<Row> r = RunRow(n, absl::GetFlag(FLAGS_steps), absl::GetFlag(FLAGS_docs_per_rank));
    if (!r.ok()) {
      std::cerr << "workers " << n << ": " << r.status() << "\n";
      return 1;
    }
    rows.push_back(*r);
    std::cout << absl::StrFormat("%8d %8s %6d %10.1f %10.1f %10.1f %14.1f %12.1f\n", r->workers,
                                 absl::StrCat(r->dp, " x ", kPp), r->steps, r->p50_ms, r->p99_ms,
                                 r->max_ms, r->cpu_ms_per_step, r->plan_kib)
              << std::flush;
  }
  std::cout << "latency: last report of step s-1 sent -> plan of step s received by every "
               "worker; coord CPU: coordinator process user+system per step\n";
  const std::string json = absl::GetFlag(FLAGS_json);
  if (!json.empty()) {
    std::ofstream out(json);
    out << "[\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out << absl::StrFormat(
          "  {\"workers\": %d, \"dp\": %d, \"pp\": %d, \"steps\": %d, \"p50_ms\": %.3f, "
          "\"p99_ms\": %.3f, \"max_ms\": %.3f, \"coordinator_cpu_ms_per_step\": %.3f, "
          "\"plan_kib_per_worker\": %.2f}%s\n",
          r.workers, r.dp, kPp, r.steps, r.p50_ms, r.p99_ms, r.max_ms, r.cpu_ms_per_step,
          r.plan_kib, i + 1 < rows.size() ? "," : "");
    }
    out << "]\n";
    std::cout << "wrote " << json << "\n";
  }
  return 0;
}
