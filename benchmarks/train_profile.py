"""Where a training step's time goes: the train stage's own loop (prefbench.train.train) profiled.

The train part times the stage in its own process (benchmarks/pipeline.py); this runs the same
loop in this process on the same settings (params as benchmarks.settings gives them, packed
batches of the token budget, real arena lengths): WARM_STEPS steps to meet every kernel compile,
then PROFILED_STEPS more twice, the same batches: timed alone (wall milliseconds a step: the profiler's
own overhead per kernel would inflate it), then under torch.profiler. It reports device
milliseconds per optimizer step by kernel category (benchmarks.inference.kernel_category) and the
costliest kernels: what is left between the train stage's MFU and the matmul peak. Wall over device
time is what the GPU waits on the host.
"""

from __future__ import annotations

import gc

import numpy as np
import torch
from transformers import AutoConfig

from benchmarks.card import ROOT
from benchmarks.inference import profile_pass
from benchmarks.lengths import bench_sequences
from benchmarks.pipeline import train_rows
from benchmarks.settings import bench_params
from prefbench.lora import add_lora
from prefbench.models import load_model, load_tokenizer
from prefbench.train import train

WARM_STEPS, PROFILED_STEPS = 4, 3


def profile_train(name: str, dev: torch.device, log=print) -> dict:
    params = bench_params(name, dev.type == "cuda")
    cfg, tp = params.selected, params.train
    tok = load_tokenizer(cfg.pretrained)
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    model = add_lora(load_model(cfg, tok.pad_token_id, dev, seed=tp.seed)[0], cfg)

    def steps(n: int, seed: int):
        lengths = train_rows(name, cfg.max_length, cfg.train_token_budget or 512, n)
        seqs = bench_sequences(lengths, config.vocab_size, seed=seed, avoid=(tok.pad_token_id,))
        labels = np.random.default_rng(seed).integers(0, 3, len(seqs))
        return lambda: train(model, seqs, labels, cfg, tp, tok.pad_token_id, device=dev, name=params.model)

    warm = steps(WARM_STEPS, 5)()
    run = steps(PROFILED_STEPS, 6)
    timed = run()  # unprofiled, for the wall time (train() synchronises before and after its clock)
    result = {}

    def once():
        result.update(run())

    prof = profile_pass(once, 1, dev)  # per call; divided by the steps below
    n = result["steps"]
    out = {"steps": n, "warm_steps": warm["steps"], "tokens_per_step": result["tokens"] / n,
           "ms_per_step": round(prof["ms_per_sample"] / n, 2),
           "by_category_ms_per_step": {k: round(v / n, 2) for k, v in prof["by_category_ms_per_sample"].items()},
           "share": prof["share"],
           "top_kernels_ms_per_step": {k: round(v / n, 2) for k, v in prof["top_kernels_ms_per_sample"].items()},
           "wall_ms_per_step": round(timed["train_seconds"] / timed["steps"] * 1e3, 2),
           "profiled_wall_ms_per_step": round(result["train_seconds"] / n * 1e3, 2)}
    log(f"{name} train profile over {n} steps of {out['tokens_per_step']:.0f} tokens: {out['ms_per_step']} ms device "
        f"time a step ({out['wall_ms_per_step']} ms wall): {out['by_category_ms_per_step']}")
    del model
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out
