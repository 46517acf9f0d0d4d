// The decoder shape of a Qwen2 or Llama model, read from and written to the
// Hugging Face config.json that transformers' AutoConfig understands.
//
//   absl::StatusOr<ModelConfig> c = LoadHfConfig("/models/Qwen2.5-0.5B");  // dir or file
//   if (!c.ok()) return c.status();
//   int64_t q_cols = c->hidden_size, kv_rows = c->kv_dim();   // 896, 128
//
//   ModelConfig tiny = TinyQwen2Config();
//   std::string json = ToHfConfigJson(tiny);  // save beside model.safetensors
//
// Only what the engine implements is accepted: SiLU MLPs, plain RoPE (no
// rope_scaling), full attention (no sliding window), head_dim = hidden_size /
// num_attention_heads, no MLP bias, and q/k/v bias exactly for Qwen2.
// Anything else is an INVALID_ARGUMENT naming the field, not a silently wrong
// model.

#ifndef CHUNKFLOW_WORKER_ENGINE_MODEL_CONFIG_H_
#define CHUNKFLOW_WORKER_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace chunkflow::engine {

enum class Architecture { kQwen2, kLlama };

// "qwen2" / "llama", the HF model_type.
const char* ArchitectureName(Architecture arch);

struct ModelConfig {
  Architecture arch = Architecture::kQwen2;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t num_hidden_layers = 0;
  int64_t vocab_size = 0;
  // When config.json omits it: 32768 for Qwen2, 2048 for Llama (HF defaults).
  int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  // q/k/v projections have a bias: always true for Qwen2, and false for Llama
  // (HF Llama's attention_bias would also bias o_proj; not supported).
  bool attention_bias = false;
  // lm_head shares embed_tokens' weight (HF default false for both).
  bool tie_word_embeddings = false;
  // The parsed config.json as it was (a JSON object), empty for a config
  // made in code: the fields this struct does not model (bos/eos/pad token
  // ids, transformers_version, ...) that ToHfConfigJson writes back, so a
  // fine-tuned checkpoint generates with its base model's special tokens.
  std::string source_json;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim(); }
};

// Parses config.json text. `source` (a path) prefixes every message.
// Errors (all INVALID_ARGUMENT): bad JSON; an architecture that is neither
// Qwen2 nor Llama (from "architectures"[0], else "model_type"); a required
// field missing or null (hidden_size, intermediate_size, num_attention_heads,
// num_hidden_layers, vocab_size); a field of the wrong JSON type; hidden_act
// other than "silu"; a "head_dim" other than hidden_size/num_attention_heads;
// a non-null "rope_scaling"; "rope_parameters" (transformers >= 5) with
// anything but "rope_theta" and "rope_type": "default", or a rope_theta that
// disagrees with the top-level one; a "layer_types" entry other than
// "full_attention"; Qwen2 "use_sliding_window": true; Llama "mlp_bias" or
// "attention_bias": true; anything ValidateModelConfig rejects. Absent (or
// null) optional fields take HF's defaults; num_key_value_heads defaults to
// num_attention_heads (Llama's rule; HF's Qwen2Config would take 32, its 7B
// shape). Unknown fields do not change the model; they are kept in
// source_json and written back by ToHfConfigJson.
absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text, std::string_view source);

// Reads `path`, a config.json file or a directory holding one.
// Errors: NOT_FOUND if there is no such file; INTERNAL on a read error;
// otherwise as ParseHfConfig.
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path);

// Pretty (2-space, sorted keys) config.json that AutoConfig and
// AutoModelForCausalLM load as the same model, with torch_dtype "float32".
// It uses the transformers 4.x spelling (top-level rope_theta, rope_scaling
// null), which transformers 5 also reads.
std::string ToHfConfigJson(const ModelConfig& c);

// INVALID_ARGUMENT naming the field and value when: a size is < 1;
// hidden_size is not divisible by num_attention_heads, or num_attention_heads
// by num_key_value_heads; head_dim is odd (RoPE rotates pairs); rms_norm_eps
// or rope_theta is not > 0; attention_bias is not true for Qwen2 / false for
// Llama.
absl::Status ValidateModelConfig(const ModelConfig& c);

// ---------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------

// hidden 64, intermediate 176, 4 heads, 2 kv heads, 2 layers, vocab 256,
// rope_theta 1e6, eps 1e-6, tied embeddings, max positions 2048.
ModelConfig TinyQwen2Config();
// hidden 64, intermediate 176, 4 heads, 2 kv heads, 2 layers, vocab 256,
// rope_theta 10000, eps 1e-5, untied, max positions 2048.
ModelConfig TinyLlamaConfig();
// Qwen/Qwen2.5-0.5B: hidden 896, intermediate 4864, 14 heads, 2 kv heads,
// 24 layers, vocab 151936, rope_theta 1e6, eps 1e-6, tied.
ModelConfig Qwen25_0_5BConfig();

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_MODEL_CONFIG_H_
