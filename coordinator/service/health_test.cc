// The coordinator answers grpc.health.v1.Health/Check, which Kubernetes'
// gRPC probes call (deploy/k8s/coordinator.yaml). Debian ships no
// health.proto, so the messages are written as wire bytes here: a
// HealthCheckRequest is field 1 (service, a string), a HealthCheckResponse
// field 1 (status, an enum: SERVING = 1).

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/synchronization/notification.h"
#include "coordinator/service/service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace chunkflow::coordinator {
namespace {

struct CheckResult {
  grpc::Status status;
  std::string response;  // the serialized HealthCheckResponse
};

CheckResult Check(int port, const std::string& service) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);  // field 1, length-delimited
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  CheckResult result;
  absl::Notification done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&](grpc::Status s) {
                   result.status = s;
                   done.Notify();
                 });
  done.WaitForNotification();
  if (result.status.ok()) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(resp.Dump(&slices).ok());
    for (const grpc::Slice& s : slices) {
      result.response.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return result;
}

TEST(CoordinatorHealth, ServingWhileUp_UnknownServiceNotFound) {
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/health";
  std::filesystem::remove_all(dir);
  ServerOptions o;
  o.db_dir = dir + "/db";
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  CheckResult whole = Check(port, "");
  ASSERT_TRUE(whole.status.ok()) << whole.status.error_code() << " "
                                 << whole.status.error_message();
  EXPECT_EQ(whole.response, std::string("\x08\x01", 2)) << "want status SERVING (1)";

  CheckResult unknown = Check(port, "no.such.Service");
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::NOT_FOUND)
      << unknown.status.error_message();

  (*server)->Shutdown(absl::ZeroDuration());
  CheckResult after = Check(port, "");
  EXPECT_FALSE(after.status.ok()) << "a stopped coordinator must not look healthy";
}

}  // namespace
}  // namespace chunkflow::coordinator
