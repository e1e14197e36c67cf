"""The pipeline's own train stage on real-length rows with token-budget batches: metrics/train.json's
tokens_per_second, and the MFU it implies, beside the benchmark's steady state for the same setting.

Usage (GPU, after `default_path.py --no-infer --train-grid ...` wrote GRID on the same card; see
benchmarks/README.md):
    python -m benchmarks.pipeline_train --grid grid.json --out pipeline-train.json --models llama3-8b \
        [--token-budget 16384] [--gradient-checkpointing]
  without --token-budget: the setting of GRID's fastest (tokens/s) train cell with a token budget for
  that model. Run once per model with the same --out: the file collects them (under --key, default
  the model's name). --alloc-conf X: the stage runs with PYTORCH_CUDA_ALLOC_CONF=X.
On a CPU (smoke run with the tiny models; the peak is measured when there is no GRID):
    python -m benchmarks.pipeline_train --out /tmp/pt.json --models tiny-llama3 --max-length 64 \
        --token-budget 256 --steps 3

Per model: a params.yaml that is the repo's own with only `model`, its `pretrained` (the full-size
random-init folder), `max_length`, `train_token_budget`, `gradient_checkpointing`, `train.epochs`
(1), `train.checkpoint_every` (0) and `train.learning_rate` (1e-4, the 8-9B value params.yaml's
comment gives: the tiny models' 3e-3 could stop a run on a non-finite loss; the rate changes no
timing) changed, so attention, kernels, dtype and packing stay `auto`; a token cache whose train
split holds random-token rows of real arena lengths (default_path.bench_lengths, cycled; as many
as make --steps steps, default_path.train_rows); then `python -m stages.train` in its own process,
as `dvc repro` runs it. The stage has no warm-up: train_seconds includes the first steps'
flash-attn-4 / Triton compiles, so enough steps make that small; the grid's cell is the steady
state; train.json's steady_tokens_per_second (the second half of the stage's steps) is the stage's
own. MFU = model FLOPs (prefbench.flops.lora_train_flops: real tokens, no recomputation) over
train_seconds (steady_mfu: over the time the run takes at its steady rate), against the grid's
measured bf16 peak (or one measured here) and the datasheet's, times --devices (MFU per device).
--devices N: train.devices N, DDP through the stage's own `accelerate launch`; train_token_budget
stays the global batch (pass N times the budget to keep each device's share).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.default_path import TrainSetting, bench_lengths, bench_sequences, train_rows
from benchmarks.gpu_bench import ROOT, datasheet_peak, measure_peak
from benchmarks.pipeline_eval import KEYS, stage_python
from prefbench.flops import lora_train_flops, mfu
from prefbench.metrics import device_name
from prefbench.models import count_parameters, label_config_kwargs, load_tokenizer
from prefbench.tokenize import to_table, write_table

LEARNING_RATE = 1e-4


def grid_cell(grid: dict, name: str, token_budget: int | None = None, checkpointing: bool | None = None) -> dict | None:
    """GRID's train cell of `name` with this token budget and checkpointing, or (token_budget None)
    its fastest one (tokens/s) that has a token budget."""
    cells = [c for c in grid.get("train", []) if c["model"] == name and c.get("token_budget")]
    if token_budget is not None:
        cells = [c for c in cells if c["token_budget"] == token_budget
                 and c.get("gradient_checkpointing", False) == bool(checkpointing)]
    return max(cells, key=lambda c: c["tokens_per_second"], default=None)


def arena_rows(max_length: int, setting: TrainSetting, steps: int) -> np.ndarray:
    """Real arena lengths at max_length (all the rows, seed 3, cycled) making `steps` steps."""
    n = len(json.loads((ROOT / "benchmarks" / "arena_lengths.json").read_text())["part_chars"])
    pool = bench_lengths(n, max_length, seed=3)
    need = steps * (setting.token_budget or setting.rows * max_length)
    return train_rows(np.resize(pool, len(pool) * (need // int(pool.sum()) + 1)), setting, steps)


def setup(tmp: Path, name: str, setting: TrainSetting, max_length: int, steps: int, devices: int = 1) -> np.ndarray:
    """params.yaml (train.devices: `devices`) and the token cache in `tmp`; returns the train rows' lengths."""
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    key = KEYS[config.model_type]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = key
    raw["models"][key].update(pretrained=f"models/{name}", max_length=max_length,
                              train_token_budget=setting.token_budget,
                              gradient_checkpointing=setting.gradient_checkpointing)
    raw["train"].update(epochs=1, checkpoint_every=0, learning_rate=LEARNING_RATE, devices=devices)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    lengths = arena_rows(max_length, setting, steps)
    seqs = bench_sequences(lengths, config.vocab_size, seed=3)
    tok = load_tokenizer(str(ROOT / "models" / name))
    for s in seqs:  # no row may hold the pad id: the classifier pools on the last non-pad token
        s[s == tok.pad_token_id] = tok.pad_token_id + 1
    labels = np.random.default_rng(0).integers(0, 3, len(seqs))
    out = tmp / "tokens"
    out.mkdir()
    for split, k in (("train", len(seqs)), ("val", 8)):  # the stage reads train only
        write_table(to_table([f"r{i}" for i in range(k)], labels[:k].tolist(), [s.tolist() for s in seqs[:k]]),
                    out / f"{split}.arrow")
    meta = {"model": key, "pretrained": f"models/{name}", "pad_token_id": tok.pad_token_id, "max_length": max_length}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return lengths


def train_stage(tmp: Path, alloc_conf: str | None = None) -> tuple[dict, str]:
    """`python -m stages.train` on `tmp`'s params and tokens, as dvc.yaml runs it: (train.json or
    {"error": ...}, the end of its output). `alloc_conf`: PYTORCH_CUDA_ALLOC_CONF for the stage."""
    cmd = [stage_python(), "-m", "stages.train", "--params", str(tmp / "params.yaml"), "--tokens", str(tmp / "tokens"),
           "--out", str(tmp / "adapter"), "--metrics", str(tmp / "train.json"), "--live", str(tmp / "dvclive")]
    env = {**os.environ, **({"PYTORCH_CUDA_ALLOC_CONF": alloc_conf} if alloc_conf is not None else {})}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    tail = (proc.stdout[-1500:] + proc.stderr[-2500:]).strip()
    print(tail, flush=True)
    if proc.returncode:
        return {"error": proc.stderr[-1500:]}, tail
    return json.loads((tmp / "train.json").read_text()), tail


def non_embedding_params(name: str) -> int:
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    with torch.device("meta"):  # shapes only: no memory, no init
        model = AutoModelForSequenceClassification.from_config(config)
    return count_parameters(model)["params_non_embedding"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON; an existing one gets this run's models added")
    p.add_argument("--grid", help="default_path.py --no-infer --train-grid JSON of the same card")
    p.add_argument("--models", default="llama3-8b,gemma2-9b")
    p.add_argument("--token-budget", type=int, help="train_token_budget (default: GRID's fastest)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: as GRID's fastest cell, else off")
    p.add_argument("--alloc-conf", help="PYTORCH_CUDA_ALLOC_CONF for the stage, e.g. expandable_segments:True")
    p.add_argument("--key", help="this run's key in --out (default: the model's name)")
    p.add_argument("--devices", type=int, default=1,
                   help="train.devices: > 1 runs DDP (the stage relaunches itself through accelerate launch); "
                        "the token budget stays global, split over the devices")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps the stage takes at least")
    p.add_argument("--seconds", type=float, default=150,
                   help="fewer steps (not under 8) where GRID's rate says --steps would take longer")
    args = p.parse_args()
    grid = json.loads(Path(args.grid).read_text()) if args.grid else {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"models": {}}
    peak = grid.get("peak_bf16_flops") or measure_peak(device)
    result.update(device=device_name(device), grid=Path(args.grid).name if args.grid else None,
                  peak_bf16_flops=peak, peak_bf16_flops_measured_in="grid" if grid.get("peak_bf16_flops") else "here",
                  peak_bf16_flops_datasheet=datasheet_peak(device_name(device)))
    for name in args.models.split(","):
        best = grid_cell(grid, name) if args.token_budget is None else None
        budget = args.token_budget if args.token_budget is not None else (best or {}).get("token_budget")
        if not budget:
            sys.exit(f"{name}: no --token-budget and no train cell with one in --grid")
        checkpointing = args.gradient_checkpointing
        if checkpointing is None:
            checkpointing = bool(best and best.get("gradient_checkpointing"))
        cell = grid_cell(grid, name, budget, checkpointing)
        steps = args.steps
        if cell:
            steps = min(steps, max(8, int(args.seconds * cell["tokens_per_second"] / budget)))
        setting = TrainSetting("auto", budget, 0, checkpointing)
        with tempfile.TemporaryDirectory() as d:
            lengths = setup(Path(d), name, setting, args.max_length, steps, args.devices)
            start = time.perf_counter()
            metrics, tail = train_stage(Path(d), args.alloc_conf)
            wall = time.perf_counter() - start
            resolved = Path(d) / "adapter" / "resolved_params.json"  # what the stage trained with
            resolved = json.loads(resolved.read_text())["models"] if resolved.exists() else {}
        config = AutoConfig.from_pretrained(ROOT / "models" / name)
        alloc_conf = args.alloc_conf if args.alloc_conf is not None else os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        kept = ("train_token_budget", "gradient_checkpointing", "packing", "attn_implementation", "kernels",
                "max_length")
        entry = {"setting": f"train_token_budget {budget}, gradient_checkpointing {str(checkpointing).lower()}",
                 "token_budget": budget, "gradient_checkpointing": checkpointing, "max_length": args.max_length,
                 "devices": args.devices,
                 "rows": len(lengths), "tokens": int(lengths.sum()), "stage_wall_seconds": round(wall, 1),
                 "alloc_conf": alloc_conf, "train": metrics, "output_tail": tail[-1500:],
                 "stage_params": {k: resolved.get(k) for k in kept}}  # what the stage trained with
        if "train_seconds" in metrics:
            # MFU per device: all devices' FLOPs over the devices' summed peak
            fl = lora_train_flops(config, non_embedding_params(name), lengths)
            sheet, n = result["peak_bf16_flops_datasheet"], args.devices
            steady = metrics.get("steady_tokens_per_second")
            steady_s = metrics["tokens"] / steady if steady else None  # the run's time at its steady rate
            entry.update(steps=metrics["steps"], seconds_per_step=metrics["train_seconds"] / metrics["steps"],
                         tokens_per_second=metrics["tokens_per_second"], steady_tokens_per_second=steady,
                         tokens_match=metrics["tokens"] == int(lengths.sum()),
                         mfu=mfu(fl, metrics["train_seconds"], peak * n),
                         mfu_datasheet=mfu(fl, metrics["train_seconds"], sheet * n) if sheet else None,
                         steady_mfu=mfu(fl, steady_s, peak * n) if steady_s else None,
                         steady_mfu_datasheet=mfu(fl, steady_s, sheet * n) if steady_s and sheet else None)
        if cell:
            entry.update(grid_setting=cell.get("setting"), grid_tokens_per_second=cell["tokens_per_second"],
                         grid_mfu=cell["mfu"], grid_seconds_per_step=cell["seconds_per_step"])
            if "tokens_per_second" in entry:
                entry["stage_over_grid"] = entry["tokens_per_second"] / cell["tokens_per_second"]
        result["models"][args.key or name] = entry
        out.write_text(json.dumps(result, indent=1) + "\n")
        if "mfu" in entry:
            print(f"{name} on {args.devices} device(s): train.json {entry['tokens_per_second']:.0f} tokens/s over "
                  f"{entry['steps']} steps, MFU {entry['mfu']:.3f}, steady (second half) "
                  f"{entry['steady_tokens_per_second'] or 0:.0f} tokens/s, MFU {entry['steady_mfu'] or 0:.3f}" + (f" (grid steady state {cell['tokens_per_second']:.0f} tokens/s, "
                                                f"MFU {cell['mfu']:.3f})" if cell else ""), flush=True)


if __name__ == "__main__":
    main()
