#!/usr/bin/env python3
"""PyTorch eager baseline of engine_bench: one training step of a Qwen2-style decoder.

The same model shape, the same tokens (generated from the same seed by the same
splitmix64 stream as worker/engine/engine_bench.cc) and the same thread count as
the ChunkFlow engine run beside it. Weights are random (normal, std 0.02; norm
weights 1, biases 0) like Engine::InitRandom, but not bit-identical: the step's
cost does not depend on them.

One step = for each sequence, a batch-1 forward and backward (no padding, no
packing; the loss is the sum over the sequence's targets divided by the targets
of the whole batch, so the accumulated gradient is that of the batch mean),
then clip_grad_norm_(1.0) and one AdamW update: the same work as
Engine::TrainStep. Attention is Hugging Face's eager path (q k^T, causal mask,
fp32 softmax, p v) on torch < 2; on torch >= 2 it is
F.scaled_dot_product_attention(is_causal=True), and the output says which.

Warm-up steps are run and not timed, then --steps steps are timed; one JSON
line goes to stdout:
  {"torch_version", "threads", "tokens", "step_seconds_median", "tokens_per_s",
   "peak_rss_mib", "attention", "loss", "token_checksum", "step_seconds"}

  python3 tools/bench/torch_step.py --lengths=4096,1024,512 --threads=2
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

MASK64 = (1 << 64) - 1


def splitmix64(state):
    """One step of splitmix64: (new_state, output). Mirrors engine_bench.cc."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def make_tokens(lengths, vocab, seed):
    """Token ids of every sequence, one splitmix64 stream over all of them in order."""
    state = seed & MASK64
    out = []
    for n in lengths:
        seq = []
        for _ in range(n):
            state, z = splitmix64(state)
            seq.append((z >> 32) % vocab)
        out.append(seq)
    return out


def has_sdpa():
    return hasattr(F, "scaled_dot_product_attention")


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x * rstd)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(length, head_dim, theta, device="cpu"):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=device) / head_dim))
    pos = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


class Attention(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.h, self.hk, self.d = a.heads, a.kv_heads, a.hidden // a.heads
        self.q_proj = torch.nn.Linear(a.hidden, self.h * self.d, bias=True)
        self.k_proj = torch.nn.Linear(a.hidden, self.hk * self.d, bias=True)
        self.v_proj = torch.nn.Linear(a.hidden, self.hk * self.d, bias=True)
        self.o_proj = torch.nn.Linear(self.h * self.d, a.hidden, bias=False)

    def forward(self, x, cos, sin, mask):
        t = x.shape[1]
        q = self.q_proj(x).view(1, t, self.h, self.d).transpose(1, 2)  # (1, H, T, D)
        k = self.k_proj(x).view(1, t, self.hk, self.d).transpose(1, 2)  # (1, Hk, T, D)
        v = self.v_proj(x).view(1, t, self.hk, self.d).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # bf16 under autocast (as HF)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.hk  # GQA: HF's repeat_kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.d) + mask
            p = torch.softmax(s, dim=-1, dtype=torch.float32)
            o = torch.matmul(p, v)
        o = o.transpose(1, 2).reshape(1, t, self.h * self.d)
        return self.o_proj(o)


class Block(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.input_layernorm = RMSNorm(a.hidden, a.eps)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a.hidden, a.eps)
        self.gate_proj = torch.nn.Linear(a.hidden, a.intermediate, bias=False)
        self.up_proj = torch.nn.Linear(a.hidden, a.intermediate, bias=False)
        self.down_proj = torch.nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Qwen2(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(a.vocab, a.hidden)
        self.layers = torch.nn.ModuleList([Block(a) for _ in range(a.layers)])
        self.norm = RMSNorm(a.hidden, a.eps)
        self.lm_head = torch.nn.Linear(a.hidden, a.vocab, bias=False)
        if a.tied:  # Qwen2-0.5B ties the head to the embedding
            self.lm_head.weight = self.embed_tokens.weight
        self.head_dim, self.theta = a.hidden // a.heads, a.rope_theta
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "norm" not in name:
                    p.normal_(0.0, 0.02)

    def forward(self, ids, use_sdpa):
        t = ids.shape[1]
        cos, sin = rope_cos_sin(t, self.head_dim, self.theta, ids.device)
        mask = None
        if not use_sdpa:
            mask = torch.full((t, t), float("-inf"), device=ids.device).triu(1)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))  # (1, T, V)


# ---------------------------------------------------------------------------
# Step and timing
# ---------------------------------------------------------------------------


def train_step(model, opt, batch, targets, use_sdpa, bf16):
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for ids in batch:
        # Every position is forwarded (as in the engine); the last has no target.
        # --bf16: autocast (bf16 GEMMs and attention, fp32 master weights and
        # optimizer state, the loss in fp32), the CUDA engine's precision.
        with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids, use_sdpa)
        # Sum over this sequence's targets; / targets of the batch = batch mean.
        loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum") / targets
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return total


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", required=True, help="comma-separated sequence lengths")
    ap.add_argument("--seed", type=int, default=1, help="token stream seed (as engine_bench)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rope_theta", type=float, default=1e6)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (GPU runs)")
    ap.add_argument("--tied", action="store_true", help="tie the LM head to the embedding")
    a = ap.parse_args()
    device = torch.device(a.device)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    lengths = [int(x) for x in a.lengths.split(",") if x]
    seqs = make_tokens(lengths, a.vocab, a.seed)
    batch = [torch.tensor(s, dtype=torch.long, device=device).view(1, -1) for s in seqs]
    targets = sum(len(s) - 1 for s in seqs)
    use_sdpa = has_sdpa()

    model = Qwen2(a).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    for i in range(a.warmup):
        train_step(model, opt, batch, targets, use_sdpa, a.bf16)
        sync(device)
        print(f"torch_step: warm-up {i + 1}/{a.warmup} done", file=sys.stderr, flush=True)
    times, loss = [], 0.0
    for i in range(a.steps):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        loss = train_step(model, opt, batch, targets, use_sdpa, a.bf16)
        sync(device)
        times.append(time.perf_counter() - t0)
        print(f"torch_step: step {i + 1}/{a.steps} {times[-1]:.3f} s", file=sys.stderr, flush=True)
    med = statistics.median(times) if times else float("nan")
    tokens = sum(lengths)
    print(json.dumps({
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
        "step_seconds_median": med,
        "tokens_per_s": tokens / med if med > 0 else 0.0,
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "attention": "sdpa" if use_sdpa else "matmul+mask+softmax",
        "device": str(device),
        "bf16": a.bf16,
        "peak_device_mib": (torch.cuda.max_memory_allocated() / 2**20
                            if device.type == "cuda" else 0.0),
        "loss": loss,
        "token_checksum": sum(sum(s) for s in seqs),
        "step_seconds": times,
    }))


if __name__ == "__main__":
    main()
