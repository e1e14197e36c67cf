"""Stage `train`: LoRA fine-tuning of the selected model as a 3-class sequence classifier.

Usage: python -m stages.train --params params.yaml --tokens data/tokens --out models/adapter \
           --metrics metrics/train.json --live dvclive [--checkpoints models/adapter.ckpt]
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization,
lora_*, train_batch_size, gradient_checkpointing}, train.*
(`kind: tfidf`: models.<model>.{C, max_iter}: a logistic regression, prefbench.tfidf).
Writes the adapter and score head (safetensors) and resolved_params.json to --out, per-step
loss and learning rate to --live (dvclive, for `dvc plots show`), and metrics/train.json; the
adapter folder and the metrics file appear complete or not at all (written aside, then renamed).

Every train.checkpoint_every optimizer steps a checkpoint goes to --checkpoints (default: --out
plus `.ckpt`, beside the adapter and not a DVC output, so `dvc repro` keeps it). Run again after
a crash or a kill, the stage resumes from it if the params and the token cache are the same
(else it says so and starts over) and ends with the same adapter as an uninterrupted run; the
checkpoints are deleted once the adapter is written. A non-finite loss or running out of device
memory stops the stage with a message saying what to change (exit status 1).

With train.devices > 1 (or 0: all visible GPUs, when there are several) the stage re-runs itself
through torchrun, one process per GPU (DDP): every process takes its share of each batch of
train_batch_size rows, so the optimizer steps are those of one GPU (prefbench.train.shard), and
rank 0 writes the outputs. seconds_per_sample is wall time; `devices` says how many ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import peft
import torch
import torch.distributed as dist
import transformers
from dvclive import Live

from prefbench import tfidf
from prefbench.cli import run
from prefbench.config import Params, by_kind, load_params
from prefbench.infer import BatchOutOfMemoryError
from prefbench.metrics import device_name, peak_memory_gb, round_floats, write_json
from prefbench.models import count_parameters, load_model, load_tokenizer, pick_devices
from prefbench.tokenize import read_tokens
from prefbench.files import atomic_path
from prefbench.train import (NonFiniteLossError, add_lora, fingerprint, init_distributed, remove_checkpoints, train,
                             world_info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", required=True, help="token cache folder (stage tokenize)")
    parser.add_argument("--out", required=True, help="folder for the adapter")
    parser.add_argument("--metrics", required=True, help="training metrics JSON")
    parser.add_argument("--live", required=True, help="dvclive folder for per-step curves")
    parser.add_argument("--checkpoints", help="folder for resumable checkpoints (default: OUT.ckpt)")
    args = parser.parse_args()
    params = load_params(args.params)
    by_kind(params.selected, llm=train_llm, tfidf=train_tfidf)(args, params)


def train_tfidf(args: argparse.Namespace, params: Params) -> None:
    """`kind: tfidf`: fit the logistic regression (prefbench.tfidf) on the cached features; the
    folder holds the fitted featuriser and coefficients, dvclive the final training loss."""
    with atomic_path(args.out) as out:
        out.mkdir(parents=True)
        metrics = tfidf.train(params, args.tokens, out)
        resolved = {"model": params.model, "weights": "fitted", "models": dataclasses.asdict(params.selected)}
        (out / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    with Live(dir=args.live, save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_metric("train/loss", metrics["final_loss"])  # one point: lbfgs has no steps to log
    with atomic_path(args.metrics) as path:
        write_json(path, round_floats(metrics))
    print(f"train: {params.model} logistic regression on {metrics['samples']} rows in "
          f"{metrics['train_seconds']:.1f} s, {metrics['params_total']:,} coefficients, "
          f"training log-loss {metrics['final_loss']:.4f}")


def train_llm(args: argparse.Namespace, params: Params) -> None:
    cfg, tp = params.selected, params.train
    checkpoints = Path(args.checkpoints or f"{args.out.rstrip('/')}.ckpt")

    if "LOCAL_RANK" in os.environ:  # a torchrun worker
        device = init_distributed()
    else:
        devices = pick_devices(tp.devices, "train.devices")
        if len(devices) > 1:
            sys.exit(launch_ddp(len(devices)))
        device = devices[0]
    rank, world = world_info()
    main_process = rank == 0

    transformers.set_seed(tp.seed)
    tok = load_tokenizer(cfg.pretrained)
    _, labels, seqs = read_tokens(args.tokens, "train")
    model, dtype, weights = load_model(cfg, tok.pad_token_id, device, seed=tp.seed)
    base_counts = count_parameters(model)
    attn = model.config._attn_implementation  # `auto` resolved (prefbench.models.resolve_attention)
    model = add_lora(model, cfg)
    trainable = count_parameters(model)["params_trainable"]
    if main_process:
        print(f"train: {params.model} ({weights}, {dtype}, {attn}) on {world} x {device_name(device)}: "
              f"{len(seqs)} rows, {base_counts['params_total']:,} parameters, {trainable:,} trainable", flush=True)

    # A fresh log even when resuming: DVC deletes dvclive/ before it re-runs the stage, and train()
    # logs the points before the checkpoint again, so the curve is complete either way.
    live_ctx = Live(dir=args.live, save_dvc_exp=False, dvcyaml=None, report=None) if main_process else nullcontext()
    with live_ctx as live:
        def log(step: int, values: dict) -> None:
            live.step = step
            for name, value in values.items():
                live.log_metric(f"train/{name}", value)
            live.next_step()

        try:
            result = train(model, seqs, labels, cfg, tp, tok.pad_token_id, device, log=log if main_process else None,
                           checkpoint_dir=checkpoints, fingerprint=run_fingerprint(params, args.tokens),
                           name=params.model)
        except (NonFiniteLossError, BatchOutOfMemoryError) as err:
            sys.exit(f"train: error: {err}")

    peak = peak_memory_gb(device)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not main_process:
        return

    resolved = {"model": params.model, "weights": weights, "dtype": str(dtype).removeprefix("torch."),
                "pad_token_id": tok.pad_token_id, "models": dataclasses.asdict(cfg),
                "train": dataclasses.asdict(tp)}
    for lora in model.peft_config.values():  # a set, saved in hash order: sort it, for identical bytes per run
        if isinstance(lora.target_modules, set):
            lora.target_modules = sorted(lora.target_modules)
    with atomic_path(args.out) as out:
        model.save_pretrained(out)  # adapter_model.safetensors: LoRA weights and the score head
        (out / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    metrics = {
        "model": params.model, "weights": weights, "device": device_name(device),
        "dtype": resolved["dtype"], "attn_implementation": attn,
        "quantization": cfg.quantization, **round_floats(result), "params_trainable": trainable,
        "params_total": base_counts["params_total"], "peak_memory_gb": peak,
        "devices": world, "device_seconds_per_sample": round(result["seconds_per_sample"] * world, 6),
    }
    with atomic_path(args.metrics) as path:
        write_json(path, metrics)
    remove_checkpoints(checkpoints)
    print(f"train: {result['steps']} steps in {result['train_seconds']:.1f} s, "
          f"{result['seconds_per_sample']:.4f} s/sample, {result['tokens_per_second']:.0f} tokens/s, "
          f"final loss {result['final_loss']:.4f}")


def launch_ddp(n: int) -> int:
    """Run this stage again under torchrun, one process per GPU, with the same arguments; returns
    its exit status. torchrun stops every process when one fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "stages.train", *sys.argv[1:]]
    print(f"train: {n} devices: DDP through torchrun: {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, env=os.environ.copy()).returncode


def run_fingerprint(params, tokens: str) -> str:
    """What a checkpoint must have been made with to be resumed: the params training reads
    (checkpoint_every, devices and eval_batch_size aside: a run on 2 GPUs takes the same steps as
    on one), the token cache, and the library versions."""
    cfg = {k: v for k, v in dataclasses.asdict(params.selected).items() if k != "eval_batch_size"}
    settings = {"model": params.model, "models": cfg,
                "train": {k: v for k, v in dataclasses.asdict(params.train).items()
                          if k not in ("checkpoint_every", "devices")},
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__}}
    return fingerprint(settings, [Path(tokens) / "meta.json", Path(tokens) / "train.arrow"])


if __name__ == "__main__":
    run(main)
