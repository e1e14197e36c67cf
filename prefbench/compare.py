"""Compare experiments: `dvc exp show --json` -> a Markdown table and a speed-vs-accuracy scatter.

Usage: python -m prefbench.compare [--json exp.json] [--out-md reports/compare.md] [--out-html reports/compare.html]
                                   [--html-template offline.html]
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
    """Vega-Lite: seconds per sample (log x) vs log-loss, colour = model, label = experiment.

    The same plot as `python -m prefbench.plots` draws: the DVC template
    `.dvc/plots/speed_accuracy.json` filled by DVC's renderer."""
    from prefbench.plots import point, scatter_spec as dvc_scatter

    return dvc_scatter([p for e in exps if (p := point(e["experiment"], e)) is not None])


def html(spec: dict, html_template: str | None = None) -> str:
    """A standalone page, as `dvc plots show` writes it (vega-embed from the CDN, or inlined by an
    offline `--html-template`: `python -m prefbench.plots --write-html-template PATH`)."""
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
    parser.add_argument("--html-template", help="a DVC HTML template, e.g. the offline one from "
                        "`python -m prefbench.plots --write-html-template PATH`")
    args = parser.parse_args()
    text = Path(args.json).read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True).stdout
    exps = experiments(json.loads(text))
    if not exps:
        raise SystemExit("error: no experiment with metrics/eval.json in `dvc exp show --json`")
    md = markdown(exps)
    template = Path(args.html_template).read_text(encoding="utf-8") if args.html_template else None
    for path, content in ((args.out_md, md), (args.out_html, html(scatter_spec(exps), template))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    print(md)
    print(f"compare: {len(exps)} experiments -> {args.out_md}, {args.out_html}")


if __name__ == "__main__":
    main()
