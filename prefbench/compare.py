"""Compare experiments: `dvc exp show --json` -> a Markdown table and a speed-vs-accuracy scatter.

Usage: python -m prefbench.compare [--json exp.json] [--out-md reports/compare.md] [--out-html reports/compare.html]
                                   [--html-template offline.html] [--noise-out metrics/noise.json]
Without --json it runs `dvc exp show --json` itself. One row and one point per experiment (and
per committed baseline), labelled by model: seconds per sample against validation log-loss.

Seed groups: experiments of one baseline commit whose params differ only in SEED_PARAMS are one
group, reported as mean ± sample sd (n) of log_loss and accuracy. `--noise-out` writes, per
model, its largest group as the noise floor that `prefbench.pr_comment` judges changes against
(benchmarks/noise_floor.sh runs the seeds and then this).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = ("model", "log_loss", "log_loss_prior", "accuracy", "seconds_per_sample", "tokens_per_second",
           "params_total", "params_trainable", "max_length", "dtype", "attn_implementation", "quantization",
           "weights", "device")
EVAL = "metrics/eval.json"
PARAMS = "params.yaml"
SEED_PARAMS = ("train.seed", "data.seed")  # what only reshuffles: not sample.seed, which makes other data
NOISE_METRICS = ("log_loss", "accuracy")


def experiments(rows: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json`: one dict per baseline commit or experiment with eval metrics;
    `params` (flat, "train.seed": 0) and `baseline` (the commit's rev) ride along for seed_groups."""
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
            out.append({"experiment": name, **{k: metrics.get(k) for k in COLUMNS},
                        "params": params, "baseline": commit.get("rev")})
    return out


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
        for metric in NOISE_METRICS:
            values = [float(m[metric]) for m in members]
            group[metric] = {"mean": statistics.mean(values), "sd": statistics.stdev(values), "values": values}
        out.append(group)
    return out


def group_labels(groups: list[dict]) -> list[str]:
    """What tells the groups apart: the shared params whose values differ between groups."""
    keys = sorted({k for g in groups for k in g["key"]})
    differ = [k for k in keys if len({json.dumps(g["key"].get(k)) for g in groups}) > 1]
    return [", ".join(f"{k}={g['key'].get(k)}" for k in differ) or "-" for g in groups]


def groups_markdown(groups: list[dict]) -> str:
    header = ("group", "model", "n", *(f"{m} mean ± sd" for m in NOISE_METRICS), "seeds varied")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g, label in zip(groups, group_labels(groups)):
        varied = [k for k in SEED_PARAMS if len({s[k] for s in g["seeds"]}) > 1]
        stats = [f"{g[m]['mean']:.4f} ± {g[m]['sd']:.4f}" for m in NOISE_METRICS]
        lines.append("| " + " | ".join([label, str(g["model"]), str(g["n"]), *stats, ", ".join(varied)]) + " |")
    return "\n".join(lines) + "\n"


def noise_floor(groups: list[dict], command: str) -> dict:
    """Per model, its largest seed group (the first of equal ones): what metrics/noise.json holds."""
    models = {}
    for g in sorted(groups, key=lambda g: -g["n"]):
        if g["model"] in models:
            continue
        models[g["model"]] = {
            "n": g["n"], **{m: {"mean": round(g[m]["mean"], 6), "sd": round(g[m]["sd"], 6)} for m in NOISE_METRICS},
            "seeds": g["seeds"], "experiments": g["experiments"], "devices": g["devices"],
        }
    return {"command": command,
            "about": "seed-to-seed spread of validation metrics: mean and sample sd (ddof=1) over n runs "
                     f"that differ only in {', '.join(SEED_PARAMS)}",
            "models": dict(sorted(models.items()))}


def markdown(exps: list[dict]) -> str:
    header = ("experiment", *COLUMNS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in sorted(exps, key=lambda e: (e["log_loss"] is None, e["log_loss"])):
        lines.append("| " + " | ".join(_fmt(e.get(k)) for k in header) + " |")
    return "\n".join(lines) + "\n"


def scatter_spec(exps: list[dict]) -> dict:
    """Vega-Lite: seconds per sample (log x) vs log-loss, colour = model, label = experiment.

    The same plot as `python -m prefbench.plots` draws: the DVC template
    `.dvc/plots/speed_accuracy.json` filled by DVC's renderer."""
    from prefbench.plots import point, scatter_spec as dvc_scatter

    return dvc_scatter([p for e in exps if (p := point(e["experiment"], e)) is not None])


def html(spec: dict, html_template: str | None = None) -> str:
    """A standalone page, as `dvc plots show` writes it: in the HTML template DVC's config names
    (`.dvc/plots/offline.html`, the libraries inlined: no network), or in `html_template`."""
    from prefbench.plots import SCATTER_ID, page

    return page({SCATTER_ID: spec}, html_template)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return "-" if v is None else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--out-md", default="reports/compare.md")
    parser.add_argument("--out-html", default="reports/compare.html")
    parser.add_argument("--html-template", help="another DVC HTML template (default: the one .dvc/config "
                        "names, .dvc/plots/offline.html)")
    parser.add_argument("--noise-out", help="write the noise floor (per model: its largest seed group) here, "
                        "e.g. metrics/noise.json")
    args = parser.parse_args()
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout
    exps = experiments(json.loads(text))
    if not exps:
        raise SystemExit("error: no experiment with metrics/eval.json in `dvc exp show --json`")
    md = markdown(exps)
    groups = seed_groups(exps)
    if groups:
        md += "\nSeed groups (experiments that differ only in " + ", ".join(SEED_PARAMS) + "):\n\n"
        md += groups_markdown(groups)
    if args.noise_out:
        if not groups:
            raise SystemExit("error: --noise-out: no seed group (2 or more experiments that differ only in "
                             f"{', '.join(SEED_PARAMS)}) in `dvc exp show --json`")
        command = shlex.join(["python", "-m", "prefbench.compare", *sys.argv[1:]])
        Path(args.noise_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.noise_out).write_text(json.dumps(noise_floor(groups, command), indent=2) + "\n")
    template = Path(args.html_template).read_text(encoding="utf-8") if args.html_template else None
    for path, content in ((args.out_md, md), (args.out_html, html(scatter_spec(exps), template))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    print(md)
    print(f"compare: {len(exps)} experiments, {len(groups)} seed groups -> {args.out_md}, {args.out_html}"
          + (f", {args.noise_out}" if args.noise_out else ""))


if __name__ == "__main__":
    main()
