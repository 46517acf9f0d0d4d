#!/usr/bin/env python3
"""Checks a ChunkFlow checkpoint with Hugging Face transformers.

Loads <model_dir> (config.json + model.safetensors, as `chunkflowctl train
--output_dir` writes them) with AutoModelForCausalLM, computes each JSONL
document's mean next-token loss, and compares it with the JSON that
`chunkflowctl eval --format=json` printed for the same model and file.

  chunkflowctl eval --model_dir=/tmp/ckpt --dataset=docs.jsonl --format=json > ours.json
  .venv-golden/bin/python tools/golden/check_checkpoint.py /tmp/ckpt docs.jsonl ours.json

Exit status 0 when every document agrees to 1e-4 relative.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    model_dir, jsonl, ours_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    ours = {d["document"]: d for d in json.load(open(ours_path))["documents"]}
    worst = 0.0
    with open(jsonl) as f:
        docs = [json.loads(line) for line in f if line.strip()]
    for i, rec in enumerate(docs):
        ids = torch.tensor([rec["input_ids"]])
        labels = torch.tensor([rec.get("labels") or rec["input_ids"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        mine = ours[i]["mean_loss"]
        rel = abs(mine - loss) / abs(loss)
        worst = max(worst, rel)
        print(f"document {i}: transformers {loss:.6f}  chunkflow {mine:.6f}  rel {rel:.2e}")
    print(f"worst relative difference {worst:.2e} over {len(docs)} documents")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
