#!/usr/bin/env python3
"""PyTorch baseline of kernels/cuda:gemm_bench: the linear layer's GEMMs in bf16.

For each shape T,IC,OC: x (T, IC) and w (OC, IC) in bf16 on the GPU; forward
y = x @ w.T, backward dx = dy @ w and dw = dy.T @ x (torch.matmul, bf16 in and
out, fp32 accumulation inside cuBLAS). CUDA events time --iters calls after
--warmup; one JSON line per shape: {"shape", "fwd_ms", "bwd_ms", "torch_version"}

  python3 tools/bench/torch_gemm.py --shapes="8192,896,4864;8192,4864,896"
"""

import argparse
import json

import torch


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", required=True, help="T,IC,OC;T,IC,OC;...")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cuda")
    for shape in [s for s in a.shapes.split(";") if s]:
        t, ic, oc = (int(x) for x in shape.split(","))
        x = torch.randn(t, ic, device=dev, dtype=torch.bfloat16)
        w = torch.randn(oc, ic, device=dev, dtype=torch.bfloat16)
        dy = torch.randn(t, oc, device=dev, dtype=torch.bfloat16)
        fwd = timed(lambda: torch.matmul(x, w.t()), a.iters, a.warmup)
        bwd = timed(lambda: (torch.matmul(dy, w), torch.matmul(dy.t(), x)), a.iters, a.warmup)
        print(json.dumps({"shape": shape, "fwd_ms": fwd, "bwd_ms": bwd,
                          "torch_version": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
