"""Pull-request review: the workflow (.github/workflows/pr.yml) reproduces the pipeline and posts the
comment that `python -m prefbench.pr_comment` builds; the comment carries both diffs against the base.

The comment is built for real on a git copy: a branch that changes a param and the evaluate metrics
(as `dvc repro` would, without running it), compared with `main`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prefbench.pr_comment import MARKER, noise_section
from tests import forked
from tests.conftest import ROOT
from tests.gitcopy import dvc, git_copy, sh, warm_env

WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def step_index(workflow: dict, pattern: str) -> int:
    found = [i for i, s in enumerate(steps(workflow)) if re.search(pattern, s.get("run", ""))]
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_runs_on_pull_requests_with_write_access_to_comments(workflow):
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in on
    assert workflow["permissions"]["pull-requests"] == "write"


def test_checks_out_full_history_python_311_and_cpu_torch(workflow):
    checkout = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) == "3.11"
    install = steps(workflow)[step_index(workflow, r"make install")]["run"]
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH \?= (\S+)", makefile, re.M).group(1)
    assert f'TORCH="{torch_pin} --index-url https://download.pytorch.org/whl/cpu"' in install


def test_reproduces_then_comments_both_diffs_against_the_base(workflow):
    (job,) = workflow["jobs"].values()
    assert job["env"]["BASE"] == "origin/${{ github.base_ref }}"
    repro = step_index(workflow, r"\bdvc repro\b")
    build = step_index(workflow, r"-m prefbench\.pr_comment")
    post = step_index(workflow, r"gh pr comment")
    assert repro < build < post
    build_run = steps(workflow)[build]["run"]
    out = re.search(r'-m prefbench\.pr_comment --base "\$BASE" --out (\S+)', build_run).group(1)
    post_step = steps(workflow)[post]
    # the post step sends the file the build step wrote, creating or updating the marked comment
    assert f"--body-file {out}" in post_step["run"] and f"body=@{out}" in post_step["run"]
    assert f"head -n 1 {out}" in post_step["run"]  # the marker line finds the earlier comment
    assert post_step["env"]["GH_TOKEN"] == "${{ github.token }}"
    assert post_step["env"]["PR"] == "${{ github.event.pull_request.number }}"
    # plots against the base go to an artifact
    plots = steps(workflow)[step_index(workflow, r"dvc plots diff")]["run"]
    assert '"$BASE"' in plots
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps(workflow))


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


def test_comment_without_changes_says_so(pr_repo, tmp_path):
    body, stdout = comment(pr_repo, tmp_path)
    assert body.splitlines()[0] == MARKER and stdout.strip() == body.strip()
    assert "No params changed against `main`." in body
    assert "No metric changed against `main`." in body


def test_comment_has_the_params_and_metrics_diffs(pr_repo, tmp_path):
    params = pr_repo / "params.yaml"
    text = params.read_text()
    assert text.count("    lora_r: 8\n") == 2
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
