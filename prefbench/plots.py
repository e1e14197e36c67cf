"""Every plot of the pipeline on one page: `dvc plots show` / `dvc plots diff` (training loss,
learning rate, confusion matrix, reliability) plus the speed-vs-accuracy scatter, one point per
revision or experiment, labelled by name and coloured by model.

Usage:
  python -m prefbench.plots                         # like `dvc plots show`; scatter: every experiment
  python -m prefbench.plots HEAD gemma2             # like `dvc plots diff HEAD gemma2`: one point each
  python -m prefbench.plots --json ...              # {plot id: Vega-Lite spec} on stdout

The scatter is DVC's own renderer (dvc_render) with the template `.dvc/plots/speed_accuracy.json`:
`dvc plots` itself cannot draw it from `metrics/eval.json`, a single JSON object (DVC plots need an
array of records), nor put every experiment of `dvc exp show` on it. The page is filled the way
`dvc plots show` fills its own, in the HTML template DVC's config names: `.dvc/plots/offline.html`,
with vega, vega-lite and vega-embed inlined (no network; `python -m scripts.offline_template`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

EVAL = "metrics/eval.json"
SCATTER_ID = "speed_accuracy"
DVC_SCATTER = "metrics/speed_accuracy.json"  # the evaluate stage's one-record file, a dvc plot
SCATTER_TEMPLATE = "speed_accuracy"
SCATTER_TITLE = "Speed vs accuracy, one point per experiment"
X, Y = "seconds_per_sample", "log_loss"
X_LABEL = "seconds per sample (validation, timed loop, log scale)"
Y_LABEL = "validation log-loss"
# Fields a scatter point carries (shown in its tooltip); `rev` is its label.
POINT_FIELDS = ("model", X, Y, "accuracy", "log_loss_prior", "params_total", "max_length", "dtype",
                "quantization", "device")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the scatter

def template_dir() -> str:
    """`.dvc/plots` of the repo in the current directory, else of the repo prefbench lives in."""
    for root in (Path.cwd(), PACKAGE_ROOT):
        folder = root / ".dvc" / "plots"
        if (folder / f"{SCATTER_TEMPLATE}.json").is_file():
            return str(folder)
    raise FileNotFoundError(f".dvc/plots/{SCATTER_TEMPLATE}.json not found (run from the prefbench repo)")


def point(name: str, metrics: dict) -> dict | None:
    """One scatter point from a metrics/eval.json dict; None if it lacks speed or log-loss."""
    if not isinstance(metrics.get(X), (int, float)) or not isinstance(metrics.get(Y), (int, float)):
        return None
    return {"rev": name, **{k: metrics.get(k) for k in POINT_FIELDS}}


def scatter_spec(points: list[dict]) -> dict:
    """Vega-Lite spec of the scatter: the DVC template filled by DVC's renderer (dvc_render)."""
    from dvc_render import VegaRenderer

    renderer = VegaRenderer([dict(p) for p in points], SCATTER_ID, template=SCATTER_TEMPLATE,
                            template_dir=template_dir(), x=X, y=Y, x_label=X_LABEL, y_label=Y_LABEL,
                            title=SCATTER_TITLE)
    return renderer.get_filled_template()


# ---------------------------------------------------------------- DVC

def _dvc(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return proc.stdout


def dvc_plot_specs(revs: list[str]) -> dict[str, dict]:
    """plot id -> filled Vega-Lite spec, from `dvc plots show --json` (no revs) or `dvc plots diff --json`."""
    out = json.loads(_dvc("plots", "diff", "--json", *revs) if revs else _dvc("plots", "show", "--json"))
    for err in out.get("errors") or []:
        print(f"warning: dvc plots: {err.get('name')} at {err.get('rev')}: {err.get('msg')}", file=sys.stderr)
    specs = {}
    for plot_id, entries in (out.get("data") or {}).items():
        for i, entry in enumerate(entries):
            if entry.get("type") == "vega" and entry.get("content"):
                specs[plot_id if i == 0 else f"{plot_id} ({i})"] = entry["content"]
    return specs


def diff_revisions(revs: list[str]) -> list[str]:
    """The revisions `dvc plots diff REVS` draws: one rev is compared against the workspace."""
    return [*revs, "workspace"] if len(revs) == 1 else list(revs)


def points_for_revs(revs: list[str]) -> list[dict]:
    """One point per revision (branch, tag, commit, experiment name or `workspace`)."""
    import dvc.api

    points = []
    for rev in revs:
        try:
            metrics = dvc.api.metrics_show(EVAL, rev=None if rev == "workspace" else rev)
        except Exception as e:  # noqa: BLE001 - a rev without metrics is skipped, not fatal
            print(f"warning: no {EVAL} at {rev}: {e}", file=sys.stderr)
            continue
        if (p := point(rev, metrics)) is not None:
            points.append(p)
    return points


def points_for_experiments() -> list[dict]:
    """One point per baseline commit and experiment in `dvc exp show`, plus the workspace when its
    metrics differ from HEAD's (after a `dvc repro` that is not committed yet)."""
    from prefbench.compare import experiments

    rows = json.loads(_dvc("exp", "show", "--json"))
    points = [p for e in experiments(rows) if (p := point(e["experiment"], e))]
    workspace = next((r for r in rows if (r.get("rev") or (r.get("data") or {}).get("rev")) == "workspace"), None)
    metrics = (((workspace or {}).get("data") or {}).get("metrics") or {}).get(EVAL, {}).get("data")
    if metrics and (p := point("workspace", metrics)):
        same = [q for q in points if {k: q[k] for k in POINT_FIELDS} == {k: p[k] for k in POINT_FIELDS}]
        if not same:
            points.insert(0, p)
    return points


def collect(revs: list[str]) -> dict[str, dict]:
    """Every plot: DVC's (in DVC's order), then the speed-vs-accuracy scatter. DVC's own scatter
    (metrics/speed_accuracy.json: the revisions asked for) gives way to this one, which without
    revisions holds every experiment of `dvc exp show`."""
    specs = {k: v for k, v in dvc_plot_specs(revs).items() if not k.startswith(DVC_SCATTER)}
    points = points_for_revs(diff_revisions(revs)) if revs else points_for_experiments()
    if points:
        specs[SCATTER_ID] = scatter_spec(points)
    else:
        print(f"warning: no {EVAL} with {X} and {Y}: no speed-vs-accuracy scatter", file=sys.stderr)
    return specs


# ---------------------------------------------------------------- the page

def html_template() -> str | None:
    """The HTML template `dvc plots show` fills here: `plots.html_template` of the DVC config
    (relative to `.dvc/`, as DVC resolves it) of the repo in the current directory, else of the
    repo prefbench lives in; this repo's is the offline page `.dvc/plots/offline.html`. None
    (dvc_render's own page, scripts from the CDN) if neither sets one."""
    from dvc.config import Config
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        dvc_dir = Repo.find_dvc_dir()
    except NotDvcRepoError:
        dvc_dir = PACKAGE_ROOT / ".dvc"
        if not dvc_dir.is_dir():
            return None
    config = Config(dvc_dir=str(dvc_dir))
    path = config.get("plots", {}).get("html_template")
    return Path(config.dvc_dir, path).read_text(encoding="utf-8") if path else None


def page(specs: dict[str, dict], template: str | None = None) -> str:
    """The HTML page `dvc plots show` writes (dvc_render's HTML and VegaRenderer.DIV), for `specs`,
    in `template` (default: the one DVC's config names, see html_template())."""
    from dvc_render import VegaRenderer
    from dvc_render.html import HTML

    document = HTML(template or html_template()).with_scripts(VegaRenderer.SCRIPTS)
    for i, (plot_id, spec) in enumerate(specs.items()):
        div_id = "plot" + str(i) + "_" + re.sub(r"[^A-Za-z0-9_]", "_", plot_id)
        partial = json.dumps(spec).replace("</", "<\\/")
        document.with_element(VegaRenderer.DIV.format(id=div_id, partial=partial))
    return document.embed()


def write_page(path: Path, specs: dict[str, dict], template: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page(specs, template), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*", help="as for `dvc plots diff` (none: `dvc plots show`)")
    parser.add_argument("-o", "--out", default="dvc_plots/prefbench", help="folder for index.html")
    parser.add_argument("--html-template", help="a DVC HTML template to fill, as `dvc plots show "
                        "--html-template` (default: DVC's config plots.html_template, the offline page)")
    parser.add_argument("--json", action="store_true", help="print {plot id: Vega-Lite spec}, write no page")
    args = parser.parse_args(argv)
    specs = collect(args.revisions)
    if args.json:
        print(json.dumps(specs))
        return
    template = Path(args.html_template).read_text(encoding="utf-8") if args.html_template else None
    path = write_page(Path(args.out) / "index.html", specs, template)
    print(f"plots: {', '.join(specs)}")
    print(path.resolve().as_uri())


if __name__ == "__main__":
    main()
