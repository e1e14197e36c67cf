"""The pipeline's own evaluate and train stages, run as `dvc repro` runs them (`python -m stages.X`,
a process each), on the benchmark's rows, with the settings of benchmarks/settings.py.

evaluate: a token cache whose val split holds the inference part's rows (the same lengths and
token ids: benchmarks.lengths, the same seeds), and a LoRA adapter saved from the pipeline's own
`add_lora` on the random-init base the stage rebuilds (its train.seed); eval.json's
seconds_per_sample is then compared with the inference part's default cell (`over_benchmark`).

train: a token cache of random-token rows of real arena lengths (cycled), as many as make `steps`
optimizer steps of train_token_budget tokens; train.json's tokens per second over all steps and
its steady rate (the second half of the steps) give MFU over all steps and steady MFU:
model FLOPs (prefbench.flops.lora_train_flops: real tokens, no recomputation) / seconds / peak.
"""

from __future__ import annotations

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
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.card import ROOT
from benchmarks.lengths import arena_rows, bench_lengths, bench_sequences
from benchmarks.settings import raw_params
from prefbench.config import parse_params
from prefbench.flops import lora_train_flops, mfu
from prefbench.lora import add_lora
from prefbench.models import count_parameters, label_config_kwargs, load_model, load_tokenizer
from prefbench.tokenize import to_table, write_table


def stage_python() -> str:
    """The stage process's interpreter: $PREFBENCH_PYTHON where set (as dvc.yaml's scripts/python.sh
    picks it), else this one."""
    return os.environ.get("PREFBENCH_PYTHON") or sys.executable


def run_stage(args: list[str], log) -> tuple[int, str]:
    """`python -m stages.<args>` from the repo's root; its output goes to `log` line by line."""
    proc = subprocess.Popen([stage_python(), "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail = []
    for line in proc.stdout:
        log(line.rstrip("\n"), prefix="  | ")
        tail = (tail + [line])[-40:]
    return proc.wait(), "".join(tail)


def write_params(tmp: Path, raw: dict) -> Path:
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_tokens(tmp: Path, seqs: list[np.ndarray], val: list[np.ndarray], key: str, name: str, max_length: int,
                 pad_token_id: int) -> Path:
    out = tmp / "tokens"
    out.mkdir()
    rng = np.random.default_rng(0)
    for split, rows in (("train", seqs), ("val", val)):
        labels = rng.integers(0, 3, len(rows)).tolist()
        write_table(to_table([f"r{i}" for i in range(len(rows))], labels, [s.tolist() for s in rows]),
                    out / f"{split}.arrow")
    meta = {"model": key, "pretrained": str(ROOT / "models" / name), "pad_token_id": pad_token_id,
            "max_length": max_length}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def non_embedding_params(name: str) -> int:
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    with torch.device("meta"):  # shapes only: no memory, no init
        return count_parameters(AutoModelForSequenceClassification.from_config(config))["params_non_embedding"]


def evaluate_stage(name: str, rows: int, dev: torch.device, log=print) -> dict:
    """eval.json of the evaluate stage on the inference part's rows, or {"failed": ...}."""
    raw = raw_params(name, dev.type == "cuda")
    params = parse_params(raw)
    cfg = params.selected
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    tok = load_tokenizer(cfg.pretrained)
    seqs = bench_sequences(bench_lengths(rows, cfg.max_length, seed=0), config.vocab_size, seed=2,
                           avoid=(tok.pad_token_id,))
    with tempfile.TemporaryDirectory(prefix="prefbench-bench-") as d:
        tmp = Path(d)
        path = write_params(tmp, raw)
        tokens = write_tokens(tmp, seqs[:8], seqs, params.model, name, cfg.max_length, tok.pad_token_id)
        # The adapter, as the train stage leaves it: evaluate rebuilds the random-init base from the
        # adapter's train.seed, then loads the adapter (B = 0: the base's function).
        model = load_model(cfg, tok.pad_token_id, dev, seed=params.train.seed)[0]
        add_lora(model, cfg).save_pretrained(tmp / "adapter")
        resolved = {"model": params.model, "models": dataclasses.asdict(cfg), "train": dataclasses.asdict(params.train)}
        (tmp / "adapter" / "resolved_params.json").write_text(json.dumps(resolved, indent=2) + "\n")
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        outs = {"metrics": "eval.json", "predictions": "pred.csv", "calibration": "cal.csv", "speed-accuracy": "sa.json"}
        code, tail = run_stage(["stages.evaluate", "--params", str(path), "--tokens", str(tokens), "--adapter",
                                str(tmp / "adapter")] + [a for k, f in outs.items() for a in (f"--{k}", str(tmp / f))],
                               log)
        if code:
            return {"failed": f"stages.evaluate exited {code}: {tail[-1200:]}"}
        metrics = json.loads((tmp / "eval.json").read_text())
    return {"s_per_sample": metrics["seconds_per_sample"], "rows": rows, "eval": metrics}


def train_rows(name: str, max_length: int, token_budget: int, steps: int) -> np.ndarray:
    """Real arena lengths at max_length (seed 3, cycled) summing to at least `steps` x token_budget
    tokens: a batch holds at most the budget, so that is at least `steps` steps."""
    pool = bench_lengths(arena_rows(), max_length, seed=3)
    lengths = np.resize(pool, len(pool) * (steps * token_budget // int(pool.sum()) + 1))
    return lengths[: np.searchsorted(np.cumsum(lengths), steps * token_budget) + 1]


def train_stage(name: str, steps: int, dev: torch.device, peak: float, sheet: float | None, log=print) -> dict:
    """train.json of the train stage for at least `steps` optimizer steps, with MFU, or {"failed": ...}."""
    raw = raw_params(name, dev.type == "cuda")
    params = parse_params(raw)
    cfg = params.selected
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    tok = load_tokenizer(cfg.pretrained)
    lengths = train_rows(name, cfg.max_length, cfg.train_token_budget, steps)
    seqs = bench_sequences(lengths, config.vocab_size, seed=3, avoid=(tok.pad_token_id,))
    with tempfile.TemporaryDirectory(prefix="prefbench-bench-") as d:
        tmp = Path(d)
        path = write_params(tmp, raw)
        tokens = write_tokens(tmp, seqs, seqs[:8], params.model, name, cfg.max_length, tok.pad_token_id)
        code, tail = run_stage(["stages.train", "--params", str(path), "--tokens", str(tokens), "--out",
                                str(tmp / "adapter"), "--metrics", str(tmp / "train.json"), "--live",
                                str(tmp / "dvclive")], log)
        if code:
            return {"failed": f"stages.train exited {code}: {tail[-1200:]}"}
        metrics = json.loads((tmp / "train.json").read_text())
    flops = lora_train_flops(config, non_embedding_params(name), lengths)
    seconds = metrics["train_seconds"]
    steady = metrics.get("steady_tokens_per_second")
    steady_seconds = metrics["tokens"] / steady if steady else None  # the run's time at its steady rate
    return {"steps": metrics["steps"], "tokens": metrics["tokens"], "tokens_match": metrics["tokens"] == int(lengths.sum()),
            "token_budget": cfg.train_token_budget, "gradient_checkpointing": cfg.gradient_checkpointing,
            "max_length": cfg.max_length, "train_seconds": seconds,
            "tokens_per_s": metrics["tokens_per_second"], "steady_tokens_per_s": steady,
            "mfu": mfu(flops, seconds, peak), "mfu_datasheet": mfu(flops, seconds, sheet) if sheet else None,
            "steady_mfu": mfu(flops, steady_seconds, peak) if steady_seconds else None,
            "steady_mfu_datasheet": mfu(flops, steady_seconds, sheet) if steady_seconds and sheet else None,
            "train": metrics}
