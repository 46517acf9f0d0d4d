#include "worker/engine/torch_step_args.h"

#include "absl/strings/str_cat.h"
#include "tools/bench/bench_util.h"

namespace chunkflow::engine {

std::string TorchStepModelArgs(const ModelConfig& c) {
  using bench::Num;
  return absl::StrCat(" --layers=", c.num_hidden_layers, " --hidden=", c.hidden_size,
                      " --intermediate=", c.intermediate_size, " --heads=", c.num_attention_heads,
                      " --kv_heads=", c.num_key_value_heads, " --vocab=", c.vocab_size,
                      " --rope_theta=", Num(c.rope_theta), " --eps=1e-6");
}

TorchStepResult ParseTorchStepResult(const std::string& line) {
  TorchStepResult r;
  r.seconds = bench::JsonNumber(line, "step_seconds_median").value_or(0);
  r.tokens = static_cast<int64_t>(bench::JsonNumber(line, "tokens").value_or(0));
  r.loss = bench::JsonNumber(line, "loss").value_or(0);
  r.torch_version = bench::JsonStringValue(line, "torch_version");
  r.attention = bench::JsonStringValue(line, "attention");
  return r;
}

}  // namespace chunkflow::engine
