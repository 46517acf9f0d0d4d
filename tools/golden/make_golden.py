#!/usr/bin/env python3
"""Golden-tensor generator for the C++ training engine tests.

Builds tiny, randomly initialised Hugging Face transformers models
(Qwen2ForCausalLM, LlamaForCausalLM), runs one forward + backward pass on fixed
tokens and writes, per case, to worker/engine/testdata/golden/<case>/:

  config.json, model.safetensors   exactly what model.save_pretrained() writes
                                   (fp32 weights); nothing else is kept
  golden.safetensors               input_ids, labels, logits, loss, grad.<param>

The reference is computed with the HF modules after model.double() (the fp32
weights convert exactly) and rounded to fp32 when stored. See README.md.

Usage (see README.md for the environment):
  .venv-golden/bin/python tools/golden/make_golden.py [--out DIR] [--cases c1,c2]
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

FORMAT_VERSION = "1"
GENERATOR = "tools/golden/make_golden.py"
IGNORE_INDEX = -100
LABEL_MASK_FRACTION = 0.15
# The C++ test's tolerance; the fp32 HF run is checked against it here too, so
# a failure means the tolerance is unattainable rather than a C++ bug.
REL_TOL = 1e-4

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO_ROOT, "worker", "engine", "testdata", "golden")

_QWEN2_TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    max_position_embeddings=512,
    use_sliding_window=False,
    attention_dropout=0.0,
)

CASES = {
    "qwen2_tiny": dict(
        model_cls=Qwen2ForCausalLM,
        config=lambda: Qwen2Config(**_QWEN2_TINY),
        batch=2,
        seq_len=33,
        seed=20240601,
    ),
    "llama_tiny": dict(
        model_cls=LlamaForCausalLM,
        config=lambda: LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=4,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=512,
        ),
        batch=2,
        seq_len=33,
        seed=20240602,
    ),
    "qwen2_untied_long": dict(
        model_cls=Qwen2ForCausalLM,
        config=lambda: Qwen2Config(**dict(_QWEN2_TINY, tie_word_embeddings=False, num_hidden_layers=3)),
        batch=1,
        seq_len=96,
        seed=20240603,
    ),
}

RMSNORM_TYPES = (modeling_qwen2.Qwen2RMSNorm, modeling_llama.LlamaRMSNorm)


def build_model(case):
    spec = CASES[case]
    cfg = spec["config"]()
    model = spec["model_cls"]._from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
    assert model.config._attn_implementation == "eager"
    model = model.float()

    # Re-initialise every parameter from one generator, in named_parameters order.
    g = torch.Generator().manual_seed(spec["seed"])
    kind = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if kind.get(id(p)) == "embedding":
                continue  # tied lm_head.weight: the shared tensor is initialised as an embedding
            if isinstance(mod, torch.nn.Embedding):
                kind[id(p)] = "embedding"
            elif isinstance(mod, torch.nn.Linear):
                kind[id(p)] = "linear_bias" if pname == "bias" else "linear_weight"
            elif isinstance(mod, RMSNORM_TYPES):
                kind[id(p)] = "rmsnorm"
            else:
                raise RuntimeError(f"unexpected parameter {full} in {type(mod).__name__}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            k = kind[id(p)]
            z = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if k == "embedding":
                p.copy_(0.5 * z)
            elif k in ("linear_weight", "linear_bias"):
                p.copy_(0.1 * z)
            else:  # rmsnorm
                p.copy_(1.0 + 0.1 * z)
    emb_std = float(model.model.embed_tokens.weight.std())
    assert 0.45 < emb_std < 0.55, emb_std
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        assert model.lm_head.weight is not model.model.embed_tokens.weight
    return model


def make_inputs(case, vocab_size):
    spec = CASES[case]
    b, l = spec["batch"], spec["seq_len"]
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    input_ids = torch.randint(0, vocab_size, (b, l), generator=g, dtype=torch.int64)
    mask = torch.rand((b, l), generator=g) < LABEL_MASK_FRACTION
    labels = input_ids.clone()
    labels[mask] = IGNORE_INDEX
    # Only labels[:, 1:] are used as targets (HF shifts internally).
    n_ignored = int((labels[:, 1:] == IGNORE_INDEX).sum())
    assert 0 < n_ignored < b * (l - 1), n_ignored
    return input_ids, labels


def forward_backward(model, input_ids, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, labels=labels, attention_mask=torch.ones_like(input_ids))
    out.loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        grads[name] = p.grad.detach().clone()
    return out.logits.detach().clone(), out.loss.detach().clone(), grads


def reference_loss_fp64(logits, labels):
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1, :].reshape(-1, v).double(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="mean",
    )


@contextlib.contextmanager
def pure_fp64_patches():
    """Diagnostics only: lift HF's internal fp32 islands (RMSNorm upcast, fp32
    softmax, fp32 RoPE angles, fp32 loss) to the input dtype, to measure how far
    the stored (HF, model.double()) reference is from an all-fp64 computation."""

    def rms_forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        n_rep = module.num_key_value_groups
        key = modeling_qwen2.repeat_kv(key, n_rep)
        value = modeling_qwen2.repeat_kv(value, n_rep)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask[:, :, :, : key.shape[-2]]
        w = torch.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    def rope_forward(self, x, position_ids):
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = position_ids[:, :, None].double() * inv[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    saved = []
    for mod, rms, rot in (
        (modeling_qwen2, modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.Qwen2RotaryEmbedding),
        (modeling_llama, modeling_llama.LlamaRMSNorm, modeling_llama.LlamaRotaryEmbedding),
    ):
        saved += [(mod, "eager_attention_forward", mod.eager_attention_forward),
                  (rms, "forward", rms.forward), (rot, "forward", rot.forward)]
        mod.eager_attention_forward = eager_attention
        rms.forward = rms_forward
        rot.forward = rope_forward
    try:
        yield
    finally:
        for obj, attr, val in saved:
            setattr(obj, attr, val)


def pure_fp64_forward_backward(model, input_ids, labels):
    with pure_fp64_patches():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        loss = reference_loss_fp64(out.logits, labels)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach().clone(), loss.detach().reshape(1), grads


def canonicalize_metadata_order(path):
    """save_file emits __metadata__ keys in hash order, which varies between runs.
    Rewrite the header in place with sorted metadata keys (same length, tensor
    entries and data untouched) so regenerated files are byte-identical."""
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        raw = fh.read(n)
        header = json.loads(raw, object_pairs_hook=lambda kv: dict(kv))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        assert json.loads(new) == json.loads(raw)
        if len(new) > n:
            raise RuntimeError("unexpected safetensors header layout")
        new += b" " * (n - len(new))  # safetensors pads the header with spaces
        fh.seek(8)
        fh.write(new)


def rel_l2(a, ref):
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


def rel_max(a, ref):
    a, ref = a.double(), ref.double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def family(name):
    return re.sub(r"\.\d+\.", ".*.", name)


def compare_all(tag, logits, loss, grads, ref_logits, ref_loss, ref_grads):
    worst_l2, worst_max = ("logits", rel_l2(logits, ref_logits)), ("logits", rel_max(logits, ref_logits))
    for n in ref_grads:
        e2, em = rel_l2(grads[n], ref_grads[n]), rel_max(grads[n], ref_grads[n])
        if e2 > worst_l2[1]:
            worst_l2 = (n, e2)
        if em > worst_max[1]:
            worst_max = (n, em)
    loss_rel = abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))
    print(f"  {tag}: loss rel {loss_rel:.2e}; worst rel-L2 {worst_l2[1]:.2e} ({worst_l2[0]}); "
          f"worst max|d|/max|ref| {worst_max[1]:.2e} ({worst_max[0]})")
    return loss_rel, worst_l2[1]


def run_case(case, out_root):
    print(f"== {case}")
    model = build_model(case)
    cfg = model.config
    input_ids, labels = make_inputs(case, cfg.vocab_size)
    model.train()  # dropout probabilities are all 0
    names = [n for n, _ in model.named_parameters()]
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    else:
        assert "lm_head.weight" in names

    out_dir = os.path.join(out_root, case)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):  # the case directory is owned by this script
        path = os.path.join(out_dir, f)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    # 1) fp32 weights, exactly as save_pretrained writes them.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        written = sorted(os.listdir(tmp))
        for f in ("config.json", "model.safetensors"):
            assert f in written, written
            shutil.copyfile(os.path.join(tmp, f), os.path.join(out_dir, f))
        dropped = [f for f in written if f not in ("config.json", "model.safetensors")]
    print(f"  save_pretrained wrote {written}; dropped {dropped}")

    # 2) fp32 HF run (diagnostic: what an fp32 implementation achieves).
    logits32, loss32, grads32 = forward_backward(model, input_ids, labels)

    # 3) reference: same HF code after model.double().
    model.double()
    logits, loss, grads = forward_backward(model, input_ids, labels)
    assert logits.dtype == torch.float64 and loss.dtype == torch.float32  # HF: loss on logits.float()
    loss64_own = reference_loss_fp64(logits, labels)
    assert abs(float(loss64_own) - float(loss)) <= 1e-6 * abs(float(loss)), (float(loss64_own), float(loss))

    # 4) diagnostics: an all-fp64 computation (HF's fp32 islands lifted).
    p_logits, p_loss, p_grads = pure_fp64_forward_backward(model, input_ids, labels)
    model.float()

    # Sanity checks.
    print(f"  loss {float(loss):.8f}  (fp32 run {float(loss32):.8f}, all-fp64 {float(p_loss):.10f})")
    print(f"  max|logit| {float(logits.abs().max()):.5f}; labels ignored (targets) "
          f"{int((labels[:, 1:] == IGNORE_INDEX).sum())}/{labels[:, 1:].numel()}")
    fam = {}
    for n, gr in grads.items():
        nrm = float(gr.norm())
        assert nrm > 0 and torch.isfinite(gr).all(), f"zero/non-finite gradient for {n}"
        f = family(n)
        fam[f] = max(fam.get(f, 0.0), float(gr.abs().max()))
    for f, v in fam.items():
        print(f"    max|grad| {f:45s} {v:.4e}")
    loss_rel32, worst32 = compare_all("fp32 HF vs reference", logits32, loss32, grads32, logits, loss, grads)
    assert loss_rel32 <= 1e-5, f"fp32 vs fp64 loss disagree: {loss_rel32}"
    assert worst32 <= REL_TOL, f"fp32 HF misses the {REL_TOL} tolerance: {worst32}"
    _, worst_pure = compare_all("reference vs all-fp64", logits, loss, grads, p_logits, p_loss, p_grads)
    assert worst_pure <= 1e-5, worst_pure

    # 5) golden tensors.
    tensors = {
        "input_ids": input_ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": logits.float().contiguous(),
        "loss": loss.detach().float().reshape(1).contiguous(),
    }
    for n, gr in grads.items():
        tensors["grad." + n] = gr.float().contiguous()
    metadata = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "case": case,
    }
    save_file(tensors, os.path.join(out_dir, "golden.safetensors"), metadata=metadata)
    canonicalize_metadata_order(os.path.join(out_dir, "golden.safetensors"))
    os.chmod(os.path.join(out_dir, "golden.safetensors"), 0o644)  # save_file creates it 0600

    # 6) reload check: config.json + model.safetensors through from_pretrained.
    reloaded, info = AutoModelForCausalLM.from_pretrained(
        out_dir, attn_implementation="eager", torch_dtype=torch.float32, output_loading_info=True
    )
    assert type(reloaded) is type(model), type(reloaded)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    sd_a, sd_b = model.state_dict(), reloaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    reloaded.train()
    r_logits, r_loss, _ = forward_backward(reloaded, input_ids, labels)
    assert torch.equal(r_logits, logits32), "reloaded fp32 logits differ from in-memory fp32 logits"
    gold = load_file(os.path.join(out_dir, "golden.safetensors"))
    assert rel_l2(r_logits, gold["logits"]) <= REL_TOL and rel_max(r_logits, gold["logits"]) <= REL_TOL
    assert abs(float(r_loss) - float(gold["loss"][0])) <= 1e-5 * abs(float(gold["loss"][0]))
    with open(os.path.join(out_dir, "config.json")) as fh:
        assert json.load(fh)["tie_word_embeddings"] == cfg.tie_word_embeddings
    print(f"  reload OK; logits rel-L2 vs golden {rel_l2(r_logits, gold['logits']):.2e}")

    for f in sorted(os.listdir(out_dir)):
        print(f"  {f}: {os.path.getsize(os.path.join(out_dir, f))} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output root (default: %(default)s)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            sys.exit(f"unknown case {c!r}")
    torch.set_num_threads(1)  # reproducible reduction order
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for c in cases:
        run_case(c, args.out)


if __name__ == "__main__":
    main()
