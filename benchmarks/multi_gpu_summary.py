"""Summarise benchmarks/multi_gpu.sh: one GPU vs N, same inputs -> OUT/multi-gpu.json and Markdown.

Usage: python -m benchmarks.multi_gpu_summary WORK_DIR N OUT_JSON
"""

from __future__ import annotations

import json
from collections import defaultdict
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.report import multi_table


def summarise(out: Path, n: int) -> dict:
    def load(name: str) -> dict:  # a step that failed left no file: its numbers read as nan
        path = out / name
        return json.loads(path.read_text()) if path.exists() else defaultdict(lambda: float("nan"))
    t1, tn = load("multi-train-adapter1.json"), load(f"multi-train-adapter{n}.json")
    e1, en, ed = load("multi-eval-1gpu.json"), load(f"multi-eval-{n}gpu.json"), load(f"multi-eval-ddp{n}-1gpu.json")
    cols = ["p_a", "p_b", "p_tie"]
    try:
        p1 = pd.read_csv(out / "multi-pred-1gpu.csv").set_index("id")[cols]
        pn = pd.read_csv(out / f"multi-pred-{n}gpu.csv").set_index("id").loc[p1.index, cols]
        prob_diff = float(np.abs(p1.values - pn.values).max())
    except FileNotFoundError:
        prob_diff = float("nan")
    return {
        "device": e1["device"], "gpus": n, "model": e1["model"], "weights": e1["weights"],
        "dtype": e1["dtype"], "attn_implementation": e1["attn_implementation"],
        "train_rows": t1["samples"], "val_rows": e1["n_samples"],
        "train_seconds": {"1": t1["train_seconds"], str(n): tn["train_seconds"]},
        "train_speedup": t1["train_seconds"] / tn["train_seconds"],
        "train_final_loss": {"1": t1["final_loss"], str(n): tn["final_loss"]},
        "eval_seconds_per_sample": {"1": e1["seconds_per_sample"], str(n): en["seconds_per_sample"]},
        "eval_speedup": e1["seconds_per_sample"] / en["seconds_per_sample"],
        "eval_log_loss_same_adapter": {"1": e1["log_loss"], str(n): en["log_loss"]},
        "eval_max_abs_prob_diff_same_adapter": prob_diff,
        "compiled": e1.get("compiled"), "eval_warmup_seconds": {"1": e1.get("warmup_seconds"), str(n): en.get("warmup_seconds")},
        "eval_log_loss_ddp_adapter_on_1": ed["log_loss"],
        "train_batch_size": (lambda p: p["models"][p["model"]]["train_batch_size"])(yaml.safe_load((out / "p1.yaml").read_text())),
        "stages": {name: dict(load(name)) for name in ("multi-data.json", "multi-tokens.json", "multi-train-adapter1.json",
                                                 f"multi-train-adapter{n}.json", "multi-eval-1gpu.json",
                                                 f"multi-eval-{n}gpu.json", f"multi-eval-ddp{n}-1gpu.json")},
        "note": "random-init weights: timings are real, log-loss is not a model's; it is compared between "
                "one and several GPUs on the same rows",
    }


def main() -> None:
    work, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    s = summarise(work, n)
    out.write_text(json.dumps(s, indent=1) + "\n")
    multi_table(s, out.name)  # the table report.py puts into results/report.md

if __name__ == "__main__":
    main()
