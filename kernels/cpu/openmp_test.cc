// The CPU kernels' OpenMP regions run with two threads against one, in one
// process (omp_set_num_threads; the tests' environment says
// OMP_NUM_THREADS=1, see .bazelrc, so nothing else runs them threaded).
// Every element has one writer and sums in a fixed order, so the results
// are bit-identical; sum_of_squares' reduction is the exception (its
// partial sums depend on the split) and is held to 1e-12. Shapes are above
// each kernel's threshold for going parallel.
#include <omp.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::RandomVector;

// run() with 1 thread and with 2, each writing into fresh copies of
// `outputs` (the += contract starts from the same values): equal bit for bit.
void ExpectThreadCountInvariant(
    const std::vector<std::vector<float>>& outputs,
    const std::function<void(std::vector<std::vector<float>>&)>& run) {
  ASSERT_GE(omp_get_num_procs(), 1);
  std::vector<std::vector<float>> one = outputs, two = outputs;
  omp_set_num_threads(1);
  run(one);
  omp_set_num_threads(2);
  run(two);
  omp_set_num_threads(1);
  for (size_t i = 0; i < outputs.size(); ++i) EXPECT_EQ(one[i], two[i]) << "output " << i;
}

constexpr int64_t kT = 64, kC = 512, kV = 1024;

TEST(OpenMp, RmsnormAndLinear_SameWithTwoThreads) {
  const std::vector<float> x = RandomVector(kT * kC, 1), w = RandomVector(kC, 2),
                           dout = RandomVector(kT * kC, 3), lw = RandomVector(kC * kC, 4),
                           bias = RandomVector(kC, 5);
  ExpectThreadCountInvariant(
      {std::vector<float>(kT * kC), std::vector<float>(kT), RandomVector(kT * kC, 6),
       RandomVector(kC, 7)},
      [&](std::vector<std::vector<float>>& o) {
        rmsnorm_forward(o[0].data(), o[1].data(), x.data(), w.data(), kT, kC, 1e-6f);
        rmsnorm_backward(o[2].data(), o[3].data(), dout.data(), x.data(), w.data(), o[1].data(),
                         kT, kC);
      });
  ExpectThreadCountInvariant(
      {std::vector<float>(kT * kC), RandomVector(kT * kC, 8), RandomVector(kC * kC, 9),
       RandomVector(kC, 10)},
      [&](std::vector<std::vector<float>>& o) {
        linear_forward(o[0].data(), x.data(), lw.data(), bias.data(), kT, kC, kC);
        linear_backward(o[1].data(), o[2].data(), o[3].data(), dout.data(), x.data(), lw.data(),
                        kT, kC, kC);
      });
}

TEST(OpenMp, CrossEntropyEmbeddingSwigluRope_SameWithTwoThreads) {
  const std::vector<float> logits = RandomVector(kT * kV, 11, 3.0f), dl = RandomVector(kT, 12);
  std::vector<int32_t> targets(kT), tokens(kT);
  for (int64_t t = 0; t < kT; ++t) {
    targets[t] = t % 7 == 3 ? kIgnoreIndex : static_cast<int32_t>((t * 37) % kV);
    tokens[t] = static_cast<int32_t>((t * 13) % 50);  // repeats: several writers per row
  }
  ExpectThreadCountInvariant(
      {std::vector<float>(kT), RandomVector(kT * kV, 13)},
      [&](std::vector<std::vector<float>>& o) {
        cross_entropy_forward(o[0].data(), logits.data(), targets.data(), kT, kV);
        cross_entropy_backward(o[1].data(), logits.data(), targets.data(), dl.data(), kT, kV);
      });
  const std::vector<float> wte = RandomVector(50 * kC, 14), d = RandomVector(kT * kC, 15),
                           gate = RandomVector(kT * kC, 16), up = RandomVector(kT * kC, 17);
  std::vector<int64_t> pos(kT);
  for (int64_t t = 0; t < kT; ++t) pos[t] = 1000 + 3 * t;
  ExpectThreadCountInvariant(
      {std::vector<float>(kT * kC), RandomVector(50 * kC, 18), std::vector<float>(kT * kC),
       RandomVector(kT * kC, 19), RandomVector(kT * kC, 20), std::vector<float>(kT * kC),
       RandomVector(kT * kC, 21)},
      [&](std::vector<std::vector<float>>& o) {
        embedding_forward(o[0].data(), tokens.data(), wte.data(), kT, kC);
        embedding_backward(o[1].data(), d.data(), tokens.data(), kT, kC);
        swiglu_forward(o[2].data(), gate.data(), up.data(), kT * kC);
        swiglu_backward(o[3].data(), o[4].data(), d.data(), gate.data(), up.data(), kT * kC);
        // 8 heads of 64.
        rope_forward(o[5].data(), d.data(), pos.data(), kT, 8, 64, 10000.0f);
        rope_backward(o[6].data(), d.data(), pos.data(), kT, 8, 64, 10000.0f);
      });
}

// Two segments (one behind a prefix), GQA 4:2, head dim 32.
TEST(OpenMp, Attention_SameWithTwoThreads) {
  constexpr int64_t H = 4, Hk = 2, D = 32, kPrefix = 40, kA = 50, kB = 30;
  const std::vector<float> q = RandomVector((kA + kB) * H * D, 25),
                           ka = RandomVector(kA * Hk * D, 26), va = RandomVector(kA * Hk * D, 27),
                           kb = RandomVector((kPrefix + kB) * Hk * D, 28),
                           vb = RandomVector((kPrefix + kB) * Hk * D, 29),
                           dout = RandomVector((kA + kB) * H * D, 30);
  ExpectThreadCountInvariant(
      {std::vector<float>((kA + kB) * H * D), std::vector<float>((kA + kB) * H),
       RandomVector((kA + kB) * H * D, 31), RandomVector(kA * Hk * D, 32),
       RandomVector(kA * Hk * D, 33), RandomVector((kPrefix + kB) * Hk * D, 34),
       RandomVector((kPrefix + kB) * Hk * D, 35)},
      [&](std::vector<std::vector<float>>& o) {
        const AttentionSegment segs[] = {
            {0, kA, 0, ka.data(), va.data(), o[3].data(), o[4].data()},
            {kA, kB, kPrefix, kb.data(), vb.data(), o[5].data(), o[6].data()}};
        attention_forward(o[0].data(), o[1].data(), q.data(), segs, 2, H, Hk, D);
        attention_backward(o[2].data(), segs, 2, dout.data(), q.data(), o[0].data(), o[1].data(),
                           H, Hk, D);
      });
}

TEST(OpenMp, Optimizer_SameWithTwoThreads) {
  constexpr int64_t kN = 1 << 16;
  const std::vector<float> g = RandomVector(kN, 22);
  AdamWConfig cfg;
  cfg.weight_decay = 0.1f;
  ExpectThreadCountInvariant(
      {RandomVector(kN, 23), std::vector<float>(kN), std::vector<float>(kN), RandomVector(kN, 24)},
      [&](std::vector<std::vector<float>>& o) {
        adamw_update(o[0].data(), g.data(), o[1].data(), o[2].data(), kN, 1, cfg);
        sgd_update(o[3].data(), g.data(), kN, 0.01f);
        scale(o[3].data(), kN, 0.5f);
      });
  omp_set_num_threads(1);
  const double one = sum_of_squares(g.data(), kN);
  omp_set_num_threads(2);
  const double two = sum_of_squares(g.data(), kN);
  omp_set_num_threads(1);
  EXPECT_NEAR(two, one, 1e-12 * one) << "a reduction: the split changes the last bits only";
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
