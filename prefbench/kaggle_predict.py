"""The `predict.py` of a bundle (prefbench.bundle): a submission.csv on Kaggle's 1 or 2 GPUs, offline.

Usage (in the notebook, after installing the bundle's wheel):
    python /kaggle/input/<bundle>/predict.py --test-csv /kaggle/input/.../test.csv --out submission.csv
        [--devices N] [--pretrained PATH] [--placement shard|per-gpu] [--work DIR]

One `python -m stages.predict` process per GPU (--devices, default: every visible GPU, at least
one process), each seeing only its GPU: the test rows are dealt to them by length, longest first,
in turn (prefbench.data.deal_round_robin, as the predict stage deals rows to GPUs), so each gets
the same mix of long and short rows; a tfidf bundle runs --devices CPU processes (default one). The
parts are merged back into the input's row order. With one process the test file is handed over
whole: the submission is byte for byte the predict stage's. At the end it prints the hours the
hidden test set (predict.kaggle_rows) would take.

A blend's bundle (blend.json beside members/<name>/, each a one-model bundle's files) runs every
member and writes their probabilities mixed with the weights (prefbench.blend's mix: each row
renormalised, 6 decimals). --placement shard (the default: the one-model way, so the same code
path and any number of GPUs) runs the members one after the other, each over every GPU, and
projects the sum of their hours; per-gpu runs each LLM member on a GPU of its own, all at once
(one model load per member instead of one per GPU; it needs a GPU per LLM member) and projects
the slowest member's hours. Which is faster on Kaggle's 2xT4 has not been measured: time both there.
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

BLEND_FILE = "blend.json"  # a blend's bundle (prefbench.bundle.BLEND_FILE): members and weights
PLACEMENTS = ("shard", "per-gpu")
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


def launch(params: Path, test_csv: Path, adapter: Path, work: Path, k: int, gpus: int,
           gpu: int | None = None) -> tuple[subprocess.Popen, Path, Path]:
    """Process k's predict stage, on GPU `gpu` (default: k) where there are GPUs."""
    sub, metrics = work / f"submission-{k}.csv", work / f"predict-{k}.json"
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(k if gpu is None else gpu)  # one GPU per process
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


def start_model(model: Path, test_csv: Path, df: pd.DataFrame, n: int, gpus: int, pretrained: str | None,
                work: Path, first_gpu: int = 0) -> list[tuple[subprocess.Popen, Path, Path]]:
    """The predict processes of one model (a one-model bundle, or a blend's member folder): `n`
    of them, rows dealt by length, process k on GPU first_gpu + k."""
    from prefbench.data import deal_round_robin

    params = run_params(model, pretrained, work)
    if n == 1:
        tests = [test_csv]  # whole: the predict stage's own batches, its exact submission
    else:
        tests = []
        for k, rows in enumerate(deal_round_robin(np.array(row_lengths(df)), n)):
            tests.append(work / f"test-{k}.csv")
            df.iloc[np.sort(rows)].to_csv(tests[-1], index=False)
    return [launch(params, t, model / "adapter", work, k, gpus, first_gpu + k) for k, t in enumerate(tests)]


def finish_model(procs: list[tuple[subprocess.Popen, Path, Path]], df: pd.DataFrame, out: Path,
                 what: str = "predict") -> list[dict]:
    """Waits for a model's processes; its submission in the input's row order into `out`, and
    each process's metrics."""
    failed = [k for k, (p, _, _) in enumerate(procs) if p.wait() != 0]
    if failed:
        raise SystemExit(f"error: {what} process(es) {failed} failed (see their output above)")
    # Read back as text: the parts' numbers are written unchanged.
    subs = pd.concat([pd.read_csv(s, dtype=str, keep_default_na=False) for _, s, _ in procs])
    sub = subs.set_index("id").loc[df["id"]].reset_index()
    out.parent.mkdir(parents=True, exist_ok=True)
    sub.to_csv(out, index=False)
    return [json.loads(m.read_text()) for _, _, m in procs]


def device_count(is_llm: bool) -> int:
    """Visible GPUs; 0 for a tfidf model (CPU processes)."""
    if not is_llm:
        return 0
    import torch  # after argparse: --help stays quick (the GPU count; the stages import the rest)

    return torch.cuda.device_count()


def main(bundle: Path | None = None, argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=bundle, required=bundle is None,
                        help="the bundle folder (predict.py passes its own)")
    parser.add_argument("--test-csv", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--devices", type=int, default=0, help="processes, one GPU each (0: every visible GPU)")
    parser.add_argument("--pretrained", help="the base weights (LLMs), if not where params.yaml says; "
                        "a blend: NAME=PATH, NAME a member or a model, comma-separated")
    parser.add_argument("--placement", choices=PLACEMENTS, default="shard",
                        help="a blend's members: shard (each in turn over every GPU) or per-gpu (each LLM "
                        "member on a GPU of its own, all at once); which is faster is to be measured")
    parser.add_argument("--work", type=Path, help="folder for the parts (default: a temporary one)")
    args = parser.parse_args(argv)
    if (args.bundle / BLEND_FILE).is_file():
        return main_blend(args)
    raw = yaml.safe_load((args.bundle / "params.yaml").read_text())
    is_llm = "kind" not in raw["models"][raw["model"]]  # the tfidf baseline (`kind: tfidf`): CPU processes
    gpus = device_count(is_llm)
    n = args.devices or max(gpus, 1)
    if gpus and n > gpus:
        raise SystemExit(f"error: --devices {n}: {gpus} GPUs visible")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        df = pd.read_csv(args.test_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        procs = start_model(args.bundle, args.test_csv, df, n, gpus, args.pretrained, work)
        parts = finish_model(procs, df, args.out)
    kaggle_rows = raw["predict"]["kaggle_rows"]
    summary = {**projection(parts, len(df), kaggle_rows), "wall_seconds": time.perf_counter() - start}
    print(f"predict.py: {len(df)} rows -> {args.out} with {summary['processes']} process(es) on "
          f"{summary['device']}: {summary['seconds_per_sample']:.5f} s/sample; {kaggle_rows:,} rows would take "
          f"{summary['projected_hours']:.2f} h (Kaggle limit {summary['kaggle_hours']} h).")
    if note := caveat(summary, is_llm):
        print(note)
    print("predict.py summary: " + json.dumps(summary))
    return summary


def member_pretrained(spec: str | None, name: str, model: str) -> str | None:
    """--pretrained NAME=PATH,... for one member: its own name first, then its model's."""
    paths = dict(item.split("=", 1) for item in (spec or "").split(",") if "=" in item)
    return paths.get(name, paths.get(model))


def main_blend(args: argparse.Namespace) -> dict:
    """A blend's bundle: every member predicts the test rows (--placement), their probabilities
    are mixed with blend.json's weights (prefbench.blend: each row renormalised, 6 decimals), and
    the projection is the whole blend's: with shard the members run one after the other (the sum
    of their hours), with per-gpu side by side (the slowest member's)."""
    from prefbench.blend import Member, blend_submission, test_arrays, write_submission

    spec = json.loads((args.bundle / BLEND_FILE).read_text())
    members = spec["members"]
    llms = [m for m in members if m["kind"] != "tfidf"]
    gpus = device_count(bool(llms))
    if args.placement == "per-gpu":
        if args.devices:
            raise SystemExit("error: --devices is for --placement shard (per-gpu: one GPU per LLM member)")
        if gpus and len(llms) > gpus:
            raise SystemExit(f"error: --placement per-gpu: {len(llms)} LLM members, {gpus} GPUs visible: "
                             "use --placement shard")
    elif gpus and args.devices > gpus:
        raise SystemExit(f"error: --devices {args.devices}: {gpus} GPUs visible")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        df = pd.read_csv(args.test_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        parts, subs = {}, {}
        running = []
        for m in members:
            member_gpus = gpus if m["kind"] != "tfidf" else 0
            mwork = work / m["name"]
            mwork.mkdir(parents=True, exist_ok=True)
            subs[m["name"]] = mwork / "submission.csv"
            pretrained = member_pretrained(args.pretrained, m["name"], m["model"])
            if args.placement == "per-gpu":  # all at once, the k-th LLM member on GPU k
                gpu = llms.index(m) if m in llms else 0
                running.append((m, start_model(args.bundle / m["dir"], args.test_csv, df, 1, member_gpus,
                                               pretrained, mwork, first_gpu=gpu)))
            else:  # one member after the other, each over every GPU (a one-model bundle's way)
                n = args.devices or max(member_gpus, 1)
                procs = start_model(args.bundle / m["dir"], args.test_csv, df, n, member_gpus, pretrained, mwork)
                parts[m["name"]] = finish_model(procs, df, subs[m["name"]], f"member {m['name']}'s predict")
        for m, procs in running:
            parts[m["name"]] = finish_model(procs, df, subs[m["name"]], f"member {m['name']}'s predict")
        read = [Member(m["name"], pd.DataFrame(), pd.read_csv(subs[m["name"]], dtype=str, keep_default_na=False))
                for m in members]
        ids, probs = test_arrays(read)
        write_submission(blend_submission(ids, probs, [m["weight"] for m in members]), args.out)
    kaggle_rows = spec["kaggle_rows"]
    projected = {m["name"]: projection(parts[m["name"]], len(df), kaggle_rows) for m in members}
    hours = [p["projected_hours"] for p in projected.values()]
    total = sum(hours) if args.placement == "shard" else max(hours)
    summary = {"model": "blend", "placement": args.placement, "rows": len(df), "kaggle_rows": kaggle_rows,
               "projected_hours": total, "kaggle_hours": spec["kaggle_hours"],
               "device": next(iter(projected.values()))["device"],
               "processes": sum(p["processes"] for p in projected.values()),
               "weights": {m["name"]: m["weight"] for m in members}, "members": projected,
               "wall_seconds": time.perf_counter() - start}
    for m in members:
        p = projected[m["name"]]
        print(f"predict.py: member {m['name']} ({m['model']}, weight {m['weight']:.4f}): {p['processes']} "
              f"process(es) on {p['device']}, {p['seconds_per_sample']:.5f} s/sample, projected "
              f"{p['projected_hours']:.2f} h for {kaggle_rows:,} rows")
    how = "the members one after the other: the sum" if args.placement == "shard" else \
        "the members side by side: the slowest"
    print(f"predict.py: {len(df)} rows -> {args.out}, a blend of {len(members)} members; {kaggle_rows:,} rows would "
          f"take {total:.2f} h ({how}; Kaggle limit {spec['kaggle_hours']} h).")
    if note := caveat(summary, bool(llms)):
        print(note)
    print("predict.py summary: " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
