"""Stage `train`: LoRA fine-tuning of the selected model as a 3-class sequence classifier.

Usage: python -m stages.train --params params.yaml --tokens data/tokens --out models/adapter \
           --metrics metrics/train.json --live dvclive [--checkpoints models/adapter.ckpt]
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization,
lora_*, train_batch_size, train_token_budget, packing, gradient_checkpointing}, train.*
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

With train.devices > 1 (or 0: all visible GPUs, when there are several) the stage starts itself
again through `accelerate launch`, one process per device (prefbench.launch; on a machine without
GPUs, CPU processes over gloo), and waits: the dvc.yaml command stays one line. Started by
`accelerate launch` itself (several machines: docs/multi-gpu.md) it trains at once, in the
launcher's processes. Every process takes its share of each batch (train_batch_size rows, or rows
up to train_token_budget tokens), so the optimizer steps are those of one device
(prefbench.train_batches.shard, shard_tokens), and the main process writes the outputs. seconds_per_sample
is wall time; `devices` says how many processes ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from dvclive import Live

from prefbench.checkpoints import remove_checkpoints
from prefbench.cli import run
from prefbench.config import Params, by_kind, load_params
from prefbench.device_errors import BatchOutOfMemoryError, NonFiniteLossError
from prefbench.files import atomic_path
from prefbench.launch import launched, relaunch
from prefbench.lora import save_adapter
from prefbench.metrics import device_name, peak_memory_gb, round_floats, write_json
from prefbench.models import pick_devices
from prefbench.train import fine_tune, make_accelerator, mixed_precision


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
    from prefbench import tfidf  # here, not at the top: LLM runs never import scikit-learn
    with atomic_path(args.out) as out:
        out.mkdir(parents=True)
        metrics = tfidf.train(params, args.tokens, out)
        resolved = {"model": params.model, "weights": "fitted", "models": dataclasses.asdict(params.selected)}
        (out / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    with atomic_path(args.live) as live_dir, \
            Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_metric("train/loss", metrics["final_loss"])  # one point: lbfgs has no steps to log
    with atomic_path(args.metrics) as path:
        write_json(path, round_floats(metrics))
    print(f"train: {params.model} logistic regression on {metrics['samples']} rows in "
          f"{metrics['train_seconds']:.1f} s, {metrics['params_total']:,} coefficients, "
          f"training log-loss {metrics['final_loss']:.4f}")


def train_llm(args: argparse.Namespace, params: Params) -> None:
    cfg, tp = params.selected, params.train
    checkpoints = Path(args.checkpoints or f"{args.out.rstrip('/')}.ckpt")
    if not launched() and len(devices := pick_devices(tp.devices, "train.devices")) > 1:
        sys.exit(relaunch("stages.train", sys.argv[1:], len(devices), mixed_precision(cfg, devices[0].type), "train"))

    accelerator = make_accelerator(cfg, tp)
    main = accelerator.is_main_process
    # A fresh log even when resuming: DVC deletes dvclive/ before it re-runs the stage, and train()
    # logs the points before the checkpoint again, so the curve is complete either way. Written
    # aside and renamed when training ends (prefbench.files), as the adapter: whole or absent.
    with (atomic_path(args.live) if main else nullcontext()) as live_dir, \
            (Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) if main else nullcontext()) as live:
        def log(step: int, values: dict) -> None:
            live.step = step
            for name, value in values.items():
                live.log_metric(f"train/{name}", value)
            live.next_step()

        try:
            tuned = fine_tune(accelerator, params, args.tokens, checkpoints, log=log if main else None)
        except (NonFiniteLossError, BatchOutOfMemoryError) as err:
            sys.exit(f"train: error: {err}")
    peak = peak_memory_gb(accelerator.device)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # leaves the process group
    if not main:
        return

    dtype, result, world = str(tuned.dtype).removeprefix("torch."), tuned.result, accelerator.num_processes
    resolved = {"model": params.model, "weights": tuned.weights, "dtype": dtype, "pad_token_id": tuned.pad_token_id,
                "models": dataclasses.asdict(cfg), "train": dataclasses.asdict(tp)}
    with atomic_path(args.out) as out:
        save_adapter(tuned.model, out)  # adapter_model.safetensors: LoRA weights and the score head
        (out / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    metrics = {
        "model": params.model, "weights": tuned.weights, "device": device_name(accelerator.device),
        "dtype": dtype, "attn_implementation": tuned.attn_implementation,
        "quantization": cfg.quantization, **round_floats(result), "params_trainable": tuned.params_trainable,
        "params_total": tuned.params_total, "peak_memory_gb": peak,
        "devices": world, "device_seconds_per_sample": round(result["seconds_per_sample"] * world, 6),
    }
    with atomic_path(args.metrics) as path:
        write_json(path, metrics)
    remove_checkpoints(checkpoints)
    since = (result["steps"] - 1) // tp.log_every * tp.log_every + 1  # the last logged window's first step
    print(f"train: {result['steps']} steps in {result['train_seconds']:.1f} s, "
          f"{result['seconds_per_sample']:.4f} s/sample, {result['tokens_per_second']:.0f} tokens/s, "
          f"final loss {result['final_loss']:.4f} (mean of steps {since}-{result['steps']}: the loss curve's last point)")


if __name__ == "__main__":
    run(main)
