#!/bin/bash
# The main job. Until the cluster lands this is `chunkflowctl plan` on a
# synthetic long-tailed dataset: ChunkFlow against the Megatron-style baselines,
# with a ChunkSize x K sweep under an 80 GiB budget. Extra flags pass through,
# e.g. scripts/run.sh --dataset=/data/corpus_text_document --dp=8 --pp=4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bazel build --jobs=2 //cli:chunkflowctl
exec bazel-bin/cli/chunkflowctl plan \
  --dataset=synthetic:paper-eval:n=50000,seed=1,max=131072 \
  --model=qwen2.5-7b --dp=4 --pp=4 --global_batch=512 --steps=4 --sweep "$@"
