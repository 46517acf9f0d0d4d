// The real kernels/cuda/linear.cc on a machine without a GPU: its cuBLAS and
// cuBLASLt calls go to cublas_emulation.cc (which refuses what the libraries
// would: wrong attribute sizes, layouts that disagree, an algorithm used
// with a less aligned pointer than it was picked for) and its helper
// kernels to the host emulation. Checked against the CPU linear op
// (kernels/cpu/linear.h): the fp32 path (cublasSgemm), the bf16 path on
// cuBLASLt and on the cublasGemmEx fallback, then the plan cache: one
// heuristic call per shape and alignment, "no algorithm" remembered and run
// on cublasGemmEx, a transient failure retried, the cache bounded, the
// workspace handed through. The emulation computes in double, so the
// tolerances are the fp32 CPU op's rounding (1e-6).

#include <cublasLt.h>
#include <cublas_api.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/test_util.h"
#include "kernels/cuda/cublas_emulation.h"
#include "kernels/cuda/linear.h"

namespace chunkflow::kernels::cuda {
namespace {

using cpu::testing::RandomVector;
using cpu::testing::RelativeError;
namespace emu = cublas_emulation;

constexpr double kTol = 1e-6;

// Values rounded to bf16, and their bf16 copy.
struct Bf16Values {
  Bf16Values(int64_t n, uint64_t seed, float scale = 1.0f) : wide(RandomVector(n, seed, scale)) {
    for (float& v : wide) {
      narrow.push_back(__float2bfloat16_rn(v));
      v = __bfloat162float(narrow.back());
    }
  }
  std::vector<float> wide;
  std::vector<__nv_bfloat16> narrow;
};

// 256-byte aligned device-side ("host emulated") workspace.
struct Workspace {
  explicit Workspace(size_t bytes) : raw(bytes + 256) {
    const auto p = reinterpret_cast<uintptr_t>(raw.data());
    ptr = raw.data() + (256 - p % 256) % 256;
  }
  std::vector<uint8_t> raw;
  uint8_t* ptr;
};

CublasHandle Handle(GemmBackend backend, Workspace* ws) {
  CublasOptions o;
  o.bf16 = backend;
  if (ws != nullptr) {
    o.workspace = ws->ptr;
    o.workspace_bytes = ws->raw.size() - 256;
  }
  absl::StatusOr<CublasHandle> h = CublasHandle::Create(nullptr, o);
  EXPECT_TRUE(h.ok()) << h.status();
  return std::move(*h);
}

class LinearEmulated : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("CHUNKFLOW_BF16_GEMM");
    emu::Reset();
  }
};

TEST_F(LinearEmulated, Fp32_MatchesCpu) {
  const int64_t T = 13, IC = 24, OC = 40;
  CublasHandle h = Handle(GemmBackend::kLt, nullptr);
  const std::vector<float> x = RandomVector(T * IC, 1), w = RandomVector(OC * IC, 2),
                           b = RandomVector(OC, 3), dy = RandomVector(T * OC, 4);
  std::vector<float> y(T * OC, -1.0f), want(T * OC);
  ASSERT_TRUE(linear_forward(y.data(), x.data(), w.data(), b.data(), T, IC, OC, h).ok());
  cpu::linear_forward(want.data(), x.data(), w.data(), b.data(), T, IC, OC);
  EXPECT_LT(RelativeError(y.data(), want.data(), T * OC), kTol);

  std::vector<float> dx = RandomVector(T * IC, 5), dw = RandomVector(OC * IC, 6),
                     db = RandomVector(OC, 7);
  std::vector<float> wdx = dx, wdw = dw, wdb = db;
  ASSERT_TRUE(linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), T,
                              IC, OC, h)
                  .ok());
  cpu::linear_backward(wdx.data(), wdw.data(), wdb.data(), dy.data(), x.data(), w.data(), T, IC,
                       OC);
  EXPECT_LT(RelativeError(dx.data(), wdx.data(), T * IC), kTol);
  EXPECT_LT(RelativeError(dw.data(), wdw.data(), OC * IC), kTol);
  EXPECT_LT(RelativeError(db.data(), wdb.data(), OC), kTol);
  EXPECT_EQ(emu::Get().sgemm_calls, 3);
  EXPECT_EQ(emu::Get().lt_matmuls, 0);
}

// Forward (bias), backward (dx, dW, db accumulated) on bf16 inputs against
// the CPU op on the same rounded values.
void ExpectBf16MatchesCpu(const CublasHandle& h, int64_t T, int64_t IC, int64_t OC) {
  const Bf16Values x(T * IC, 11), w(OC * IC, 12, 0.1f), dy(T * OC, 13);
  const std::vector<float> b = RandomVector(OC, 14);
  std::vector<float> y(T * OC, -1.0f), want(T * OC);
  absl::Status s = linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), b.data(), T,
                                       IC, OC, h);
  ASSERT_TRUE(s.ok()) << s;
  cpu::linear_forward(want.data(), x.wide.data(), w.wide.data(), b.data(), T, IC, OC);
  EXPECT_LT(RelativeError(y.data(), want.data(), T * OC), kTol) << T << "x" << IC << "->" << OC;

  std::vector<float> dx = RandomVector(T * IC, 15), dw = RandomVector(OC * IC, 16),
                     db = RandomVector(OC, 17);
  std::vector<float> wdx = dx, wdw = dw, wdb = db;
  s = linear_backward_bf16(dx.data(), dw.data(), db.data(), dy.narrow.data(), x.narrow.data(),
                           w.narrow.data(), T, IC, OC, h);
  ASSERT_TRUE(s.ok()) << s;
  cpu::linear_backward(wdx.data(), wdw.data(), wdb.data(), dy.wide.data(), x.wide.data(),
                       w.wide.data(), T, IC, OC);
  EXPECT_LT(RelativeError(dx.data(), wdx.data(), T * IC), kTol);
  EXPECT_LT(RelativeError(dw.data(), wdw.data(), OC * IC), kTol);
  EXPECT_LT(RelativeError(db.data(), wdb.data(), OC), kTol);
}

TEST_F(LinearEmulated, Bf16OnCublasLt_MatchesCpuAndUsesTheWorkspace) {
  Workspace ws(1 << 20);
  CublasHandle h = Handle(GemmBackend::kLt, &ws);
  ASSERT_EQ(h.bf16_backend(), GemmBackend::kLt);
  EXPECT_EQ(emu::Get().legacy_workspace, ws.ptr);
  ExpectBf16MatchesCpu(h, 13, 24, 40);
  EXPECT_EQ(emu::Get().lt_matmuls, 3);  // forward, dx, dW
  EXPECT_EQ(emu::Get().gemm_ex_calls, 0);
  EXPECT_EQ(emu::Get().last_workspace, ws.ptr);
  EXPECT_EQ(emu::Get().last_workspace_bytes, size_t{1} << 20);
}

TEST_F(LinearEmulated, Bf16OnGemmEx_MatchesCpu) {
  CublasHandle h = Handle(GemmBackend::kGemmEx, nullptr);
  ASSERT_EQ(h.bf16_backend(), GemmBackend::kGemmEx);
  ExpectBf16MatchesCpu(h, 13, 24, 40);
  EXPECT_EQ(emu::Get().gemm_ex_calls, 3);
  EXPECT_EQ(emu::Get().lt_matmuls, 0);
  EXPECT_EQ(emu::Get().heuristic_calls, 0);
}

TEST_F(LinearEmulated, EnvironmentForcesGemmEx) {
  setenv("CHUNKFLOW_BF16_GEMM", "gemmex", 1);
  CublasHandle h = Handle(GemmBackend::kLt, nullptr);
  unsetenv("CHUNKFLOW_BF16_GEMM");
  EXPECT_EQ(h.bf16_backend(), GemmBackend::kGemmEx);
}

// Pointers offset into a buffer (a head tile's rows, say) are less aligned:
// the plan is picked for their alignment, and each alignment gets its own.
TEST_F(LinearEmulated, OffsetPointers_PlansPerAlignment) {
  Workspace ws(1 << 16);
  CublasHandle h = Handle(GemmBackend::kLt, &ws);
  const int64_t T = 6, IC = 8, OC = 16;
  const Bf16Values x(T * IC + 1, 21), w(OC * IC, 22);
  std::vector<float> y(T * OC + 1);
  for (int64_t off : {0, 1, 0}) {
    // x shifted by one bf16 element (2 bytes), y by one float, then back.
    std::vector<float> xs(x.wide.begin() + off, x.wide.begin() + off + T * IC);
    std::vector<float> ref(T * OC);
    cpu::linear_forward(ref.data(), xs.data(), w.wide.data(), nullptr, T, IC, OC);
    absl::Status s = linear_forward_bf16(y.data() + off, x.narrow.data() + off, w.narrow.data(),
                                         nullptr, T, IC, OC, h);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_LT(RelativeError(y.data() + off, ref.data(), T * OC), kTol) << off;
  }
  EXPECT_EQ(emu::Get().heuristic_calls, 2);  // the third call reuses the first plan
  EXPECT_EQ(emu::Get().lt_matmuls, 3);
}

// The same buffers (so the same alignments) again: the plans are reused.
TEST_F(LinearEmulated, PlanCache_OneHeuristicPerShape) {
  CublasHandle h = Handle(GemmBackend::kLt, nullptr);
  const int64_t IC = 16, OC = 24;
  const Bf16Values x(10 * IC, 51), w(OC * IC, 52), dy(10 * OC, 53);
  std::vector<float> y(10 * OC), dx(10 * IC), dw(OC * IC);
  auto step = [&](int64_t T) {
    ASSERT_TRUE(
        linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, T, IC, OC, h)
            .ok());
    ASSERT_TRUE(linear_backward_bf16(dx.data(), dw.data(), nullptr, dy.narrow.data(),
                                     x.narrow.data(), w.narrow.data(), T, IC, OC, h)
                    .ok());
  };
  for (int i = 0; i < 3; ++i) step(9);
  EXPECT_EQ(emu::Get().heuristic_calls, 3);  // forward, dx, dW shapes once each
  EXPECT_EQ(emu::Get().lt_matmuls, 9);
  step(10);  // new T: three new shapes
  EXPECT_EQ(emu::Get().heuristic_calls, 6);
}

// cuBLASLt with no algorithm for a shape: cublasGemmEx runs it, and the
// answer is kept (no second heuristic call). A transient failure is not.
TEST_F(LinearEmulated, NoAlgorithm_FallsBackAndIsRemembered_TransientIsRetried) {
  CublasHandle h = Handle(GemmBackend::kLt, nullptr);
  const int64_t T = 5, IC = 8, OC = 24;  // the forward's C has OC rows
  emu::FailHeuristic(OC, CUBLAS_STATUS_NOT_SUPPORTED);
  const Bf16Values x(T * IC, 31), w(OC * IC, 32);
  std::vector<float> y(T * OC), want(T * OC);
  cpu::linear_forward(want.data(), x.wide.data(), w.wide.data(), nullptr, T, IC, OC);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, T, IC, OC, h)
            .ok());
    EXPECT_LT(RelativeError(y.data(), want.data(), T * OC), kTol);
  }
  EXPECT_EQ(emu::Get().heuristic_calls, 1);
  EXPECT_EQ(emu::Get().gemm_ex_calls, 2);
  EXPECT_EQ(emu::Get().lt_matmuls, 0);

  emu::Reset();
  const int64_t OC2 = 32;
  emu::FailHeuristic(OC2, CUBLAS_STATUS_ALLOC_FAILED, /*once=*/true);
  const Bf16Values w2(OC2 * IC, 33);
  std::vector<float> y2(T * OC2), want2(T * OC2);
  cpu::linear_forward(want2.data(), x.wide.data(), w2.wide.data(), nullptr, T, IC, OC2);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(
        linear_forward_bf16(y2.data(), x.narrow.data(), w2.narrow.data(), nullptr, T, IC, OC2, h)
            .ok());
    EXPECT_LT(RelativeError(y2.data(), want2.data(), T * OC2), kTol);
  }
  EXPECT_EQ(emu::Get().heuristic_calls, 2);  // failed, then asked again
  EXPECT_EQ(emu::Get().gemm_ex_calls, 1);
  EXPECT_EQ(emu::Get().lt_matmuls, 1);
}

// Past the cache's bound the plans start over; every descriptor is
// destroyed with the handle.
TEST_F(LinearEmulated, PlanCache_BoundedAndReleased) {
  const int64_t base = emu::Get().live_descriptors;
  {
    CublasHandle h = Handle(GemmBackend::kLt, nullptr);
    const int64_t IC = 4, OC = 8;
    const Bf16Values x(1100 * IC, 41), w(OC * IC, 42);
    std::vector<float> y(1100 * OC);
    for (int64_t T = 1; T <= 1025; ++T) {
      ASSERT_TRUE(
          linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, T, IC, OC, h)
              .ok());
    }
    EXPECT_EQ(emu::Get().heuristic_calls, 1025);
    EXPECT_LE(emu::Get().live_descriptors - base, 4 * 1024);
    // T = 1 was dropped when the cache started over at the 1025th shape.
    ASSERT_TRUE(
        linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, 1, IC, OC, h)
            .ok());
    EXPECT_EQ(emu::Get().heuristic_calls, 1026);
    // T = 1025 was kept.
    ASSERT_TRUE(
        linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, 1025, IC, OC, h)
            .ok());
    EXPECT_EQ(emu::Get().heuristic_calls, 1026);
  }
  EXPECT_EQ(emu::Get().live_descriptors, base);
}

// The emulation's own refusals, called directly: what the libraries would
// refuse must not pass here either, or the tests above prove little.
TEST_F(LinearEmulated, Emulation_RefusesWhatCublasLtWould) {
  cublasLtHandle_t lt = nullptr;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
            CUBLAS_STATUS_SUCCESS);
  const int64_t wide_op = CUBLAS_OP_T;  // the attribute is an int32_t
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &wide_op,
                                           sizeof(wide_op)),
            CUBLAS_STATUS_INVALID_VALUE);
  const int32_t op_t = CUBLAS_OP_T;
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)),
            CUBLAS_STATUS_SUCCESS);
  // C (8 x 4) = A^T B with A stored 16 x 8 and B 16 x 4.
  const int64_t m = 8, n = 4, k = 16;
  cublasLtMatrixLayout_t a = nullptr, a_swapped = nullptr, b = nullptr, c = nullptr,
                         c_bf16 = nullptr, c_other_ld = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, k, m, k), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&a_swapped, CUDA_R_16BF, m, k, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, k, n, k), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&c, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&c_bf16, CUDA_R_16BF, m, n, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&c_other_ld, CUDA_R_32F, m, n, m + 8),
            CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulPreference_t pref = nullptr;
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
  const uint32_t narrow_ws = 1 << 16;  // the attribute is a uint64_t
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &narrow_ws, sizeof(narrow_ws)),
            CUBLAS_STATUS_INVALID_VALUE);
  const uint64_t ws_bytes = 1 << 16;
  ASSERT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &ws_bytes, sizeof(ws_bytes)),
            CUBLAS_STATUS_SUCCESS);
  const uint64_t wide_align = 256;  // the alignments are uint32_t
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                 &wide_align, sizeof(wide_align)),
            CUBLAS_STATUS_INVALID_VALUE);

  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(lt, desc, a_swapped, b, c, c, pref, 1, &r, &found),
            CUBLAS_STATUS_INVALID_VALUE);  // A's layout disagrees with C and B
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c_bf16, c_bf16, pref, 1, &r, &found),
            CUBLAS_STATUS_NOT_SUPPORTED);  // bf16 output
  ASSERT_EQ(cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c, c, pref, 1, &r, &found),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(found, 1);
  ASSERT_GT(r.workspaceSize, 0u);

  // Buffers 256-byte aligned (the preference's default claim).
  Workspace a_buf(2 * k * m + 256), b_buf(2 * k * n), c_buf(4 * m * (n + 2)), ws(1 << 16);
  const float one = 1.0f, zero = 0.0f;
  auto matmul = [&](const void* a_ptr, cublasLtMatrixLayout_t d_layout, void* w, size_t w_bytes) {
    return cublasLtMatmul(lt, desc, &one, a_ptr, a, b_buf.ptr, b, &zero, c_buf.ptr, c, c_buf.ptr,
                          d_layout, &r.algo, w, w_bytes, nullptr);
  };
  EXPECT_EQ(matmul(a_buf.ptr, c, ws.ptr, 1 << 16), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(matmul(a_buf.ptr + 2, c, ws.ptr, 1 << 16), CUBLAS_STATUS_INVALID_VALUE);  // alignment
  EXPECT_EQ(matmul(a_buf.ptr, c, ws.ptr, r.workspaceSize - 1), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(matmul(a_buf.ptr, c, ws.ptr + 8, 1 << 16), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(matmul(a_buf.ptr, c_other_ld, ws.ptr, 1 << 16), CUBLAS_STATUS_INVALID_VALUE);
  // The algorithm was picked for A^T: not for A.
  const int32_t op_n = CUBLAS_OP_N;
  cublasLtMatrixLayout_t a_n = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&a_n, CUDA_R_16BF, m, k, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_n, sizeof(op_n)),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasLtMatmul(lt, desc, &one, a_buf.ptr, a_n, b_buf.ptr, b, &zero, c_buf.ptr, c,
                           c_buf.ptr, c, &r.algo, ws.ptr, 1 << 16, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);

  for (cublasLtMatrixLayout_t l : {a, a_swapped, b, c, c_bf16, c_other_ld, a_n}) {
    cublasLtMatrixLayoutDestroy(l);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(lt);
}

// cuBLASLt refusing a call (here: layouts the emulation finds inconsistent,
// as for a bug in linear.cc) fails the GEMM naming it; no fallback hides it.
TEST_F(LinearEmulated, RefusedHeuristic_FailsTheGemm) {
  CublasHandle h = Handle(GemmBackend::kLt, nullptr);
  const int64_t T = 3, IC = 8, OC = 16;
  emu::FailHeuristic(OC, CUBLAS_STATUS_INVALID_VALUE);
  const Bf16Values x(T * IC, 61), w(OC * IC, 62);
  std::vector<float> y(T * OC);
  absl::Status s =
      linear_forward_bf16(y.data(), x.narrow.data(), w.narrow.data(), nullptr, T, IC, OC, h);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("linear_forward_bf16 gemm"), std::string::npos) << s;
  EXPECT_NE(s.message().find("cublasLtMatmulAlgoGetHeuristic"), std::string::npos) << s;
  EXPECT_EQ(emu::Get().gemm_ex_calls, 0);
}

TEST_F(LinearEmulated, MisalignedWorkspace_IsRefused) {
  Workspace ws(4096);
  CublasOptions o;
  o.workspace = ws.ptr + 8;
  o.workspace_bytes = 1024;
  absl::StatusOr<CublasHandle> h = CublasHandle::Create(nullptr, o);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
}

}  // namespace
}  // namespace chunkflow::kernels::cuda
