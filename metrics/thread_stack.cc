// A floor under the stack size of threads that ask for a small one.
//
// Why by hand: civetweb (Debian's 1.15, the /metrics server under
// prometheus-cpp) starts its threads with a fixed 100 KiB stack, and glibc
// carves every loaded library's static TLS out of a thread's stack. OpenBLAS
// alone takes 60 KiB of static TLS; with the CUDA runtime and NCCL linked
// (the worker's CUDA engine) about 78 KiB are gone, and civetweb's threads
// overflow the rest (SIGSEGV inside pthread_cond_wait under a Prometheus
// scrape); with cuBLASLt's 92 KiB pthread_create fails outright. Neither
// civetweb's options nor prometheus-cpp's let a user set the size, so this
// definition interposes pthread_attr_setstacksize for the whole process
// (the executable and its libraries resolve it here before libc) and raises
// requests below kMinStack to kMinStack; larger requests pass unchanged.

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>

#include <cstddef>

namespace {

constexpr size_t kMinStack = size_t{1} << 20;  // 1 MiB, plus the TLS glibc takes from it

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize Real() {
  static const SetStackSize real =
      reinterpret_cast<SetStackSize>(::dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  const SetStackSize real = Real();
  if (real == nullptr) return ENOSYS;  // no libc to forward to (a fully static link)
  return real(attr, size < kMinStack ? kMinStack : size);
}
