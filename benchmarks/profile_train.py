"""Where a LoRA training step's time goes when its batch is one the process has not run before (as
in the train stage, whose batches never repeat) against a batch run before (as in
default_path.py's timed pass): passes of prefbench.train.train over the same rows with train.seed
0 (warm-up), 1 and 2 (new batches), 1 again (seen), the pass with seed 2 under cProfile.

With --kernels instead: where the GPU time of a step goes. One pass (warm-up: every kernel
compiled), then the same batches again under torch.profiler; device time by category as
benchmarks/profile_attention.py groups it (gemm, attention, Liger, elementwise; GPU kernels by
name too), in ms per optimizer step, against the pass's wall time per step (the rest is the GPU
idle: launches, host syncs).

Usage (GPU, PYTHONPATH as in benchmarks/gpu_fused.sh):
    python -m benchmarks.profile_train --out profile-train.json --model llama3-8b --setting packed:8192
    python -m benchmarks.profile_train --out profile-train-kernels.json --model gemma2-9b \
        --setting packed:32768:gc --kernels
On a CPU (smoke run): --model tiny-llama3 --setting packed:128 --train-length 32 --steps 2 [--kernels]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.default_path import bench_lengths, bench_sequences, model_cfg, parse_grid, train_rows
from benchmarks.gpu_bench import ROOT, cast_parameters_
from prefbench.config import TrainParams
from prefbench.lora import add_lora
from prefbench.models import apply_kernels, label_config_kwargs, resolve_attention, resolve_kernels
from prefbench.train import train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--setting", default="packed:8192", help="one --train-grid item of default_path.py")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--train-length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--kernels", action="store_true", help="a torch.profiler pass instead of the cProfile passes")
    a = p.parse_args()
    (s,) = parse_grid(a.setting)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cap = torch.cuda.get_device_capability() if dev.type == "cuda" else None
    config = AutoConfig.from_pretrained(ROOT / "models" / a.model, **label_config_kwargs())
    config.pad_token_id = 0
    torch.manual_seed(0)
    with torch.device(dev):  # as default_path.py --no-infer builds it
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32, attn_implementation="eager")
    cast_parameters_(model, torch.bfloat16)
    attn = resolve_attention("auto", config.model_type, dev.type, cap)
    kernels = resolve_kernels("auto", dev.type, cap)
    apply_kernels(model, kernels)
    model.set_attn_implementation(attn)
    lengths = train_rows(bench_lengths(a.rows, a.train_length, seed=3), s, a.steps)
    seqs = bench_sequences(lengths, config.vocab_size, seed=3)
    labels = np.zeros(len(seqs), dtype=np.int64)
    cfg = model_cfg(a.model, attn, kernels, 16, a.train_length, 16, s.rows or 1, s.packing, s.token_budget,
                    s.gradient_checkpointing)
    tp = TrainParams(epochs=1, learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.0, grad_accum_steps=1,
                     max_grad_norm=1.0, seed=0, log_every=1000, checkpoint_every=0, devices=1)
    lora = add_lora(model, cfg)
    if a.kernels:
        out = kernel_profile(lora, seqs, labels, cfg, tp, dev)
        out.update(device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", model=a.model,
                   setting=s.label, attn=attn, kernels=kernels, rows=len(seqs), tokens=int(lengths.sum()))
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps({k: v for k, v in out.items() if k != "top_ops_ms_per_sample"}, indent=1))
        return
    passes, profile = [], None
    for seed, profiled in ((0, False), (1, False), (2, True), (1, False)):
        prof = cProfile.Profile() if profiled else None
        if prof:
            prof.enable()
        r = train(lora, seqs, labels, cfg, dataclasses.replace(tp, seed=seed), 0, dev)
        if prof:
            prof.disable()
            text = io.StringIO()
            stats = pstats.Stats(prof, stream=text)
            stats.sort_stats("cumulative").print_stats(a.top)
            stats.sort_stats("tottime").print_stats(a.top)
            profile = text.getvalue()
        seen = seed in [q["seed"] for q in passes]
        passes.append({"seed": seed, "batches": "run before" if seen else "new", "profiled": profiled,
                       "steps": r["steps"], "seconds_per_step": r["train_seconds"] / r["steps"],
                       "tokens_per_second": r["tokens_per_second"]})
        print(passes[-1], flush=True)
    out = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "model": a.model,
           "setting": s.label, "attn": attn, "kernels": kernels, "rows": len(seqs), "passes": passes,
           "profile_seed_2": profile}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(profile[:12000])


def kernel_profile(lora, seqs, labels, cfg, tp, dev) -> dict:
    """One pass (warm-up), then the same batches under torch.profiler: device time per optimizer
    step by category (profile_attention.summarise), and the pass's wall time per step."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.profile_attention import summarise
    warm = train(lora, seqs, labels, cfg, tp, 0, dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        r = train(lora, seqs, labels, cfg, tp, 0, dev)
    steps = r["steps"]
    summary = summarise(prof.key_averages(group_by_input_shape=True), steps, dev.type)
    # summarise's "per sample" is per step here
    summary = {k.replace("per_sample", "per_step"): v for k, v in summary.items()}
    wall_ms = 1e3 * r["train_seconds"] / steps
    return {"steps": steps, "warmup_seconds_per_step": warm["train_seconds"] / warm["steps"],
            "profiled_wall_ms_per_step": wall_ms,
            "device_busy_share": summary["total_ms_per_step"] / wall_ms if dev.type == "cuda" else None,
            **summary}


if __name__ == "__main__":
    main()
