"""Scale: the prepare and tokenize stages on 100,000 generated rows with some 10 MB cells, in
bounded memory and linear time.

Usage: python -m benchmarks.scale [--rows 25000,50000,100000] [--huge 5] [--out benchmarks/results/scale-cpu.json]

For each row count it writes a competition-format train.csv (prefbench.sample's generator; `--huge`
rows per 100,000 get a 10 MB response, as scraped arena dumps have: the same mix at every size), then runs `python -m stages.prepare`
and `python -m stages.tokenize` (the default llama3 entry: the tiny model's tokenizer, max_length
64) as DVC runs them, each in a fresh interpreter, and records per stage the wall seconds, the
CPU seconds (user + system: what other work on a shared machine changes least) per 1,000 rows and
the peak resident set (the child's ru_maxrss, GB). Linear time: the CPU seconds per 1,000 rows stay
about the same as the rows grow (`linear_ratio`: the largest run's per-row CPU time over the
smallest's). Bounded memory: the peak RSS against the goal (GOAL_GB).
A benchmark, not a test: its numbers depend on the machine (recorded with the commit and versions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GOAL_GB = 2.0  # peak resident set a stage may take at 100,000 rows
HUGE_CHARS = 10_000_000  # a 10 MB cell (one response turn)


def write_csv(path: Path, rows: int, huge: int) -> None:
    from prefbench.sample import generate_arena_sample

    df = generate_arena_sample(rows, 0)
    for i in range(huge):  # spread over the file: rows 0, n/huge, 2n/huge, ...
        df.loc[i * rows // huge, "response_a"] = json.dumps(["word " * (HUGE_CHARS // 5)])
    df.to_csv(path, index=False)


def run_stage(name: str, args: list[str], cwd: Path) -> dict:
    """Run one stage in a fresh interpreter, as DVC does: its wall seconds and its peak resident
    set (os.wait4: the rusage of that child alone)."""
    start = time.perf_counter()
    with open(cwd / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"scale: stages.{name} failed:\n{(cwd / f'{name}.log').read_text()[-3000:]}")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3)}  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="25000,50000,100000")
    parser.add_argument("--huge", type=int, default=5, help="rows with a 10 MB response, per 100,000 rows")
    parser.add_argument("--out", default="benchmarks/results/scale-cpu.json")
    args = parser.parse_args()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for cfg in raw["models"].values():
        if "pretrained" in cfg:
            cfg["pretrained"] = str(ROOT / cfg["pretrained"])
    runs = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        for rows in map(int, args.rows.split(",")):
            csv = work / "train.csv"
            huge = max(1, round(args.huge * rows / 100_000))
            write_csv(csv, rows, huge)
            run = {"rows": rows, "huge_cells": huge, "csv_mb": round(csv.stat().st_size / 1e6, 1)}
            run["prepare"] = run_stage("prepare", ["--params", "params.yaml", "--csv", str(csv), "--out", "prepared",
                                               "--metrics", "data.json"], work)
            run["tokenize"] = run_stage("tokenize", ["--params", "params.yaml", "--prepared", "prepared",
                                                     "--out", "tokens", "--metrics", "tokens.json"], work)
            data = json.loads((work / "data.json").read_text())
            run["rows_kept"], run["rows_dropped"] = data["rows_kept"], data["rows_dropped"]
            for stage in ("prepare", "tokenize"):
                run[stage]["cpu_seconds_per_1000_rows"] = round(run[stage]["cpu_seconds"] / rows * 1000, 3)
            print(json.dumps(run), flush=True)
            runs.append(run)
    import pandas
    import pyarrow
    import tokenizers
    import transformers

    first, last = runs[0], runs[-1]
    result = {
        "benchmark": "benchmarks/scale.py", "command": " ".join(["python -m benchmarks.scale", *sys.argv[1:]]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "versions": {"python": platform.python_version(), "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "model": raw["model"], "max_length": raw["models"][raw["model"]]["max_length"], "goal_peak_rss_gb": GOAL_GB,
        "runs": runs,
        "linear_ratio": {s: round(last[s]["cpu_seconds_per_1000_rows"] / first[s]["cpu_seconds_per_1000_rows"], 2)
                         for s in ("prepare", "tokenize")},
        "peak_rss_gb": max(r[s]["peak_rss_gb"] for r in runs for s in ("prepare", "tokenize")),
    }
    result["within_goal"] = result["peak_rss_gb"] <= GOAL_GB
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"scale: peak RSS {result['peak_rss_gb']} GB (goal {GOAL_GB}); CPU seconds per 1,000 rows, largest over smallest "
          f"run: {result['linear_ratio']} -> {args.out}")


if __name__ == "__main__":
    main()
