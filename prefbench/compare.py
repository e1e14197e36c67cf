"""Seed groups and the noise floor, from `dvc exp show --json`: what DVC itself does not compute.

Usage: python -m prefbench.compare [--json exp.json] [--noise-out metrics/noise.json]
Without --json it runs `dvc exp show --json` itself.

Seed groups: experiments of one baseline commit whose params differ only in SEED_PARAMS are one
group, reported as mean ± sample sd (n) of log_loss and accuracy. `--noise-out` writes, per
model, its largest group as the noise floor that `prefbench.pr_comment` judges changes against
(benchmarks/noise_floor.sh runs the seeds and then this). The per-experiment table is DVC's
(`dvc exp show --md --sort-by metrics/eval.json:log_loss ...`), the speed-vs-accuracy scatter too
(`dvc plots diff HEAD $(dvc exp ls --name-only)`): see the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

EVAL = "metrics/eval.json"
PARAMS = "params.yaml"
SEED_PARAMS = ("train.seed", "data.seed")  # what only reshuffles: not sample.seed, which makes other data
NOISE_METRICS = ("log_loss", "accuracy")
# Speed: its seed-to-seed spread is timing noise (same shapes, same machine); a group's runs all
# need it, as the quality metrics, only where they all have it.
SPEED = "seconds_per_sample"


def speed_verdict(delta: float | None, noise: float) -> str:
    """A change of seconds_per_sample against the timing noise (seconds per sample, > 0 where
    measured): within noise, or beyond it and which way."""
    if delta is None:
        return "-"
    if delta == 0:
        return "unchanged"
    if noise <= 0:
        return "no timing noise measured"
    if abs(delta) <= noise:
        return "within noise"
    return f"beyond noise ({'slower' if delta > 0 else 'faster'})"


def dvc(*args: str) -> str:
    """Run DVC (the one installed beside prefbench's Python: $PREFBENCH_PYTHON where set, as for the
    stages, else this one); its stdout, or exit naming the command."""
    cmd = [os.environ.get("PREFBENCH_PYTHON") or sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return proc.stdout


def experiments(rows: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json`: one dict per baseline commit or experiment with eval metrics
    (its name as `experiment`, then metrics/eval.json's keys); `params` (flat, "train.seed": 0) and
    `baseline` (the commit's rev) ride along for seed_groups."""
    out = []
    for commit in rows:
        candidates = [commit] + [rev for exp in commit.get("experiments") or [] for rev in exp.get("revs") or []]
        for item in candidates:
            data = item.get("data") or {}
            metrics = ((data.get("metrics") or {}).get(EVAL) or {}).get("data")
            # A failed experiment shows its baseline's metrics beside its own params: skip it.
            if not metrics or data.get("rev") == "workspace" or item.get("error"):
                continue
            name = item.get("name") or (item.get("rev") or data.get("rev") or "")[:7]
            params = flatten(((data.get("params") or {}).get(PARAMS) or {}).get("data") or {})
            out.append({"experiment": name, **metrics, "params": params, "baseline": commit.get("rev")})
    return out


def only(exps: list[dict], names: list[str]) -> list[dict]:
    """The experiments named in `names`; exits naming any that `dvc exp show` lacks (failed ones
    are left out by `experiments`)."""
    missing = sorted(set(names) - {e["experiment"] for e in exps})
    if missing:
        raise SystemExit(f"error: --experiments: no finished experiment named {', '.join(missing)}")
    return [e for e in exps if e["experiment"] in set(names)]


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def seed_groups(exps: list[dict]) -> list[dict]:
    """Experiments of one baseline whose params differ only in SEED_PARAMS, groups of 2 or more.

    An experiment with the same seeds as an earlier one (a queued copy of the baseline) counts
    once, the later one (experiments come after their baseline in `dvc exp show`) kept. Each
    group: key (the params it shares), seeds, experiments, n, and mean/sd/values per metric in
    NOISE_METRICS; sd is the sample standard deviation (ddof=1)."""
    groups: dict[str, dict] = {}
    for e in exps:
        shared = {k: v for k, v in e["params"].items() if k not in SEED_PARAMS}
        seeds = tuple(e["params"].get(k) for k in SEED_PARAMS)
        key = json.dumps([e["baseline"], shared], sort_keys=True)
        groups.setdefault(key, {"key": shared, "members": {}})["members"][seeds] = e
    out = []
    for g in groups.values():
        members = [m for m in g["members"].values() if all(m.get(k) is not None for k in NOISE_METRICS)]
        if len(members) < 2:
            continue
        group = {"key": g["key"], "model": members[0]["model"], "n": len(members),
                 "experiments": [m["experiment"] for m in members],
                 "seeds": [{k: m["params"].get(k) for k in SEED_PARAMS} for m in members],
                 "devices": sorted({str(m.get("device")) for m in members})}
        for metric in NOISE_METRICS + ((SPEED,) if all(m.get(SPEED) is not None for m in members) else ()):
            values = [float(m[metric]) for m in members]
            group[metric] = {"mean": statistics.mean(values), "sd": statistics.stdev(values), "values": values}
        out.append(group)
    return out


def group_labels(groups: list[dict]) -> list[str]:
    """What tells the groups apart: the shared params whose values differ between groups."""
    keys = sorted({k for g in groups for k in g["key"]})
    differ = [k for k in keys if len({json.dumps(g["key"].get(k)) for g in groups}) > 1]
    return [", ".join(f"{k}={g['key'].get(k)}" for k in differ) or "-" for g in groups]


def speed_against(group: dict, first: dict | None) -> str:
    """`group`'s mean seconds_per_sample against `first` (the model's first group), judged against
    twice the larger of their seed-to-seed sds (the timing noise both measured)."""
    if first is None or group is first:
        return "-"
    if SPEED not in group or SPEED not in first:
        return "no timing"
    delta = group[SPEED]["mean"] - first[SPEED]["mean"]
    return speed_verdict(delta, 2 * max(group[SPEED]["sd"], first[SPEED]["sd"]))


def groups_markdown(groups: list[dict]) -> str:
    header = ("group", "model", "n", *(f"{m} mean ± sd" for m in NOISE_METRICS), f"{SPEED} mean ± sd",
              "speed vs the model's first group", "seeds varied")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    firsts: dict = {}
    for g, label in zip(groups, group_labels(groups)):
        first = firsts.setdefault(g["model"], g)
        varied = [k for k in SEED_PARAMS if len({s[k] for s in g["seeds"]}) > 1]
        stats = [f"{g[m]['mean']:.4f} ± {g[m]['sd']:.4f}" for m in NOISE_METRICS]
        speed = f"{g[SPEED]['mean']:.5f} ± {g[SPEED]['sd']:.5f}" if SPEED in g else "-"
        lines.append("| " + " | ".join([label, str(g["model"]), str(g["n"]), *stats, speed,
                                         speed_against(g, first), ", ".join(varied)]) + " |")
    return "\n".join(lines) + "\n"


def noise_floor(groups: list[dict], command: str) -> dict:
    """Per model, its largest seed group (the first of equal ones): what metrics/noise.json holds."""
    models = {}
    for g in sorted(groups, key=lambda g: -g["n"]):
        if g["model"] in models:
            continue
        models[g["model"]] = {
            "n": g["n"], **{m: {"mean": round(g[m]["mean"], 6), "sd": round(g[m]["sd"], 6)}
                            for m in (*NOISE_METRICS, SPEED) if m in g},
            "seeds": g["seeds"], "experiments": g["experiments"], "devices": g["devices"],
        }
    return {"command": command,
            "about": "seed-to-seed spread of validation metrics: mean and sample sd (ddof=1) over n runs "
                     f"that differ only in {', '.join(SEED_PARAMS)}",
            "models": dict(sorted(models.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--rev", help="the experiments of this commit (`dvc exp show --rev`; default: HEAD's): "
                        "queued experiments belong to the commit they were queued on")
    parser.add_argument("--noise-out", help="write the noise floor (per model: its largest seed group) here, "
                        "e.g. metrics/noise.json")
    parser.add_argument("--experiments", help="only these experiments, by name, comma-separated "
                        "(benchmarks/noise_floor.sh: the ones it queued)")
    args = parser.parse_args()
    text = Path(args.json).read_text() if args.json else dvc("exp", "show", "--json", *(["--rev", args.rev] if args.rev else []))
    exps = experiments(json.loads(text))
    if args.experiments:
        exps = only(exps, args.experiments.split(","))
    groups = seed_groups(exps)
    if not groups:
        raise SystemExit(f"error: no seed group (2 or more experiments of one commit that differ only in "
                         f"{', '.join(SEED_PARAMS)}) among the {len(exps)} experiments of `dvc exp show --json`")
    print(f"Seed groups (experiments that differ only in {', '.join(SEED_PARAMS)}):\n")
    print(groups_markdown(groups))
    if args.noise_out:
        command = shlex.join(["python", "-m", "prefbench.compare", *sys.argv[1:]])
        Path(args.noise_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.noise_out).write_text(json.dumps(noise_floor(groups, command), indent=2) + "\n")
        print(f"compare: noise floor of {', '.join(sorted({g['model'] for g in groups}))} -> {args.noise_out}")


if __name__ == "__main__":
    main()
