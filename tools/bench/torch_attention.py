#!/usr/bin/env python3
"""PyTorch baseline of kernels/cuda:attention_bench: causal GQA attention forward
and forward+backward through F.scaled_dot_product_attention, flash backend, bf16.

For each length T: q (1, H, T, D), k and v (1, Hk, T, D) in bf16 on the GPU,
random normal; GQA through enable_gqa=True where torch has it (else k and v are
repeated before timing). CUDA events time --iters calls after --warmup; one JSON
line per length goes to stdout:
  {"length", "fwd_ms", "fwdbwd_ms", "backend", "torch_version"}

  python3 tools/bench/torch_attention.py --lengths=2048,8192 --heads=14 --kv_heads=2 --head_dim=64
"""

import argparse
import json
import sys

import torch
import torch.nn.functional as F


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    dev = torch.device("cuda")
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731
        backend = "sdpa flash"
    except ImportError:
        import contextlib
        ctx = contextlib.nullcontext
        backend = "sdpa (default backend)"
    for t in [int(x) for x in a.lengths.split(",") if x]:
        torch.manual_seed(t)
        q = torch.randn(1, a.heads, t, a.head_dim, device=dev, dtype=torch.bfloat16,
                        requires_grad=True)
        k = torch.randn(1, a.kv_heads, t, a.head_dim, device=dev, dtype=torch.bfloat16,
                        requires_grad=True)
        v = torch.randn(1, a.kv_heads, t, a.head_dim, device=dev, dtype=torch.bfloat16,
                        requires_grad=True)
        do = torch.randn(1, a.heads, t, a.head_dim, device=dev, dtype=torch.bfloat16)
        kwargs = {}
        try:
            with ctx():
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            kwargs["enable_gqa"] = True
            kk, vv = k, v
        except (TypeError, RuntimeError):
            rep = a.heads // a.kv_heads
            kk = k.detach().repeat_interleave(rep, dim=1).requires_grad_()
            vv = v.detach().repeat_interleave(rep, dim=1).requires_grad_()

        def fwd():
            with ctx(), torch.no_grad():
                F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kwargs)

        def fwdbwd():
            with ctx():
                o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kwargs)
            o.backward(do)

        out = {"length": t, "fwd_ms": timed(fwd, a.iters, a.warmup),
               "fwdbwd_ms": timed(fwdbwd, a.iters, a.warmup), "backend": backend,
               "torch_version": torch.__version__}
        print(json.dumps(out), flush=True)
        print(f"torch_attention: T={t} done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
