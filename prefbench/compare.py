"""Compare experiments: `dvc exp show --json` -> a Markdown table and a speed-vs-accuracy scatter.

Usage: python -m prefbench.compare [--json exp.json] [--out-md reports/compare.md] [--out-html reports/compare.html]
Without --json it runs `dvc exp show --json` itself. One row and one point per experiment (and
per committed baseline), labelled by model: seconds per sample against validation log-loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

COLUMNS = ("model", "log_loss", "log_loss_prior", "accuracy", "seconds_per_sample", "tokens_per_second",
           "params_total", "params_trainable", "max_length", "dtype", "attn_implementation", "quantization",
           "weights", "device")
EVAL = "metrics/eval.json"


def experiments(rows: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json`: one dict per baseline commit or experiment with eval metrics."""
    out = []
    for commit in rows:
        candidates = [commit] + [rev for exp in commit.get("experiments") or [] for rev in exp.get("revs") or []]
        for item in candidates:
            data = item.get("data") or {}
            metrics = ((data.get("metrics") or {}).get(EVAL) or {}).get("data")
            if not metrics or data.get("rev") == "workspace":
                continue
            name = item.get("name") or (item.get("rev") or data.get("rev") or "")[:7]
            out.append({"experiment": name, **{k: metrics.get(k) for k in COLUMNS}})
    return out


def markdown(exps: list[dict]) -> str:
    header = ("experiment", *COLUMNS)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in sorted(exps, key=lambda e: (e["log_loss"] is None, e["log_loss"])):
        lines.append("| " + " | ".join(_fmt(e.get(k)) for k in header) + " |")
    return "\n".join(lines) + "\n"


def scatter_spec(exps: list[dict]) -> dict:
    """Vega-Lite: seconds per sample (log x) vs log-loss, colour = model, label = experiment."""
    values = [{k: e[k] for k in ("experiment", "model", "seconds_per_sample", "log_loss")} for e in exps]
    enc = {"x": {"field": "seconds_per_sample", "type": "quantitative", "scale": {"type": "log"},
                 "title": "seconds per sample (validation, timed loop)"},
           "y": {"field": "log_loss", "type": "quantitative", "scale": {"zero": False},
                 "title": "validation log-loss"},
           "color": {"field": "model", "type": "nominal"}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "title": "Speed vs accuracy, one point per experiment", "width": 480, "height": 320,
            "data": {"values": values},
            "layer": [{"mark": {"type": "point", "filled": True, "size": 90}, "encoding": enc},
                      {"mark": {"type": "text", "dx": 8, "align": "left"},
                       "encoding": {**enc, "text": {"field": "experiment"}}}]}


def html(spec: dict) -> str:
    """A standalone page rendered by vega-embed (the same renderer `dvc plots` pages load)."""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>prefbench: speed vs accuracy</title>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-lite@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-embed@6"></script></head>
<body><div id="plot"></div><script>vegaEmbed("#plot", {json.dumps(spec)});</script></body></html>
"""


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
    args = parser.parse_args()
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout
    exps = experiments(json.loads(text))
    if not exps:
        raise SystemExit("error: no experiment with metrics/eval.json in `dvc exp show --json`")
    md = markdown(exps)
    for path, content in ((args.out_md, md), (args.out_html, html(scatter_spec(exps)))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    print(md)
    print(f"compare: {len(exps)} experiments -> {args.out_md}, {args.out_html}")


if __name__ == "__main__":
    main()
