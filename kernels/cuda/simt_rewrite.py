#!/usr/bin/env python3
"""Rewrites a kernels/cuda .cu file into C++ for the SIMT emulation (simt.h).

  simt_rewrite.py IN.cu OUT.cc

What changes (line numbers stay those of IN.cu, through #line):
  kernel<<<grid, block[, shared[, stream]]>>>(args)
      -> simt::Launch(grid, block[, ...]).Kernel(kernel).Run(
             [](auto... p) { kernel(p...); }, args)
     (.Kernel is left out for a template kernel whose arguments are deduced);
  extern __shared__ [__align__(n)] T name[];
      -> T* name = reinterpret_cast<T*>(simt::DynamicShared());
  __shared__ [__align__(n)] T name[dims];
      -> auto& name = simt::Shared<T[dims]>([] {});
and CHUNKFLOW_SIMT is defined before simt.h is included. Anything of CUDA's
syntax left over (<<<, __shared__) is an error, and so are the constructs the
emulation would get silently wrong (static __shared__, __CUDA_ARCH__ branches,
intrinsics it does not implement): a new construct in a kernel fails the
build instead of compiling into something else.
"""
import re
import sys

NS = "::chunkflow::kernels::cuda::simt"


def template_kernels(src):
    pattern = re.compile(
        r"template\s*<[^{;]*?>\s*__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(")
    return set(pattern.findall(src))


def matching(src, i, open_ch, close_ch, step):
    """Index of the bracket matching src[i] (an open_ch), walking by step."""
    depth = 0
    while 0 <= i < len(src):
        if src[i] == open_ch:
            depth += 1
        elif src[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise SystemExit("simt_rewrite: unbalanced %s%s" % (open_ch, close_ch))


def rewrite_launches(src, templates, path):
    out = []
    pos = 0
    while True:
        at = src.find("<<<", pos)
        if at < 0:
            out.append(src[pos:])
            return "".join(out)
        # The kernel's name before <<<, with its template arguments if any.
        end = at
        start = end
        if src[start - 1] == ">":
            start = matching(src, start - 1, ">", "<", -1)
        m = re.search(r"[\w:]+$", src[:start])
        if m is None:
            raise SystemExit("simt_rewrite: %s: no kernel name before <<< at offset %d" % (path, at))
        name_start = m.start()
        name = src[name_start:end]
        close = src.find(">>>", at)
        if close < 0:
            raise SystemExit("simt_rewrite: %s: <<< without >>>" % path)
        config = src[at + 3:close]
        paren = close + 3
        while src[paren].isspace():
            paren += 1
        if src[paren] != "(":
            raise SystemExit("simt_rewrite: %s: no arguments after >>> of %s" % (path, name))
        args_end = matching(src, paren, "(", ")", 1)
        args = src[paren + 1:args_end]
        kernel = "" if name in templates else ".Kernel(%s)" % name
        call = "[](auto... simt_args) { %s(simt_args...); }" % name
        if args.strip():
            call += ", " + args
        out.append(src[pos:name_start])
        out.append("%s::Launch(%s)%s.Run(%s)" % (NS, config, kernel, call))
        out.append("\n" * src[close:paren].count("\n"))  # the lines dropped between >>> and (
        pos = args_end + 1


def keep_lines(text, match):
    """`text` followed by as many newlines as `match` spans, so lines stay."""
    return text + "\n" * match.group(0).count("\n")


def refuse(src, path):
    """Constructs the emulation would get silently wrong: fail the build."""
    checks = [
        (r"\bstatic\s+__shared__\b", "static __shared__ (one copy per process, never poisoned)"),
        (r"__CUDA_ARCH__|__CUDACC__", "a device-only branch (the emulation compiles the host one)"),
        (r"\bwarpSize\b|__syncwarp|__ballot_sync|__any_sync|__all_sync|__shfl_sync|"
         r"__shfl_up_sync|__shfl_down_sync|atomic[A-Z]\w*\(|__threadfence|cooperative_groups",
         "a device intrinsic the emulation does not implement"),
    ]
    for pattern, what in checks:
        m = re.search(pattern, src)
        if m is not None:
            line = src[:m.start()].count("\n") + 1
            raise SystemExit("simt_rewrite: %s:%d: %s: %s" % (path, line, m.group(0), what))


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: simt_rewrite.py IN.cu OUT.cc")
    path, out_path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        src = f.read()
    refuse(src, path)
    src = re.sub(
        r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+(?:\s+[\w:]+)*?)\s+(\w+)\s*\[\s*\]\s*;",
        lambda m: keep_lines("%s* %s = reinterpret_cast<%s*>(%s::DynamicShared());" %
                             (m.group(1), m.group(2), m.group(1), NS), m), src)
    src = re.sub(
        r"__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;",
        lambda m: keep_lines(
            "auto& %s = %s::Shared<%s%s>([] {});" % (m.group(2), NS, m.group(1), m.group(3)), m),
        src)
    src = rewrite_launches(src, template_kernels(src), path)
    for leftover in ("<<<", ">>>", "__shared__"):
        if leftover in src:
            line = src[:src.index(leftover)].count("\n") + 1
            raise SystemExit("simt_rewrite: %s:%d: %s left after the rewrite" % (path, line, leftover))
    header = '#define CHUNKFLOW_SIMT 1\n#include "kernels/cuda/simt.h"\n#line 1 "%s"\n' % path
    with open(out_path, "w") as f:
        f.write(header + src)


if __name__ == "__main__":
    main()
