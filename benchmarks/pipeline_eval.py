"""The pipeline's own evaluate stage on the benchmark's rows: does eval.json's seconds_per_sample
match the benchmark's steady state for the same rows and card? BENCH is either
benchmarks/default_path.py's JSON (padded batches: its batch size is used) or benchmarks/packed.py's
(the repo's default `packing: auto` and `token_budget`: compared with the packed cell of that budget).

Usage (GPU, after default_path.py or packed.py wrote BENCH; see benchmarks/README.md):
    python -m benchmarks.pipeline_eval --bench results/default-path.json --out results/pipeline-eval.json
    python -m benchmarks.packed --out packed.json --batches 16 --budgets 16384 --no-window-kept
    python -m benchmarks.pipeline_eval --bench packed.json --out pipeline-eval-packed.json
On a CPU (smoke run with the tiny models):
    python -m benchmarks.pipeline_eval --bench /tmp/r.json --out /tmp/pe.json
Several devices, without a benchmark file (the repo's defaults on --rows real-length rows; each
--devices value a stage run on the same rows and adapter; `speedup`: wall seconds per sample of the
first value over each):
    python -m benchmarks.pipeline_eval --out multi-eval.json --models llama3-8b --rows 990 --devices 1,2
    python -m benchmarks.pipeline_eval --out /tmp/pe.json --models tiny-llama3 --rows 24 --max-length 64 \
        --devices 1,2 --packing packed     # CPU: two CPU copies

For each model of BENCH: a params.yaml that is the repo's own with only `model`, its `pretrained`
(the full-size random-init folder), `max_length`, `eval_batch_size` (default_path.py's BENCH only)
and `evaluate.devices: 1` changed (attention, kernels, dtype, warm-up, packing, token_budget stay at
their defaults), a token cache whose val split holds the benchmark's rows (same lengths and ids:
default_path.py and packed.py draw them alike), and a LoRA adapter saved from the pipeline's own
`add_lora`; then `python -m stages.evaluate` as `dvc repro` runs it, in its own process.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoConfig

from benchmarks.default_path import bench_lengths, bench_sequences
from benchmarks.gpu_bench import ROOT
from prefbench.config import load_params
from prefbench.metrics import device_name
from prefbench.models import load_model, load_tokenizer
from prefbench.tokenize import to_table, write_table
from prefbench.lora import add_lora

KEYS = {"llama": "llama3", "gemma2": "gemma2"}  # model family -> key in params.yaml


def setup(tmp: Path, name: str, bench: dict, device: torch.device, packing: str | None = None) -> None:
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    key = KEYS[config.model_type]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = key
    raw["models"][key].update(pretrained=f"models/{name}", max_length=bench["max_length"])
    if bench["cells"] and not is_packed(bench):  # default_path.py's padded batches; packed.py's keeps the defaults
        raw["models"][key]["eval_batch_size"] = bench["batch_size"]
    raw["evaluate"]["devices"] = 1
    if packing:
        raw["models"][key]["packing"] = packing
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # The benchmark's rows: the same lengths and token ids (default_path.bench_sequences, seed 2, as
    # default_path.py and packed.py draw them).
    seqs = bench_sequences(bench_lengths(bench["rows"], bench["max_length"]), config.vocab_size, seed=2)
    params = load_params(tmp / "params.yaml")
    tok = load_tokenizer(str(ROOT / params.selected.pretrained))
    # The benchmark pads with id 0; this tokenizer pads with its own id: no row may hold it, or the
    # classifier would pool before the row's end. Remapped ids change no timing.
    for s in seqs:
        s[s == tok.pad_token_id] = tok.pad_token_id + 1
    labels = np.random.default_rng(0).integers(0, 3, len(seqs))
    (tmp / "tokens").mkdir()
    for split in ("train", "val"):
        write_table(to_table([f"r{i}" for i in range(len(seqs))], labels.tolist(), [s.tolist() for s in seqs]),
                    tmp / "tokens" / f"{split}.arrow")
    model = load_model(params.selected, tok.pad_token_id, device, seed=params.train.seed)[0]
    add_lora(model, params.selected).save_pretrained(tmp / "adapter")
    # As the train stage writes it: evaluate rebuilds the random-init base from the adapter's train.seed.
    resolved = {"model": key, "models": dataclasses.asdict(params.selected), "train": dataclasses.asdict(params.train)}
    (tmp / "adapter" / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
    del model
    gc.collect()
    torch.cuda.empty_cache() if device.type == "cuda" else None


def is_packed(bench: dict) -> bool:
    """benchmarks/packed.py's JSON (cells with a `layout`), not default_path.py's."""
    return any("layout" in c for c in bench["cells"])


def bench_cell(bench: dict, name: str, token_budget: int) -> dict | None:
    """The benchmark's cell of what evaluate runs by default: default_path.py's `default` cell, or
    packed.py's packed cell at `token_budget` tokens with packing.py's own window handling (not the
    --window-kept diagnostic; in older runs the `window_off` cell where both exist)."""
    if not is_packed(bench):
        return next((c for c in bench["cells"] if c["model"] == name and c.get("path") == "default"), None)
    found = [c for c in bench["cells"] if c["model"] == name and c["layout"] == "packed"
             and c["token_budget"] == token_budget and not c.get("window_kept")]
    return max(found, key=lambda c: bool(c.get("window_off")), default=None)


def stage_python() -> str:
    """The interpreter of the stage process: $PREFBENCH_PYTHON where set, as dvc.yaml's
    scripts/python.sh picks it, else this one."""
    return os.environ.get("PREFBENCH_PYTHON") or sys.executable


def evaluate(tmp: Path, devices: int = 1) -> dict:
    """The evaluate stage on `tmp`'s params with evaluate.devices = `devices`: eval.json, or {"error": ...}."""
    raw = yaml.safe_load((tmp / "params.yaml").read_text())
    raw["evaluate"]["devices"] = devices
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = {k: str(tmp / f) for k, f in (("metrics", "eval.json"), ("predictions", "pred.csv"),
                                        ("calibration", "cal.csv"), ("speed-accuracy", "sa.json"))}
    cmd = [stage_python(), "-m", "stages.evaluate", "--params", str(tmp / "params.yaml"), "--tokens",
           str(tmp / "tokens"), "--adapter", str(tmp / "adapter")] + [a for k, v in out.items() for a in (f"--{k}", v)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-2000:], proc.stderr[-3000:] if proc.returncode else "", flush=True)
    if proc.returncode:
        return {"error": proc.stderr[-1500:]}
    return json.loads(Path(out["metrics"]).read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", help="default_path.py's or packed.py's JSON (same card); without it --rows "
                   "real-length rows at --max-length and the repo's defaults (packing: auto), no comparison")
    p.add_argument("--out", required=True)
    p.add_argument("--models", help="default: every model of --bench")
    p.add_argument("--rows", type=int, default=256, help="without --bench")
    p.add_argument("--max-length", type=int, default=1024, help="without --bench")
    p.add_argument("--packing", help="models.<model>.packing (default: the repo's, auto)")
    p.add_argument("--devices", default="1", help="evaluate.devices values, each a stage run on the same rows "
                   "and adapter, e.g. 1,2 (seconds_per_sample is wall time: speedup = its ratio)")
    args = p.parse_args()
    devices = [int(k) for k in args.devices.split(",")]
    arena = len(json.loads((ROOT / "benchmarks" / "arena_lengths.json").read_text())["part_chars"])
    if not args.bench and args.rows > arena:
        sys.exit(f"--rows {args.rows}: benchmarks/arena_lengths.json has {arena} rows' lengths (drawn without replacement)")
    bench = (json.loads(Path(args.bench).read_text()) if args.bench else
             {"rows": args.rows, "max_length": args.max_length, "cells": [], "models": args.models.split(",")})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"bench": Path(args.bench).name if args.bench else None,
              "device": bench.get("device") or device_name(device), "models": {}}
    for name in (args.models.split(",") if args.models else bench["models"]):
        with tempfile.TemporaryDirectory() as d:
            setup(Path(d), name, bench, device, args.packing)
            params = load_params(Path(d) / "params.yaml")
            runs = {k: evaluate(Path(d), k) for k in devices}
        metrics = runs[devices[0]]
        cell = bench_cell(bench, name, params.selected.token_budget)
        entry = {"eval": metrics}
        if len(devices) > 1:
            entry["by_devices"] = {str(k): m for k, m in runs.items()}
            done = {k: m for k, m in runs.items() if "seconds_per_sample" in m}
            if devices[0] in done:
                entry["speedup"] = {str(k): done[devices[0]]["seconds_per_sample"] / m["seconds_per_sample"]
                                    for k, m in done.items()}
                entry["same_log_loss"] = {str(k): m["log_loss"] == done[devices[0]]["log_loss"] for k, m in done.items()}
                print(f"{name}: s/sample by devices " + ", ".join(
                    f"{k}: {m['seconds_per_sample']:.5f} ({m.get('packed') and 'packed' or 'padded'}, "
                    f"speedup {entry['speedup'][str(k)]:.2f}x)" for k, m in done.items()), flush=True)
        if cell and "seconds_per_sample" in metrics:
            entry.update(bench_seconds_per_sample=cell["seconds_per_sample"],
                         bench_attn=cell["attn"], bench_kernels=cell["kernels"],
                         eval_over_bench=metrics["seconds_per_sample"] / cell["seconds_per_sample"])
            if is_packed(bench):
                entry.update(bench_layout=cell["layout"], bench_token_budget=cell["token_budget"])
            print(f"{name}: eval.json {metrics['seconds_per_sample']:.4f} s/sample ({metrics['attn_implementation']}, "
                  f"kernels {metrics['kernels']}, packed {metrics.get('packed')}) vs benchmark steady state "
                  f"{cell['seconds_per_sample']:.4f}: {entry['eval_over_bench']:.3f}x", flush=True)
        result["models"][name] = entry
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
