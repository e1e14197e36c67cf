"""Pull-request review: the comment that `python -m prefbench.pr_comment` builds (and the workflow
.github/workflows/pr.yml runs, then posts) carries the params and metrics diffs against the base.

The comment is built for real on a git copy: a branch that changes a param and the evaluate metrics
(as `dvc repro` would, without running it), compared with `main`; once with the workflow's own
command line, as it stands in pr.yml.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from prefbench.pr_comment import MARKER, noise_section
from tests import forked
from tests.conftest import ROOT
from tests.gitcopy import dvc, git_copy, sh, warm_env

WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"


def workflow_run(pattern: str) -> str:
    """The one line of the workflow's `run` scripts that matches `pattern`."""
    (job,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    found = [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()
             if re.search(pattern, line)]
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.fixture(scope="module")
def pr_repo(tmp_path_factory):
    """A git copy, then a PR branch's workspace: lora_r 8 -> 16 and a re-evaluated eval.json."""
    repo = git_copy(tmp_path_factory.mktemp("pr") / "repo")
    sh("git", "checkout", "-q", "-b", "pr", cwd=repo)
    return repo


def comment(repo: Path, tmp_path: Path) -> tuple[str, str]:
    """`python -m prefbench.pr_comment --base main` in `repo`, on the session's warm server, its DVC
    calls too ($PREFBENCH_PYTHON, prefbench.compare.dvc)."""
    out = tmp_path / "comment.md"
    proc = forked.run("-m", "prefbench.pr_comment", "--base", "main", "--out", out, cwd=repo,
                      env=warm_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(), proc.stdout


def test_the_workflows_command_writes_the_comment_its_post_step_sends(pr_repo):
    """The command line pr.yml runs, as it stands there (its $BASE the copy's `main`), on a branch
    without changes: it runs, and writes the file the post step sends, the marker first."""
    python, *argv = shlex.split(workflow_run(r"-m prefbench\.pr_comment").replace("$BASE", "main"))
    assert python == ".venv/bin/python"  # the install step's venv; here the session's warm server
    proc = forked.run(*argv, cwd=pr_repo, env=warm_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = argv[argv.index("--out") + 1]
    assert f"--body-file {out}" in workflow_run(r"gh pr comment")
    body = (pr_repo / out).read_text()
    (pr_repo / out).unlink()
    assert body.splitlines()[0] == MARKER and proc.stdout.strip() == body.strip()
    assert "No params changed against `main`." in body
    assert "No metric changed against `main`." in body


def test_comment_has_the_params_and_metrics_diffs(pr_repo, tmp_path):
    params = pr_repo / "params.yaml"
    text = params.read_text()
    assert text.count("    lora_r: 8\n") == 4  # one per LLM entry; the first, llama3 (selected), changes
    params.write_text(text.replace("    lora_r: 8\n", "    lora_r: 16\n", 1))
    path = pr_repo / "metrics" / "eval.json"
    metrics = json.loads(path.read_text())
    old_loss = metrics["log_loss"]
    trainable = metrics["params_trainable"]
    path.write_text(json.dumps({**metrics, "log_loss": 0.9123, "params_trainable": 2 * trainable}, indent=2))

    body, _ = comment(pr_repo, tmp_path)
    assert body.splitlines()[0] == MARKER
    params_part, metrics_part = body.split("**Metrics**")
    assert "dvc params diff --md main" in params_part
    assert re.search(r"\| params\.yaml \| models\.llama3\.lora_r +\| 8 +\| 16 +\|", params_part), params_part
    assert "dvc metrics diff --md main" in metrics_part
    # dvc metrics diff rounds to 5 decimals (1.018123 -> 1.01812)
    assert re.search(rf"\| metrics/eval\.json \| log_loss +\| {round(old_loss, 5):g} +\| 0\.9123 +\|", metrics_part), metrics_part
    assert re.search(rf"\| metrics/eval\.json \| params_trainable +\| {trainable} +\| {2 * trainable} +\|", metrics_part)
    assert "No metric changed" not in body and "No params changed" not in body


def noise_row(body: str, metric: str) -> list[str]:
    (line,) = [line for line in body.splitlines() if line.startswith(f"| {metric} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def metrics_diff(repo: Path) -> dict:
    """`dvc metrics diff --json main` in `repo`, as prefbench.pr_comment.build asks for it."""
    return json.loads(sh(dvc(), "metrics", "diff", "--json", "main", cwd=repo) or "{}")


def test_comment_marks_changes_within_and_beyond_two_sd_of_the_noise_floor(pr_repo, tmp_path):
    """The whole comment once (the noise file read from the workspace); the other cases of the
    noise section (no file, no group for the model, an unchanged metric) on the same real
    `dvc metrics diff --json` output through noise_section, the function build() calls."""
    base = json.loads(sh("git", "show", "main:metrics/eval.json", cwd=pr_repo))
    model = base["model"]
    eval_path, noise_path = pr_repo / "metrics" / "eval.json", pr_repo / "metrics" / "noise.json"
    # log_loss moves by 1.5 sd (within noise), accuracy by 2.5 sd (beyond)
    eval_path.write_text(json.dumps({**base, "log_loss": base["log_loss"] + 0.015,
                                     "accuracy": base["accuracy"] - 0.05}, indent=2))
    floor = {"n": 5, "log_loss": {"mean": 0.95, "sd": 0.01}, "accuracy": {"mean": 0.5, "sd": 0.02}}
    noise = {"command": "test", "models": {model: floor}}
    noise_path.write_text(json.dumps(noise))
    body, _ = comment(pr_repo, tmp_path)
    assert f"{model}'s validation metrics over 5 runs" in body
    loss = noise_row(body, "log_loss")
    assert loss[1:4] == [str(round(base["log_loss"], 5)), str(round(base["log_loss"] + 0.015, 5)), "0.015"]
    assert loss[4:] == ["0.9500 ± 0.0100 (5)", "0.0200", "within noise"]
    acc = noise_row(body, "accuracy")
    assert acc[3] == "-0.05" and acc[4:] == ["0.5000 ± 0.0200 (5)", "0.0400", "beyond noise"]

    diff, current = metrics_diff(pr_repo), json.loads(eval_path.read_text())
    assert "\n".join(noise_section(diff, noise, current, "main")) in body  # the comment's own section
    assert "No noise floor is committed (`metrics/noise.json`)" in "\n".join(noise_section(diff, None, current, "main"))
    other = "\n".join(noise_section(diff, {"models": {"other": floor}}, current, "main"))
    assert f"`metrics/noise.json` has no seed group for model `{model}`" in other

    eval_path.write_text(json.dumps({**base, "log_loss": base["log_loss"] + 0.015}, indent=2))
    section = "\n".join(noise_section(metrics_diff(pr_repo), noise, json.loads(eval_path.read_text()), "main"))
    acc = noise_row(section, "accuracy")
    assert acc[1] == acc[2] == str(round(base["accuracy"], 5)) and acc[3] == "0" and acc[-1] == "unchanged"
