"""The pull-request review comment: this checkout's params and metrics against a base revision.

Usage: python -m prefbench.pr_comment --base origin/main [--out pr-comment.md]

Run it after `dvc repro`: it compares the workspace (the freshly reproduced metrics) with the
base's committed ones, through `dvc params diff --md BASE` and `dvc metrics diff --md BASE`, then
judges the log_loss and accuracy changes (`dvc metrics diff --json BASE`) against the committed
noise floor (metrics/noise.json, written by benchmarks/noise_floor.sh): a change smaller than two
seed-to-seed standard deviations of the model in question is "within noise". It writes one
Markdown comment starting with a marker line, so that the workflow
(.github/workflows/pr.yml) can find its earlier comment and update it in place. The same command
works locally: `dvc repro && python -m prefbench.pr_comment --base main`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from prefbench.compare import EVAL, NOISE_METRICS, SPEED, dvc, speed_verdict

MARKER = "<!-- prefbench-pr-review -->"
NOISE = "metrics/noise.json"  # prefbench.compare --noise-out writes it (benchmarks/noise_floor.sh)
TIMING_NOTE = ("Timings (`seconds_per_sample`, `samples_per_second`, `*tokens_per_second`, `*_seconds`, "
               "`peak_memory_gb`) are measured on the machine that ran `dvc repro`, the base's on the "
               "machine that committed them: compare quality metrics freely, timings only on one machine.")


def table_or_none(md: str) -> str | None:
    """A `dvc ... diff --md` table, or None when it has no row (DVC prints only the header then)."""
    rows = [line for line in md.strip().splitlines() if line.startswith("|")]
    return "\n".join(rows) if len(rows) > 2 else None


def run_link() -> str:
    """A link to the GitHub Actions run, when run there."""
    server, repo, run = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    return f" ([workflow run]({server}/{repo}/actions/runs/{run}))" if server and repo and run else ""


def noise_section(diff: dict, noise: dict | None, current: dict, base: str) -> list[str]:
    """The log_loss and accuracy changes of `diff` (`dvc metrics diff --json`) against two sample
    sd of the seed group in `noise` (metrics/noise.json) of the model of `current` (the workspace's
    metrics/eval.json): Markdown lines."""
    model = current.get("model")
    if noise is None:
        return [f"No noise floor is committed (`{NOISE}`): run `bash benchmarks/noise_floor.sh` to judge "
                "changes against the seed-to-seed spread."]
    floor = noise.get("models", {}).get(model)
    if floor is None:
        return [f"`{NOISE}` has no seed group for model `{model}`: changes are not judged against noise."]
    changes = diff.get(EVAL) or {}
    lines = [f"**Against the noise floor** (`{NOISE}`: {model}'s validation metrics over {floor['n']} runs that "
             "differ only in their seeds; a change smaller than 2 sd is within noise)",
             "",
             f"| Metric | {base} | workspace | Change | seeds: mean ± sd (n) | 2 sd | Verdict |",
             "|---|---|---|---|---|---|---|"]
    for metric in NOISE_METRICS:
        mean, sd = floor[metric]["mean"], floor[metric]["sd"]
        change = changes.get(metric)
        if change is None:  # dvc metrics diff lists changed metrics only
            change = {"old": current.get(metric), "new": current.get(metric), "diff": 0}
        old, new, delta = change.get("old"), change.get("new"), change.get("diff")
        if delta is None:  # new or removed metric
            verdict = "-"
        elif delta == 0:
            verdict = "unchanged"
        else:
            verdict = "within noise" if abs(delta) < 2 * sd else "beyond noise"
        cells = [metric, _num(old), _num(new), _num(delta), f"{mean:.4f} ± {sd:.4f} ({floor['n']})",
                 f"{2 * sd:.4f}", verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + speed_row(changes, floor, current)


def speed_row(changes: dict, floor: dict, current: dict) -> list[str]:
    """seconds_per_sample's change against the timing noise: the larger of 2 sd of the noise
    floor's runs (where metrics/noise.json has them) and the half-ranges of both runs' timed passes
    (eval.json's timing_noise, relative, times the run's seconds_per_sample; prefbench.timing)."""
    change = changes.get(SPEED) or {"old": current.get(SPEED), "new": current.get(SPEED), "diff": 0}
    old, new, delta = change.get("old"), change.get("new"), change.get("diff")
    spread = changes.get("timing_noise")  # listed when it changed; the base's is then its "old"
    noise_old, noise_new = (spread["old"] if spread else current.get("timing_noise")), current.get("timing_noise")
    passes = sum((r or 0) * (v or 0) for r, v in ((noise_old, old), (noise_new, new)))
    seeds = floor.get(SPEED)
    noise = max(passes, 2 * seeds["sd"] if seeds else 0.0)
    seeds_cell = f"{seeds['mean']:.5f} ± {seeds['sd']:.5f} ({floor['n']})" if seeds else "-"
    cells = [SPEED, _num(old), _num(new), _num(delta), seeds_cell, f"{noise:.5f}", speed_verdict(delta, noise)]
    return ["| " + " | ".join(cells) + " |", "",
            f"`{SPEED}`'s noise (the 2 sd column) is the larger of 2 sd of the seed runs and the spread of "
            "both runs' timed passes (`timing_noise`: CPU timings are the median of several passes at a "
            "fixed thread count, `threads`)."]


def _num(v) -> str:
    return "-" if v is None else str(round(v, 5))  # as `dvc metrics diff --md` rounds: 5 decimals


def read_json(path: str) -> dict | None:
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


def build(base: str, head: str = "this PR") -> str:
    params = table_or_none(dvc("params", "diff", "--md", base))
    metrics = table_or_none(dvc("metrics", "diff", "--md", base))
    noise = noise_section(json.loads(dvc("metrics", "diff", "--json", base) or "{}"), read_json(NOISE),
                          read_json(EVAL) or {}, base)
    parts = [MARKER,
             f"### prefbench: {head} against `{base}`",
             "",
             f"`dvc repro` of the CPU default pipeline{run_link()}, then the diffs below "
             "(`workspace` = the reproduced run).",
             "",
             f"**Params** (`dvc params diff --md {base}`)",
             "",
             params or f"No params changed against `{base}`.",
             "",
             f"**Metrics** (`dvc metrics diff --md {base}`)",
             "",
             metrics or f"No metric changed against `{base}`.",
             "",
             *noise,
             ""]
    if metrics:
        parts += [TIMING_NOTE, ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare with (origin/main on CI)")
    parser.add_argument("--head", default="this PR", help="what the workspace is, for the heading")
    parser.add_argument("--out", help="write the comment here (default: stdout only)")
    args = parser.parse_args(argv)
    body = build(args.base, args.head)
    if args.out:
        Path(args.out).write_text(body, encoding="utf-8")
    print(body)


if __name__ == "__main__":
    main()
