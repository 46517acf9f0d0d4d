// Grouped-query causal attention over packed varlen sequences, each query
// attending to its own sequence's earlier tokens, including the tokens of
// earlier chunks whose K/V the caller keeps in a state store.
//
// Gradient contract: every gradient output is accumulated (+=): dq, and the
// dk/dv of each segment. Forward outputs (out, lse) are overwritten (=).
//
// A chunk of T tokens is cut into segments, one per packed piece. Segment s
// covers query rows [q_begin, q_begin + length) of q/out; its first query sits
// at position `offset` of its sequence, and its keys/values are the
// sequence's positions [0, offset + length), stored from position 0 in k/v.
// Query at position p attends to keys [0, p]: causal within the sequence,
// never across segments (the block-diagonal mask of packing). Query head h
// reads kv head h / (n_heads / n_kv_heads) (GQA). Scale is 1/sqrt(head_dim),
// the softmax runs in fp32 with its log-sum-exp kept for the backward
// (flash-attention style: the backward recomputes probabilities from lse).
//
//   AttentionSegment seg{/*q_begin=*/0, /*length=*/T, /*offset=*/prefix,
//                        k_state, v_state, dk_state, dv_state};
//   attention_forward(out, lse, q, &seg, 1, H, Hkv, D);
//   attention_backward(dq, &seg, 1, dout, q, out, lse, H, Hkv, D);
//
// Work is split with OpenMP: the forward over (segment, head, query block),
// the backward over (segment, kv head) so dk/dv have one writer each. Inside a
// task the score tiles are GEMMs (OpenBLAS, single-threaded in the region).

#ifndef CHUNKFLOW_KERNELS_CPU_ATTENTION_H_
#define CHUNKFLOW_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

struct AttentionSegment {
  int64_t q_begin = 0;  // first row of this segment in q/out/dq
  int64_t length = 0;   // query rows
  int64_t offset = 0;   // sequence position of the first query
  const float* k = nullptr;  // (offset + length, n_kv_heads, head_dim)
  const float* v = nullptr;  // (offset + length, n_kv_heads, head_dim)
  float* dk = nullptr;       // (offset + length, n_kv_heads, head_dim) +=, backward only
  float* dv = nullptr;       // (offset + length, n_kv_heads, head_dim) +=, backward only
};

void attention_forward(float* out /*(T,n_heads,head_dim)*/, float* lse /*(T,n_heads)*/,
                       const float* q /*(T,n_heads,head_dim)*/, const AttentionSegment* segs,
                       int64_t n_segs, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

// Segments must not share dk/dv rows (one piece per sequence in a chunk).
void attention_backward(float* dq /*(T,n_heads,head_dim) +=*/, const AttentionSegment* segs,
                        int64_t n_segs, const float* dout /*(T,n_heads,head_dim)*/,
                        const float* q /*(T,n_heads,head_dim)*/,
                        const float* out /*(T,n_heads,head_dim)*/, const float* lse /*(T,n_heads)*/,
                        int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_ATTENTION_H_
