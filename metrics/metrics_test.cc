#include "metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace chunkflow::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

MATCHER_P2(StatusIs, code, substr, "") {
  const absl::Status& s = arg;
  *result_listener << "status " << s.ToString();
  return s.code() == code && absl::StrContains(s.message(), substr);
}

// ---------------------------------------------------------------------------
// A tiny blocking HTTP/1.0 client: GET http://127.0.0.1:<port><path>, return
// the body of a 200 response. HTTP/1.0 makes the server close the connection
// after the response, so reading to EOF reads it all. Socket timeouts bound a
// hung server (the test then fails, it does not hang).
// ---------------------------------------------------------------------------

absl::StatusOr<std::string> HttpGet(int port, std::string_view path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  std::unique_ptr<int, void (*)(int*)> closer(&fd, [](int* f) { close(*f); });
  timeval timeout{/*tv_sec=*/10, /*tv_usec=*/0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect 127.0.0.1:", port, ": ", std::strerror(errno)));
  }
  std::string request = absl::StrCat("GET ", std::string(path), " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[4096];
  for (;;) {
    ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    response.append(buffer, static_cast<size_t>(n));
  }
  std::pair<absl::string_view, absl::string_view> head_body =
      absl::StrSplit(response, absl::MaxSplits("\r\n\r\n", 1));
  absl::string_view status_line = head_body.first.substr(0, head_body.first.find("\r\n"));
  if (!absl::StartsWith(status_line, "HTTP/1.") || status_line.substr(8, 5) != " 200 ") {
    return absl::UnavailableError(absl::StrCat("GET ", std::string(path), ": '", status_line, "'"));
  }
  return std::string(head_body.second);
}

std::string Exposition(const prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

// ---------------------------------------------------------------------------
// MetricsServer
// ---------------------------------------------------------------------------

TEST(MetricsServer, Start_FreePort_ServesCoordinatorSamples) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> m = CoordinatorMetrics::Create(registry);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);

  ASSERT_TRUE((*m)->OnStepCommitted(0.3, 1000, 0.25, 1.5).ok());
  ASSERT_TRUE((*m)->OnStepCommitted(0.5, 2000, 0.125, 1.25).ok());
  ASSERT_TRUE((*m)->OnStepCommitted(100, 4096, 0.5, 1).ok());
  ASSERT_TRUE((*m)->SetWorkers({{"running", 8}, {"idle", 2}}).ok());
  ASSERT_TRUE((*m)->SetJobs({{"running", 1}, {"completed", 4}}).ok());
  ASSERT_TRUE((*m)->OnReplan("memory").ok());

  absl::StatusOr<std::string> body = HttpGet((*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  for (const char* sample : {
           "# TYPE chunkflow_steps_total counter\n",
           "\nchunkflow_steps_total 3\n",
           "\nchunkflow_tokens_trained_total 7096\n",
           "# TYPE chunkflow_step_seconds histogram\n",
           "\nchunkflow_step_seconds_count 3\n",
           "\nchunkflow_step_seconds_sum 100.8\n",
           "\nchunkflow_step_seconds_bucket{le=\"0.256\"} 0\n",
           "\nchunkflow_step_seconds_bucket{le=\"0.512\"} 2\n",
           "\nchunkflow_step_seconds_bucket{le=\"524.288\"} 3\n",
           "\nchunkflow_step_seconds_bucket{le=\"+Inf\"} 3\n",
           "\nchunkflow_bubble_ratio 0.5\n",
           "\nchunkflow_dp_imbalance 1\n",
           "\nchunkflow_workers{state=\"running\"} 8\n",
           "\nchunkflow_workers{state=\"idle\"} 2\n",
           "\nchunkflow_workers{state=\"dead\"} 0\n",
           "\nchunkflow_jobs{state=\"completed\"} 4\n",
           "\nchunkflow_jobs{state=\"failed\"} 0\n",
           "\nchunkflow_replans_total{reason=\"memory\"} 1\n",
           "\nchunkflow_replans_total{reason=\"cost_model\"} 0\n",
       }) {
    EXPECT_THAT(*body, HasSubstr(sample));
  }
}

TEST(MetricsServer, Start_FreePort_ServesWorkerSamples) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<WorkerMetrics>> w = WorkerMetrics::Create(registry);
  ASSERT_TRUE(w.ok()) << w.status();
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();

  ASSERT_TRUE((*w)->OnOp("forward", 1, 0.003).ok());
  ASSERT_TRUE((*w)->OnOp("forward", 1, 0.0015).ok());
  ASSERT_TRUE((*w)->OnOp("recompute", 1, 2.0).ok());
  ASSERT_TRUE((*w)->SetMemory({/*activations=*/1000, /*state=*/200, /*scratch=*/30, 0}).ok());
  (*w)->OnHeartbeat();
  (*w)->OnHeartbeat();
  ASSERT_TRUE((*w)->OnStateOffloaded(2).ok());
  ASSERT_TRUE((*w)->OnStateOffloaded(0).ok());
  ASSERT_TRUE((*w)->OnStateOffloaded(1, 4096).ok());
  EXPECT_EQ((*w)->OnStateOffloaded(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->OnStateOffloaded(1, -1).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::string> body = HttpGet((*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  for (const char* sample : {
           "\nchunkflow_op_seconds_count{op=\"forward\",stage=\"1\"} 2\n",
           "\nchunkflow_op_seconds_bucket{op=\"forward\",stage=\"1\",le=\"0.001\"} 0\n",
           "\nchunkflow_op_seconds_bucket{op=\"forward\",stage=\"1\",le=\"0.002\"} 1\n",
           "\nchunkflow_op_seconds_bucket{op=\"forward\",stage=\"1\",le=\"0.004\"} 2\n",
           "\nchunkflow_op_seconds_count{op=\"recompute\",stage=\"1\"} 1\n",
           "\nchunkflow_chunks_total{op=\"forward\"} 2\n",
           "\nchunkflow_chunks_total{op=\"backward\"} 0\n",
           "\nchunkflow_chunks_total{op=\"recompute\"} 1\n",
           "\nchunkflow_memory_bytes{kind=\"activations\"} 1000\n",
           "\nchunkflow_memory_bytes{kind=\"state\"} 200\n",
           "\nchunkflow_memory_bytes{kind=\"scratch\"} 30\n",
           "\nchunkflow_memory_peak_bytes 1230\n",
           "\nchunkflow_heartbeats_total 2\n",
           "\nchunkflow_offloaded_sequences_total 3\n",
           "\nchunkflow_state_pinned_mid_step_bytes_total 4096\n",
       }) {
    EXPECT_THAT(*body, HasSubstr(sample));
  }
  EXPECT_THAT(*body, Not(HasSubstr("op=\"backward\",stage=")));  // no op seen yet
}

TEST(MetricsServer, Start_PortInUse_UnavailableNamingAddress) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsServer>> first =
      MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  absl::StatusOr<std::unique_ptr<MetricsServer>> second = MetricsServer::Start(address, registry);
  EXPECT_THAT(second.status(), StatusIs(absl::StatusCode::kUnavailable, address));
  // The first server still serves.
  EXPECT_TRUE(HttpGet((*first)->port(), "/metrics").ok());
}

TEST(MetricsServer, Start_MalformedAddress_InvalidArgument) {
  auto registry = std::make_shared<prometheus::Registry>();
  for (const char* address :
       {"", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:9100s", "1,2", "::1:9100", ":9100"}) {
    EXPECT_THAT(MetricsServer::Start(address, registry).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, absl::StrCat("'", address, "'")))
        << address;
  }
}

TEST(MetricsServer, Start_NullRegistry_InvalidArgument) {
  EXPECT_THAT(MetricsServer::Start("127.0.0.1:0", nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "registry is null"));
}

TEST(MetricsServer, Stopped_PortIsFreedAndCanBeReused) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsServer>> first =
      MetricsServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(first.ok()) << first.status();
  std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  first->reset();
  absl::StatusOr<std::unique_ptr<MetricsServer>> again = MetricsServer::Start(address, registry);
  EXPECT_TRUE(again.ok()) << again.status();
}

// ---------------------------------------------------------------------------
// CoordinatorMetrics
// ---------------------------------------------------------------------------

TEST(CoordinatorMetrics, Create_NameTakenByAnotherType_AlreadyExistsNamingIt) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildGauge().Name("chunkflow_steps_total").Help("wrong type").Register(*registry);
  EXPECT_THAT(CoordinatorMetrics::Create(registry).status(),
              StatusIs(absl::StatusCode::kAlreadyExists, "chunkflow_steps_total"));
}

TEST(CoordinatorMetrics, CreateTwice_SameRegistry_SharesSeries) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<CoordinatorMetrics> a = *CoordinatorMetrics::Create(registry);
  std::unique_ptr<CoordinatorMetrics> b = *CoordinatorMetrics::Create(registry);
  ASSERT_TRUE(a->OnStepCommitted(1, 10, 0, 1).ok());
  ASSERT_TRUE(b->OnStepCommitted(1, 10, 0, 1).ok());
  EXPECT_THAT(Exposition(*registry), HasSubstr("\nchunkflow_steps_total 2\n"));
}

TEST(CoordinatorMetrics, OnStepCommitted_BadValue_InvalidArgumentAndNothingRecorded) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<CoordinatorMetrics> m = *CoordinatorMetrics::Create(registry);
  EXPECT_THAT(m->OnStepCommitted(-1, 10, 0.1, 1), StatusIs(absl::StatusCode::kInvalidArgument,
                                                            "step time must be finite"));
  EXPECT_THAT(m->OnStepCommitted(1, -5, 0.1, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "got -5"));
  EXPECT_THAT(m->OnStepCommitted(1, 10, 1.5, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "bubble ratio must be in [0, 1], got 1.5"));
  EXPECT_THAT(m->OnStepCommitted(1, 10, 0.1, std::nan("")),
              StatusIs(absl::StatusCode::kInvalidArgument, "dp imbalance"));
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, HasSubstr("\nchunkflow_steps_total 0\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_tokens_trained_total 0\n"));
}

TEST(CoordinatorMetrics, SetWorkers_UnknownState_InvalidArgumentAndNothingChanged) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<CoordinatorMetrics> m = *CoordinatorMetrics::Create(registry);
  ASSERT_TRUE(m->SetWorkers({{"running", 3}}).ok());
  EXPECT_THAT(m->SetWorkers({{"idle", 1}, {"training", 2}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown state 'training'"));
  EXPECT_THAT(m->SetJobs({{"running", -1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, "must be >= 0, got -1"));
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, HasSubstr("\nchunkflow_workers{state=\"running\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_workers{state=\"idle\"} 0\n"));
}

TEST(CoordinatorMetrics, SetWorkers_StateAbsent_SetToZero) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<CoordinatorMetrics> m = *CoordinatorMetrics::Create(registry);
  ASSERT_TRUE(m->SetWorkers({{"running", 3}, {"draining", 1}}).ok());
  ASSERT_TRUE(m->SetWorkers({{"dead", 4}}).ok());
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, HasSubstr("\nchunkflow_workers{state=\"running\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_workers{state=\"draining\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_workers{state=\"dead\"} 4\n"));
}

TEST(CoordinatorMetrics, OnReplan_UnknownReason_InvalidArgumentListingReasons) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<CoordinatorMetrics> m = *CoordinatorMetrics::Create(registry);
  EXPECT_THAT(m->OnReplan("vibes"), StatusIs(absl::StatusCode::kInvalidArgument,
                                             "'vibes'; expected one of 'memory', 'cost_model'"));
  ASSERT_TRUE(m->OnReplan("cost_model").ok());
  ASSERT_TRUE(m->OnReplan("cost_model").ok());
  EXPECT_THAT(Exposition(*registry),
              HasSubstr("\nchunkflow_replans_total{reason=\"cost_model\"} 2\n"));
}

// ---------------------------------------------------------------------------
// WorkerMetrics
// ---------------------------------------------------------------------------

TEST(WorkerMetrics, OnOp_BadArguments_InvalidArgumentAndNothingRecorded) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<WorkerMetrics> w = *WorkerMetrics::Create(registry);
  EXPECT_THAT(w->OnOp("fwd", 0, 1), StatusIs(absl::StatusCode::kInvalidArgument,
                                            "unknown op 'fwd'; expected one of 'forward'"));
  EXPECT_THAT(w->OnOp("forward", -1, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "[0, 64), got -1"));
  EXPECT_THAT(w->OnOp("forward", kMaxStages, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "got 64"));
  EXPECT_THAT(w->OnOp("backward", 0, -0.5),
              StatusIs(absl::StatusCode::kInvalidArgument, "'backward' op time"));
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, Not(HasSubstr("chunkflow_op_seconds_count")));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_chunks_total{op=\"forward\"} 0\n"));
}

TEST(WorkerMetrics, OnOp_TwoStages_SeparateSeries) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<WorkerMetrics> w = *WorkerMetrics::Create(registry);
  ASSERT_TRUE(w->OnOp("backward", 0, 0.01).ok());
  ASSERT_TRUE(w->OnOp("backward", 3, 0.02).ok());
  ASSERT_TRUE(w->OnOp("backward", 3, 0.03).ok());
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, HasSubstr("\nchunkflow_op_seconds_count{op=\"backward\",stage=\"0\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_op_seconds_count{op=\"backward\",stage=\"3\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_chunks_total{op=\"backward\"} 3\n"));
}

TEST(WorkerMetrics, SetMemory_PeakIsHighWaterMark) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<WorkerMetrics> w = *WorkerMetrics::Create(registry);
  ASSERT_TRUE(w->SetMemory({100, 50, 10, 0}).ok());
  ASSERT_TRUE(w->SetMemory({10, 5, 1, 0}).ok());  // drops: peak stays at 160
  std::string text = Exposition(*registry);
  EXPECT_THAT(text, HasSubstr("\nchunkflow_memory_peak_bytes 160\n"));
  EXPECT_THAT(text, HasSubstr("\nchunkflow_memory_bytes{kind=\"activations\"} 10\n"));
  ASSERT_TRUE(w->SetMemory({10, 5, 1, 5000}).ok());  // allocator saw more
  EXPECT_THAT(Exposition(*registry), HasSubstr("\nchunkflow_memory_peak_bytes 5000\n"));
}

TEST(WorkerMetrics, SetMemory_Negative_InvalidArgumentAndNothingChanged) {
  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<WorkerMetrics> w = *WorkerMetrics::Create(registry);
  ASSERT_TRUE(w->SetMemory({7, 0, 0, 0}).ok());
  EXPECT_THAT(w->SetMemory({1, -2, 0, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, "state_bytes must be >= 0, got -2"));
  EXPECT_THAT(Exposition(*registry), HasSubstr("\nchunkflow_memory_bytes{kind=\"activations\"} 7\n"));
}

TEST(TimeBuckets, Exponential_1msTo524s) {
  std::vector<double> b = TimeBuckets();
  ASSERT_EQ(b.size(), 20u);
  EXPECT_DOUBLE_EQ(b.front(), 0.001);
  EXPECT_DOUBLE_EQ(b.back(), 524.288);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_DOUBLE_EQ(b[i], 2 * b[i - 1]);
}

}  // namespace
}  // namespace chunkflow::metrics
