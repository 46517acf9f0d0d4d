#!/bin/bash
# The main job: `chunkflowctl local` — a coordinator and dp x pp = 2 x 2 worker
# daemons as processes on this machine, training a small Qwen2-style model
# (4.0 M parameters) for 20 steps on a synthetic long-tailed dataset with
# ChunkSize 512 (long documents become dependent chunks), checkpoints every
# 5 steps. About a minute on 2 cores. Extra flags pass through, e.g.
#   scripts/run.sh --dp=1 --pp=4 --steps=50 --chunk_size=256 --k=2
#   scripts/run.sh --dataset=/data/corpus_text_document --model_dir=/models/Qwen2.5-0.5B
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bazel build --jobs=2 //cli:chunkflowctl
exec bazel-bin/cli/chunkflowctl local "$@"
