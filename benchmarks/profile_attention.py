"""Where the GPU time goes: torch.profiler over prefbench's predict loop, per model and attention.

Usage (GPU; see benchmarks/run_gpu.sh):
    python -m benchmarks.profile_attention --out results/profile.json
On a CPU (smoke run of the same code with the tiny models):
    python -m benchmarks.profile_attention --out /tmp/p.json --paths tiny-llama3:sdpa,tiny-gemma2:eager \
        --rows 8 --max-length 128

For each model:attention path: bf16 random-init weights (as gpu_bench), the real-length workload
of gpu_bench at --max-length (length-sorted dynamic batches), one untimed pass, then one pass
under torch.profiler. Device time of every aten op (self time, kernels launched by the op) is summed
and grouped into categories, reported as milliseconds per sample:
  gemm        linear layers (aten::mm / addmm / linear) - the FLOPs the model has to do
  attn_fused  fused attention kernels (sdpa flash / efficient / cudnn, flex attention)
  attn_eager  what eager attention runs instead: the [batch, heads, L, L] score matmuls (bmm /
              matmul), softmax, the softcap (div, tanh, mul), mask add, casts of the score tensor
  norm_act    RMSNorm, activations, RoPE, residual adds (elementwise over [batch, L, hidden])
  other       everything else (copies, embedding, indexing)
  compiled    GPU kernels launched outside any aten op: Triton kernels of flex attention or
              torch.compile (the device total of all kernels minus the aten ops' share)
Ops on the score tensor are told from elementwise ops on hidden states by their input shape:
rank-4 inputs whose last two dims are equal (L x L).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from benchmarks.gpu_bench import PAD_MULTIPLE, ROOT, cast_parameters_, random_sequences
from benchmarks.lengths import token_lengths
from prefbench.infer import predict

GEMM = {"aten::mm", "aten::addmm", "aten::linear", "aten::_addmm_activation"}
FUSED = ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "flex")
SCORE_MATMUL = {"aten::bmm", "aten::matmul", "aten::baddbmm"}


def category(name: str, shapes: list) -> str:
    """Category of one aten op, from its name and its input shapes (see the module docstring)."""
    if any(k in name for k in FUSED):
        return "attn_fused"
    square = any(isinstance(s, (list, tuple)) and len(s) == 4 and s[-1] == s[-2] and s[-1] > 1 for s in shapes)
    if name in SCORE_MATMUL or (square and name not in GEMM):
        return "attn_eager"
    if name in GEMM:
        return "gemm"
    if name in {"aten::mul", "aten::add", "aten::pow", "aten::rsqrt", "aten::mean", "aten::silu", "aten::gelu",
                "aten::tanh", "aten::neg", "aten::cat", "aten::sub", "aten::div", "aten::cos", "aten::sin"}:
        return "norm_act"
    return "other"


KERNEL_CATEGORIES = (  # GPU kernel name fragments -> category, first match wins (lower-case)
    ("attn_fused", ("flash", "fmha", "attention", "flex")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "splitk")),
    ("liger", ("_rms_norm", "_rope", "_swiglu", "_geglu", "liger")),
    ("norm_act", ("elementwise", "vectorized", "reduce", "softmax", "tanh", "mul", "add", "rsqrt")),
)


def kernel_category(name: str) -> str:
    """Category of one GPU kernel by its name: where Liger's Triton kernels and flash-attn-4's
    CUTLASS kernels run, aten ops no longer tell their time apart (launched outside any aten op)."""
    low = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in low for k in keys)), "other")


def summarise(events, rows: int, device_type: str) -> dict:
    """Per-category and per-op self device time (ms per sample) from profiler key_averages."""
    by_cat, by_op = defaultdict(float), defaultdict(float)
    kernels = 0.0  # every GPU kernel's time, whoever launched it
    by_kernel_cat, by_kernel = defaultdict(float), defaultdict(float)
    for e in events:
        if "CUDA" in str(getattr(e, "device_type", "")):
            kernels += e.self_device_time_total / 1e3
            by_kernel_cat[kernel_category(e.key)] += e.self_device_time_total / 1e3
            by_kernel[e.key[:80]] += e.self_device_time_total / 1e3
            continue
        t = (e.self_device_time_total if device_type == "cuda" else e.self_cpu_time_total) / 1e3  # ms
        if t <= 0 or not e.key.startswith("aten::"):
            continue
        by_cat[category(e.key, e.input_shapes or [])] += t
        by_op[e.key] += t
    if device_type == "cuda" and kernels > sum(by_cat.values()):
        by_cat["compiled"] = kernels - sum(by_cat.values())
    total = sum(by_cat.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
    return {"total_ms_per_sample": total / rows,
            "ms_per_sample": {k: v / rows for k, v in sorted(by_cat.items())},
            "share": {k: v / total for k, v in sorted(by_cat.items())} if total else {},
            "top_ops_ms_per_sample": {k: v / rows for k, v in top},
            "kernel_ms_per_sample": {k: v / rows for k, v in sorted(by_kernel_cat.items())},
            "top_kernels_ms_per_sample": {k: v / rows for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:12]}}


def profile_path(name: str, attn: str, rows: int, max_length: int, batch: int, device: torch.device,
                 kernels: str = "none") -> dict:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from prefbench.models import label_config_kwargs

    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    config.pad_token_id = 0
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32,
                                                               attn_implementation="eager")
    cast_parameters_(model, torch.bfloat16)
    model.set_attn_implementation(attn)
    if kernels != "none":
        from prefbench.models import apply_kernels
        apply_kernels(model, kernels)
    chars = json.loads((ROOT / "benchmarks" / "arena_lengths.json").read_text())["part_chars"]
    pick = np.random.default_rng(0).choice(len(chars), rows, replace=False)
    seqs = random_sequences(token_lengths([chars[i] for i in pick], max_length), config.vocab_size, seed=2)
    run = dict(batch_size=batch, pad_token_id=0, device=device, pad_multiple=PAD_MULTIPLE)
    predict(model, seqs, warmup_batches=0, **run)  # untimed: kernel choice, flex compile per shape
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        r = predict(model, seqs, warmup_batches=0, **run)
    out = {"model": name, "attn": attn, "kernels": kernels, "rows": rows, "max_length": max_length, "batch_size": batch,
           "tokens": r["tokens"], "padded_tokens": r["padded_tokens"],
           "seconds_per_sample_profiled": r["seconds"] / rows,
           **summarise(prof.key_averages(group_by_input_shape=True), rows, device.type)}
    del model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--paths", default="llama3-8b:sdpa,gemma2-9b:eager,gemma2-9b:flex_attention",
                   help="model:attention[:kernels] (kernels: none | liger), comma-separated")
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch._dynamo.config.cache_size_limit = 256
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "paths": []}
    for item in args.paths.split(","):
        name, attn, kernels = (item.split(":") + ["none"])[:3]
        try:
            r = profile_path(name, attn, args.rows, args.max_length, args.batch, device, kernels)
        except Exception as e:  # a refused or failing path is recorded; the others still run
            r = {"model": name, "attn": attn, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        result["paths"].append(r)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        if "error" in r:
            print(f"{name} {attn}: {r['error']}", flush=True)
            continue
        cats = ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_sample"].items())
        kcats = ", ".join(f"{k} {v:.2f}" for k, v in r["kernel_ms_per_sample"].items())
        print(f"{name} {attn} kernels={kernels}: {r['total_ms_per_sample']:.2f} ms/sample of device time ({cats}); "
              f"by GPU kernel: {kcats}", flush=True)
        for k, ms in r["top_kernels_ms_per_sample"].items():
            print(f"    {k:80s} {ms:8.3f} ms/sample", flush=True)
        for op, ms in r["top_ops_ms_per_sample"].items():
            print(f"    {op:40s} {ms:8.3f} ms/sample", flush=True)


if __name__ == "__main__":
    main()
