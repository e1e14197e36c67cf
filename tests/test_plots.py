"""Plots: `dvc plots show` / `dvc plots diff` on a git copy of the repo draw the training loss, the
learning rate, the confusion matrix, the reliability curve and the speed-vs-accuracy scatter (one
point per revision) from the committed default run. No pipeline run: the committed metrics/,
dvclive/ files are the data; a second revision is a commit with another metrics/eval.json. Pages
are offline: `.dvc/config` names `.dvc/plots/offline.html` (vega, vega-lite, vega-embed inlined)
as DVC's HTML template; `scripts/offline_template.py` writes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.gitcopy import dvc, git_commit, git_copy, sh

LOSS = "dvclive/plots/metrics/train/loss.tsv"
LR = "dvclive/plots/metrics/train/learning_rate.tsv"
CONFUSION = "metrics/predictions.csv"
CALIBRATION = "metrics/calibration.csv"
# plot id -> fields every data row must carry
EXPECTED = {LOSS: ("step", "loss"), LR: ("step", "learning_rate"), CONFUSION: ("actual", "predicted"),
            CALIBRATION: ("predicted", "observed")}


OFFLINE = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"


def rows(spec: dict) -> list[dict]:
    return spec["data"]["values"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git copy (branch main = the committed default run) plus branch `other`: one commit whose
    metrics/eval.json is another model's, faster and worse."""
    repo = git_copy(tmp_path_factory.mktemp("plots") / "repo")
    sh("git", "checkout", "-q", "-b", "other", cwd=repo)
    path = repo / "metrics" / "eval.json"
    metrics = json.loads(path.read_text())
    metrics.update(model="gemma2", log_loss=metrics["log_loss"] + 0.05,
                   seconds_per_sample=metrics["seconds_per_sample"] / 2)
    path.write_text(json.dumps(metrics, indent=2))
    point = repo / "metrics" / "speed_accuracy.json"
    point.write_text(json.dumps([{k: metrics[k] for k in ("model", "seconds_per_sample", "log_loss")}]))
    git_commit(repo, "other: another eval.json and speed_accuracy.json")
    sh("git", "checkout", "-q", "main", cwd=repo)
    return repo


def test_dvc_plots_show_draws_loss_lr_confusion_and_reliability(repo):
    out = json.loads(sh(dvc(), "plots", "show", "--json", cwd=repo))
    assert not out.get("errors"), out.get("errors")
    data = out["data"]
    for plot_id, fields in EXPECTED.items():
        (entry,) = data[plot_id]
        assert entry["type"] == "vega" and entry["revisions"] == ["workspace"]
        values = rows(entry["content"])
        assert len(values) >= 10, (plot_id, len(values))
        assert all(all(f in row and row[f] != "" for f in fields) for row in values), plot_id
    assert {r["actual"] for r in rows(data[CONFUSION][0]["content"])} == {"a", "b", "tie"}
    # the learning rate warms up then decays: its curve is not flat
    lrs = [float(r["learning_rate"]) for r in rows(data[LR][0]["content"])]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[0] < max(lrs) and lrs[-1] < max(lrs) / 2


def test_dvc_plots_diff_draws_both_revisions(repo):
    out = json.loads(sh(dvc(), "plots", "diff", "--json", "main", "other", cwd=repo))
    assert not out.get("errors"), out.get("errors")
    for plot_id in EXPECTED:
        (entry,) = out["data"][plot_id]
        assert sorted(entry["revisions"]) == ["main", "other"], plot_id
        assert {r["rev"] for r in rows(entry["content"])} == {"main", "other"}


def test_dvc_plots_diff_draws_the_scatter_one_point_per_revision(repo):
    out = json.loads(sh(dvc(), "plots", "diff", "--json", "main", "other", cwd=repo))
    (entry,) = out["data"]["metrics/speed_accuracy.json"]
    points = {r["rev"]: (r["model"], r["seconds_per_sample"], r["log_loss"]) for r in rows(entry["content"])}
    main = json.loads((repo / "metrics" / "speed_accuracy.json").read_text())[0]
    assert points["main"] == (main["model"], main["seconds_per_sample"], main["log_loss"])
    assert points["other"][0] == "gemma2" and points["other"][2] == pytest.approx(main["log_loss"] + 0.05)
    layers = entry["content"]["layer"]  # the template labels points by revision, colours by model
    assert layers[1]["encoding"]["text"]["field"] == "rev" and layers[0]["encoding"]["color"]["field"] == "model"


def dvc_versions() -> dict[str, str]:
    """{name: version} of the scripts DVC's own page loads from the CDN, in load order."""
    from dvc_render import VegaRenderer

    return dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([0-9][0-9.]*)", VegaRenderer.SCRIPTS))


def assert_offline(html: str, plots: int) -> None:
    """No script from the network; vega, vega-lite, vega-embed inlined (in that order); one
    vegaEmbed call per plot."""
    assert not re.search(r"<script[^>]*\bsrc=", html), re.findall(r"<script[^>]*>", html)
    assert "cdn.jsdelivr" not in html
    blocks = re.findall(r"<script>\n/\*! (vega(?:-lite|-embed)?)@([0-9.]+) .*?\*/\n(.*?)</script>", html, re.S)
    assert [name for name, _, _ in blocks] == ["vega", "vega-lite", "vega-embed"]
    # the libraries themselves (each over 60 kB minified, holding its version string), not a stub
    assert all(len(js) > 60_000 and f'"{version}"' in js for _, version, js in blocks)
    assert html.count("vegaEmbed(") == plots


def test_dvc_plots_show_and_diff_pages_are_offline(repo, tmp_path):
    """Plain `dvc plots show` / `dvc plots diff`, no option: DVC's config gives the offline template."""
    sh(dvc(), "plots", "show", "-o", str(tmp_path / "show"), cwd=repo)
    assert_offline((tmp_path / "show" / "index.html").read_text(), len(EXPECTED) + 1)  # + speed_accuracy.json
    sh(dvc(), "plots", "diff", "main", "other", "-o", str(tmp_path / "diff"), cwd=repo)
    html = (tmp_path / "diff" / "index.html").read_text()
    assert_offline(html, len(EXPECTED) + 1)
    assert '"rev": "other"' in html


def test_reliability_template_draws_one_line_per_class(repo):
    out = json.loads(sh(dvc(), "plots", "show", CALIBRATION, "--template", "reliability",
                        "-x", "predicted", "-y", "observed", "--json", cwd=repo))
    spec = out["data"][CALIBRATION][0]["content"]
    curve = spec["layer"][1]["encoding"]
    assert curve["color"]["field"] == "class" and curve["x"]["field"] == "predicted"
    assert {r["class"] for r in rows(spec)} == {"a", "b", "tie"}


def test_offline_template_inlines_the_versions_dvc_pages_load():
    """The committed template is stale once a dvc-render upgrade changes the versions its page
    loads from the CDN: rerun `python -m scripts.offline_template`."""
    blocks = re.findall(r"<script>\n/\*! (vega(?:-lite|-embed)?)@([0-9.]+) [^\n]*\n(.*?)\*/\n(.*?)</script>",
                        OFFLINE.read_text(), re.S)
    assert [(name, version) for name, version, _, _ in blocks] == list(dvc_versions().items())
    for name, version, licence, js in blocks:
        # the library itself reports that version (each build holds its version as a string literal)
        assert f'"{version}"' in js, (name, version)
        assert "Interactive Data Lab" in licence and "Redistributions in binary form" in licence, name


def test_offline_template_script_inlines_each_library_dvc_names_with_its_licence(tmp_path, monkeypatch):
    """scripts/offline_template.py inlines the libraries in the versions dvc_render's page loads
    (made-up ones here, not the installed dvc-render's), each under its licence, in load order."""
    from dvc_render import VegaRenderer

    from scripts import offline_template

    versions = {"vega": "1.2.3", "vega-lite": "4.5.6", "vega-embed": "7.8.9"}
    monkeypatch.setattr(VegaRenderer, "SCRIPTS", "".join(
        f'<script src="https://cdn.jsdelivr.net/npm/{name}@{version}"></script>\n' for name, version in versions.items()))
    for name, version in versions.items():
        (tmp_path / f"{name}-{version}.min.js").write_text(f"window.stub_{name.replace('-', '_')} = '{version}';")
        (tmp_path / f"{name}-{version}.LICENSE").write_text(f"licence of {name}")
    out = tmp_path / "offline.html"
    offline_template.main(["--js-dir", str(tmp_path), "--out", str(out)])
    text = out.read_text()
    assert re.findall(r"/\*! (vega(?:-lite|-embed)?)@([0-9.]+) ", text) == list(versions.items())
    assert "{plot_divs}" in text and "{refresh_tag}" in text and "{scripts}" not in text
    assert text.index("licence of vega-lite") < text.index("stub_vega_lite = '4.5.6'") < text.index("licence of vega-embed")
    (tmp_path / "vega-1.2.3.min.js").write_text("x = '</script>';")
    with pytest.raises(SystemExit, match="</script"):  # would end the inline script early
        offline_template.main(["--js-dir", str(tmp_path), "--out", str(out)])
    monkeypatch.setattr(VegaRenderer, "SCRIPTS", '<script src="https://cdn.jsdelivr.net/npm/vega@1.2.3"></script>')
    with pytest.raises(SystemExit, match="unexpected dvc_render scripts"):  # vega-lite, vega-embed gone
        offline_template.main(["--js-dir", str(tmp_path), "--out", str(out)])
