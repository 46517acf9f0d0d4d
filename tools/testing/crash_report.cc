// Every test binary prints the signal and a stack trace when it crashes.
//
// Without this, a test that dies of SIGSEGV or SIGABRT from a thread leaves a
// log that simply stops ("[ RUN ] ..." and nothing else), as a CI run of
// cluster_test once did. Abseil's failure signal handler writes the signal
// and every frame it can symbolize to stderr, then re-raises the signal, so
// the exit status and Bazel's verdict are unchanged. It also covers SIGTERM,
// which Bazel sends when a test runs past its timeout: the log then shows
// where the main thread was.

#include "absl/debugging/failure_signal_handler.h"
#include "absl/debugging/symbolize.h"

namespace {

const bool kInstalled = [] {
  absl::InitializeSymbolizer("/proc/self/exe");
  absl::FailureSignalHandlerOptions options;
  options.call_previous_handler = true;  // a sanitizer's report still follows
  absl::InstallFailureSignalHandler(options);
  return true;
}();

}  // namespace
