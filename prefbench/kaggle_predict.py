"""The `predict.py` of a bundle (prefbench.bundle): a submission.csv on Kaggle's 1 or 2 GPUs, offline.

Usage (in the notebook, after installing the bundle's wheel):
    python /kaggle/input/<bundle>/predict.py --test-csv /kaggle/input/.../test.csv --out submission.csv
        [--devices N] [--pretrained PATH] [--work DIR]

One `python -m stages.predict` process per GPU (--devices, default: every visible GPU, at least
one process), each seeing only its GPU: the test rows are dealt to them by length, longest first,
in turn (prefbench.data.deal_round_robin, as the predict stage deals rows to GPUs), so each gets
the same mix of long and short rows; a tfidf bundle runs --devices CPU processes (default one). The
parts are merged back into the input's row order. With one process the test file is handed over
whole: the submission is byte for byte the predict stage's. At the end it prints the hours the
hidden test set (predict.kaggle_rows) would take.
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
import pandas as pd
import yaml

T4_CAVEAT = ("Projected from this machine. Kaggle's T4s have no bf16 (dtype auto runs fp16) and no "
             "FlashAttention, and are several times slower than an A100/H100: trust the hours printed "
             "when this runs on Kaggle itself.")


def caveat(summary: dict, is_llm: bool) -> str | None:
    """T4_CAVEAT where it applies: an LLM timed on other hardware than Kaggle's T4 (a tfidf model
    runs on the CPU, and Kaggle's CPUs are what it would use there too)."""
    return T4_CAVEAT if is_llm and "T4" not in str(summary["device"]) else None


def row_lengths(df: pd.DataFrame) -> list[int]:
    """Characters of prompt and both responses per row: the order tokens give, without tokenizing."""
    return [len(p) + len(a) + len(b) for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"])]


def run_params(bundle: Path, pretrained: str | None, work: Path) -> Path:
    """The bundle's params.yaml with `pretrained` made absolute (or replaced) for the processes."""
    raw = yaml.safe_load((bundle / "params.yaml").read_text())
    entry = raw["models"][raw["model"]]
    if "pretrained" in entry:
        path = pretrained or entry["pretrained"]
        entry["pretrained"] = str(bundle / path) if (bundle / path).exists() else path  # a local folder or a hub id
    out = work / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def launch(params: Path, test_csv: Path, adapter: Path, work: Path, k: int, gpus: int) -> tuple[subprocess.Popen, Path, Path]:
    sub, metrics = work / f"submission-{k}.csv", work / f"predict-{k}.json"
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(k)  # one GPU per process
    cmd = [sys.executable, "-m", "stages.predict", "--params", str(params), "--test-csv", str(test_csv),
           "--adapter", str(adapter), "--out", str(sub), "--metrics", str(metrics),
           "--no-projection"]  # the one projection is this script's, over all processes
    return subprocess.Popen(cmd, env=env), sub, metrics


def projection(parts: list[dict], rows: int, kaggle_rows: int) -> dict:
    """Hours for kaggle_rows: the slowest process sets the wall time (processes run side by side).
    The predict stage times the model alone, as for the LLMs; tfidf's featurising (its
    `featurise_seconds`, the bulk of its time) is added here, since a Kaggle run pays it too."""
    wall = max(p["seconds_per_sample"] * p["n_samples"] + p.get("featurise_seconds", 0.0) for p in parts)
    setup = max(p["load_seconds"] + p["warmup_seconds"] for p in parts)  # once per process, in parallel
    hours = (wall / rows * kaggle_rows + setup) / 3600
    return {"rows": rows, "processes": len(parts), "device": parts[0]["device"], "model": parts[0]["model"],
            "swap_tta": parts[0]["swap_tta"], "seconds_per_sample": wall / rows, "setup_seconds": setup,
            "kaggle_rows": kaggle_rows, "projected_hours": hours, "kaggle_hours": parts[0]["kaggle_hours"]}


def main(bundle: Path | None = None, argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=bundle, required=bundle is None,
                        help="the bundle folder (predict.py passes its own)")
    parser.add_argument("--test-csv", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--devices", type=int, default=0, help="processes, one GPU each (0: every visible GPU)")
    parser.add_argument("--pretrained", help="the base weights (LLMs), if not where params.yaml says")
    parser.add_argument("--work", type=Path, help="folder for the parts (default: a temporary one)")
    args = parser.parse_args(argv)
    from prefbench.data import deal_round_robin

    raw = yaml.safe_load((args.bundle / "params.yaml").read_text())
    is_llm = "kind" not in raw["models"][raw["model"]]
    if not is_llm:  # the tfidf baseline (`kind: tfidf`): CPU processes, no GPU
        gpus = 0
    else:
        import torch  # after argparse: --help stays quick (the GPU count; the stages import the rest)

        gpus = torch.cuda.device_count()
    n = args.devices or max(gpus, 1)
    if gpus and n > gpus:
        raise SystemExit(f"error: --devices {n}: {gpus} GPUs visible")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        params = run_params(args.bundle, args.pretrained, work)
        df = pd.read_csv(args.test_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if n == 1:
            tests = [args.test_csv]  # whole: the predict stage's own batches, its exact submission
        else:
            tests = []
            for k, rows in enumerate(deal_round_robin(np.array(row_lengths(df)), n)):
                tests.append(work / f"test-{k}.csv")
                df.iloc[np.sort(rows)].to_csv(tests[-1], index=False)
        procs = [launch(params, t, args.bundle / "adapter", work, k, gpus) for k, t in enumerate(tests)]
        failed = [k for k, (p, _, _) in enumerate(procs) if p.wait() != 0]
        if failed:
            raise SystemExit(f"error: predict process(es) {failed} failed (see their output above)")
        # Read back as text: the parts' numbers are written unchanged.
        subs = pd.concat([pd.read_csv(s, dtype=str, keep_default_na=False) for _, s, _ in procs])
        sub = subs.set_index("id").loc[df["id"]].reset_index()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sub.to_csv(args.out, index=False)
        parts = [json.loads(m.read_text()) for _, _, m in procs]
    kaggle_rows = raw["predict"]["kaggle_rows"]
    summary = {**projection(parts, len(df), kaggle_rows), "wall_seconds": time.perf_counter() - start}
    print(f"predict.py: {len(df)} rows -> {args.out} with {summary['processes']} process(es) on "
          f"{summary['device']}: {summary['seconds_per_sample']:.5f} s/sample; {kaggle_rows:,} rows would take "
          f"{summary['projected_hours']:.2f} h (Kaggle limit {summary['kaggle_hours']} h).")
    if note := caveat(summary, is_llm):
        print(note)
    print("predict.py summary: " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
