"""End to end, as a new user runs it, in fresh git copies of the repo with nothing activated.

Two copies run side by side, one with this CPU's own kernels and one with PORTABLE kernels:
PyTorch's portable vector code (ATEN_CPU_CAPABILITY=default) and MKL's reproducible
conditional-numerical-results path (MKL_CBWR=COMPATIBLE), each a different rounding of many
floats (benchmarks/cpu_repro.sh measured both), as a CPU unlike this one gives. Each runs the README's commands with a PATH that lacks the venv:
`make repro`, then `.venv/bin/dvc exp run -S model=gemma2`. Both models' log-loss must match
the committed reference run (metrics/reference.json) within TOLERANCE on both kernel sets.
The native copy also switches `model` back (restored from DVC's run cache, not trained again),
compares with `dvc exp show` / `dvc metrics diff`, and runs the pull-request workflow's steps.

PREFBENCH_WRITE_REFERENCE=1 makes the native copy rewrite metrics/reference.json (after a change
that is meant to move the default run's numbers); commit it with the new metrics/*.json.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.write_reference import TOLERANCE, write_reference
from tests.conftest import ROOT
from tests.gitcopy import BIN, env, git_copy

REFERENCE = ROOT / "metrics" / "reference.json"
# TOLERANCE (0.002): cross-CPU tolerance on log-loss and accuracy. Measured differences between
# kernel sets are far below it (README "The default run"); the seed-to-seed spread is far above.
EVAL_KEYS = ("log_loss", "accuracy", "seconds_per_sample", "samples_per_second", "tokens_per_second",
             "load_seconds", "peak_memory_gb", "params_total", "params_embedding", "params_non_embedding",
             "params_trainable", "n_samples", "device", "dtype", "attn_implementation", "weights")
# The pull-request workflow's steps that run here as on GitHub (install: the venv is linked in;
# posting the comment needs GitHub).
WORKFLOW_STEPS = ("Reproduce the default pipeline (CPU)", "Build the review comment", "Plots against the base")


PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def user_env(kernels: dict[str, str]) -> dict[str, str]:
    """A fresh shell's environment: the venv not on PATH, no VIRTUAL_ENV; one thread per copy, so
    the two copies share two cores without oversubscription (float64 results do not depend on it)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve())
    e = {k: v for k, v in env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", *PORTABLE)}
    e.update(PATH=path, OMP_NUM_THREADS="1", **kernels)
    return e


def workflow_script() -> str:
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())["jobs"]["review"]["steps"]
    runs = {s["name"]: s["run"] for s in steps if "name" in s and "run" in s}
    return "\n".join(runs[name] for name in WORKFLOW_STEPS)


def script(native: bool) -> str:
    """The user's session, one log per command in ../logs (outside the repo copy)."""
    lines = ["set -ex",
             # README: `make repro` (the venv exists: `-o` keeps make from reinstalling the shared one)
             "make -o .venv/.installed repro > ../logs/1-repro.log 2>&1",
             "cp metrics/eval.json ../logs/llama3.json && cp dvc.lock ../logs/dvc.lock",
             ".venv/bin/dvc repro > ../logs/2-again.log 2>&1",
             "git add -A && git commit -qm 'default run'",
             ".venv/bin/dvc exp run -S model=gemma2 --name gemma2-exp > ../logs/3-gemma2.log 2>&1",
             "cp metrics/eval.json ../logs/gemma2.json"]
    if native:
        lines += [".venv/bin/dvc exp run -S model=llama3 --name llama3-again > ../logs/4-back.log 2>&1",
                  ".venv/bin/dvc exp show --json > ../logs/exp-show.json",
                  ".venv/bin/dvc metrics diff HEAD gemma2-exp > ../logs/5-diff.log 2>&1",
                  # The pull-request workflow against the committed default run.
                  "export BASE=HEAD GITHUB_STEP_SUMMARY=../logs/summary.md",
                  "{\n" + workflow_script() + "\n} > ../logs/6-workflow.log 2>&1"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    procs = {}
    for name, kernels in (("native", {}), ("portable", PORTABLE)):
        top = tmp_path_factory.mktemp(f"e2e-{name}")
        repo = git_copy(top / "prefbench")
        (repo / ".venv").symlink_to(BIN.parent)  # what `make install` made; git ignores it
        (top / "logs").mkdir()
        procs[name] = (top, subprocess.Popen(["bash", "-c", script(name == "native")], cwd=repo,
                                             env=user_env(kernels), stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True))
    outs = {name: proc.communicate(timeout=3600)[0] for name, (_, proc) in procs.items()}  # both finish first
    for name, (top, proc) in procs.items():
        out = outs[name]
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((top / "logs").glob("*.log")))
        assert proc.returncode == 0, f"{name} copy failed:\n{out[-3000:]}\n{logs}"
    return {name: top for name, (top, _) in procs.items()}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def lock_outs(lock: Path, stage: str) -> dict[str, str]:
    return {o["path"]: o["md5"] for o in yaml.safe_load(lock.read_text())["stages"][stage]["outs"]}


@pytest.mark.parametrize("copy", ["native", "portable"])
def test_make_repro_runs_every_stage_with_nothing_activated(runs, copy):
    """Each stage ran, or DVC skipped it because its deps hash as in the committed dvc.lock and
    its outputs are the committed ones: evaluate skips when train rebuilt the adapter bit for bit
    (float64 on CPU), a stronger reproduction than the log-loss tolerance."""
    log = (runs[copy] / "logs" / "1-repro.log").read_text()
    for stage in ("sample", "prepare", "tokenize", "train"):  # their outputs are not in git: they must run
        assert f"Running stage '{stage}'" in log
    for stage in ("evaluate", "predict"):
        if f"Stage '{stage}' didn't change, skipping" in log:
            assert lock_outs(runs[copy] / "logs" / "dvc.lock", "train") == lock_outs(ROOT / "dvc.lock", "train")
        else:
            assert f"Running stage '{stage}'" in log, log[-3000:]
    again = (runs["native"] / "logs" / "2-again.log").read_text()
    assert "Running stage" not in again and "up to date" in again


@pytest.mark.parametrize("copy", ["native", "portable"])
@pytest.mark.parametrize("model", ["llama3", "gemma2"])
def test_default_run_reproduces_the_reference_on_both_kernel_sets(runs, copy, model):
    got = load(runs[copy] / "logs" / f"{model}.json")
    assert got["model"] == model and got["log_loss"] < got["log_loss_prior"]  # it learned
    assert all(k in got for k in EVAL_KEYS)
    ref = load(REFERENCE)["models"][model]
    for key in ("log_loss", "accuracy"):
        assert abs(got[key] - ref[key]) <= TOLERANCE, (
            f"{model} {key} on {copy} kernels: {got[key]} vs committed {ref[key]} (tolerance {TOLERANCE})")


def test_gemma2_experiment_reruns_only_model_stages_and_switching_back_is_cached(runs):
    exp = (runs["native"] / "logs" / "3-gemma2.log").read_text()
    assert "Running stage 'prepare'" not in exp and "Running stage 'train'" in exp
    back = (runs["native"] / "logs" / "4-back.log").read_text()
    assert "Running stage 'train'" not in back and "Stage 'train' is cached" in back
    # the restored adapter is the first llama3 run's: the same predictions
    restored, first = load(runs["native"] / "prefbench" / "metrics" / "eval.json"), load(runs["native"] / "logs" / "llama3.json")
    assert (restored["log_loss"], restored["accuracy"]) == (first["log_loss"], first["accuracy"])


def test_exp_show_and_metrics_diff_compare_the_models(runs):
    rows = json.loads((runs["native"] / "logs" / "exp-show.json").read_text())
    found = {}
    for commit in rows:
        for exp in [commit] + [e for ex in commit.get("experiments") or [] for e in ex.get("revs", [])]:
            data = exp.get("data") or {}
            metrics = (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data", {})
            if metrics and data.get("rev") != "workspace":
                found[(data.get("name") or data.get("rev"), metrics["model"])] = metrics
    assert {m for _, m in found} == {"llama3", "gemma2"}, found.keys()
    diff = (runs["native"] / "logs" / "5-diff.log").read_text()
    assert "metrics/eval.json" in diff and "log_loss" in diff and "seconds_per_sample" in diff


def test_pull_request_workflow_steps_run_with_nothing_activated(runs):
    comment = (runs["native"] / "prefbench" / "pr-comment.md").read_text()
    assert comment.startswith("<!-- prefbench-pr-review -->")
    assert (runs["native"] / "logs" / "summary.md").read_text().strip()
    assert (runs["native"] / "prefbench" / "pr-plots" / "dvc" / "index.html").is_file()


def test_committed_metrics_are_the_reference_run():
    """metrics/eval.json (the committed llama3 run) and the reference agree, and the reference
    says which machine made it."""
    ref, committed = load(REFERENCE), load(ROOT / "metrics" / "eval.json")
    assert abs(ref["models"]["llama3"]["log_loss"] - committed["log_loss"]) <= 1e-5
    assert ref["tolerance"] == TOLERANCE and ref["cpu"] and ref["torch"]


def test_write_reference(runs):
    """With PREFBENCH_WRITE_REFERENCE=1: metrics/reference.json from the native copy's runs."""
    if os.environ.get("PREFBENCH_WRITE_REFERENCE") == "1":
        write_reference({m: runs["native"] / "logs" / f"{m}.json" for m in ("llama3", "gemma2")}, REFERENCE)
