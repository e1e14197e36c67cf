"""Reliability of the DVC side: reproducible runs, storage through a local DVC remote, experiments
shared through a git remote, and the parallel experiment queue.

One module-scoped temporary git copy of the repo, with params.yaml made small (200 rows, 1 epoch,
max_length 64) and committed, carries every test; the remotes are local folders (no network).
The tests run in file order and build on each other: the two `dvc repro -f` runs come first, the
clone that `dvc pull`s them is reused for `dvc exp pull`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.gitcopy import DVC, git_commit, git_copy, run, sh, shrink_params

STAGES = ("sample", "prepare", "tokenize", "train", "evaluate")
# DVC-cached outputs (dvc.yaml `outs` without `cache: false`) that must be there; any other cached
# output dvc.yaml declares is checked the same way (cached_outs).
CACHED_OUTS = ("data/sample/train.csv", "data/prepared", "data/tokens", "models/adapter")
UP_TO_DATE = "Data and pipelines are up to date"
QUEUE_TIMEOUT_S = 900


# ---------------------------------------------------------------- helpers

def md5_tree(repo: Path, out: str) -> dict[str, str]:
    """repo-relative path -> md5 of every file under `repo/out` (or of `repo/out` itself, a file)."""
    path = repo / out
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(repo).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def cached_outs(repo: Path) -> list[str]:
    """Every output dvc.yaml declares in `outs` with the DVC cache on (the default)."""
    found = []
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            if isinstance(out, str):
                found.append(out)
            else:
                (path, opts), = out.items()
                if (opts or {}).get("cache", True):
                    found.append(path)
    assert set(CACHED_OUTS) <= set(found), found
    return found


def outs_md5(repo: Path) -> dict[str, str]:
    return {k: v for out in cached_outs(repo) for k, v in md5_tree(repo, out).items()}


def lock_outs(repo: Path) -> dict[str, str]:
    """path -> md5 of the cached outputs as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = set(cached_outs(repo))
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
            if o["path"] in outs}


def snapshot(repo: Path, out: str) -> dict:
    return {"stdout": out, "eval": json.loads((repo / "metrics" / "eval.json").read_text()),
            "predictions": (repo / "metrics" / "predictions.csv").read_bytes(),
            "lock_outs": lock_outs(repo), "files": outs_md5(repo)}


def experiments(show: list) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: {"params", "metrics", "state", "rev"}}."""
    found = {}
    for commit in show:
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                name = rev.get("name") or exp.get("name") or data.get("name") or rev.get("rev")
                found[name] = {
                    "rev": rev.get("rev"),
                    "state": state,
                    "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
                    "metrics": ((data.get("metrics") or {}).get("metrics/eval.json") or {}).get("data") or {},
                }
    return found


def exp_show(repo: Path) -> tuple[dict[str, dict], str]:
    raw = sh(DVC, "exp", "show", "--json", cwd=repo)
    return experiments(json.loads(raw)), raw


def reset_workspace(repo: Path) -> None:
    """Back to HEAD: params.yaml and git-tracked metrics from git, outputs from the DVC cache."""
    sh("git", "reset", "-q", "--hard", cwd=repo)
    sh(DVC, "checkout", "--force", cwd=repo)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("dvc_storage")
    repo = git_copy(base / "repo")
    shrink_params(repo, rows=200, test_rows=40)
    sh(DVC, "remote", "add", "-d", "local", str(base / "remote"), cwd=repo)
    git_commit(repo, "small params, local DVC remote")
    return SimpleNamespace(base=base, repo=repo, remote=base / "remote", clone=base / "clone",
                           origin=base / "origin.git")


@pytest.fixture(scope="module")
def two_runs(work):
    """`dvc repro -f` twice, then commit the second run (dvc.lock, git-tracked metrics).

    Each run gets a different PYTHONHASHSEED: a fresh interpreter's string hashing is random, and
    pinning two different seeds makes "does any output depend on it" a deterministic check
    rather than a flaky one (test_repro_cached_outputs_identical, last in this file).
    """
    runs = []
    for hash_seed in ("1", "2"):
        out = sh(DVC, "repro", "-f", cwd=work.repo, extra_env={"PYTHONHASHSEED": hash_seed})
        runs.append(snapshot(work.repo, out))
    git_commit(work.repo, "default run (small)")
    return runs


@pytest.fixture(scope="module")
def pulled_clone(work, two_runs):
    """`dvc push` to the local remote, then a fresh `git clone` + `dvc pull`."""
    push = sh(DVC, "push", cwd=work.repo)
    cloud = sh(DVC, "status", "--cloud", cwd=work.repo)
    sh("git", "clone", "-q", str(work.repo), str(work.clone), cwd=work.base)
    assert not (work.clone / ".dvc" / "cache").exists()  # nothing to restore from but the remote
    pull = sh(DVC, "pull", cwd=work.clone)
    return SimpleNamespace(push=push, cloud=cloud, pull=pull)


# ---------------------------------------------------------------- tests

def test_repro_twice_gives_identical_metrics_and_predictions(two_runs):
    first, second = two_runs
    for run_ in two_runs:
        for stage in STAGES:
            assert f"Running stage '{stage}'" in run_["stdout"], run_["stdout"][-2000:]
        assert math.isfinite(run_["eval"]["log_loss"]) and run_["eval"]["model"] == "llama3"
    assert first["eval"]["log_loss"] == second["eval"]["log_loss"]
    assert first["eval"]["accuracy"] == second["eval"]["accuracy"]
    assert first["eval"]["n_samples"] == second["eval"]["n_samples"] > 0
    assert first["predictions"] == second["predictions"]  # byte-identical, every row and probability


def test_push_then_pull_restores_every_output_in_a_fresh_clone(work, two_runs, pulled_clone):
    assert "Cache and remote 'local' are in sync" in pulled_clone.cloud, pulled_clone.cloud
    assert any(work.remote.rglob("*")), "dvc push wrote nothing to the remote"
    for out in cached_outs(work.clone):
        assert (work.clone / out).exists(), f"dvc pull did not restore {out}: {pulled_clone.pull}"
    # Same files, same bytes as the workspace that pushed them, and as dvc.lock records them.
    assert outs_md5(work.clone) == outs_md5(work.repo) == two_runs[1]["files"]
    assert lock_outs(work.clone) == lock_outs(work.repo)
    status = sh(DVC, "status", cwd=work.clone)
    assert UP_TO_DATE in status, status
    # and a repro in the clone has nothing to do
    repro = sh(DVC, "repro", cwd=work.clone)
    assert "Running stage" not in repro, repro


def test_experiment_pushed_to_git_remote_is_pulled_with_its_outputs(work, two_runs, pulled_clone):
    repo, clone = work.repo, work.clone
    sh("git", "init", "-q", "--bare", str(work.origin), cwd=work.base)
    sh("git", "remote", "add", "origin", str(work.origin), cwd=repo)
    sh("git", "push", "-q", "origin", "HEAD", cwd=repo)
    try:
        out = sh(DVC, "exp", "run", "-S", "model=gemma2", "--name", "g2", cwd=repo)
        assert "Running stage 'train'" in out and "Running stage 'prepare'" not in out, out
        local, _ = exp_show(repo)
        assert local["g2"]["metrics"].get("model") == "gemma2", local
        push = sh(DVC, "exp", "push", "origin", "g2", cwd=repo)
        assert "g2" in push, push
        refs = sh("git", "for-each-ref", "refs/exps", cwd=work.origin)
        assert refs.strip().endswith("/g2"), refs
    finally:
        reset_workspace(repo)

    sh("git", "remote", "add", "shared", str(work.origin), cwd=clone)
    pull = sh(DVC, "exp", "pull", "shared", "g2", cwd=clone)
    assert "g2" in pull, pull
    exps, raw = exp_show(clone)
    assert "g2" in exps, raw
    g2 = exps["g2"]
    assert g2["params"].get("model") == "gemma2", raw
    assert g2["metrics"] == local["g2"]["metrics"], raw
    assert g2["metrics"]["model"] == "gemma2" and math.isfinite(g2["metrics"]["log_loss"])
    assert g2["metrics"]["weights"] == "pretrained"

    # exp push sent the experiment's cached outputs to the DVC remote and exp pull fetched them:
    # applying it in the clone restores its adapter with nothing to re-run.
    sh(DVC, "exp", "apply", "g2", cwd=clone)
    resolved = json.loads((clone / "models" / "adapter" / "resolved_params.json").read_text())
    assert resolved["model"] == "gemma2" and resolved["models"]["pretrained"] == "models/tiny-gemma2"
    status = sh(DVC, "status", cwd=clone)
    assert UP_TO_DATE in status, status


def test_queue_runs_two_seeds_in_parallel(work, two_runs):
    repo = work.repo
    reset_workspace(repo)
    seeds = {"seed1": 1, "seed2": 2}
    for name, seed in seeds.items():
        sh(DVC, "exp", "run", "--queue", "-S", f"train.seed={seed}", "--name", name, cwd=repo)
    sh(DVC, "queue", "start", "-j", "2", cwd=repo)
    status = ""
    try:
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while time.monotonic() < deadline:
            status = sh(DVC, "queue", "status", cwd=repo)
            if not any(s in status for s in ("Queued", "Running")):
                break
            time.sleep(5)
        else:
            pytest.fail(f"queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")
    finally:
        run(DVC, "queue", "stop", "--kill", cwd=repo, check=False)

    exps, raw = exp_show(repo)
    problems = []
    for name in seeds:
        if exps.get(name, {}).get("state") not in (None, "success") or not exps.get(name, {}).get("metrics"):
            logs = run(DVC, "queue", "logs", name, cwd=repo, check=False)
            problems.append(f"{name}: {exps.get(name)}\n--- dvc queue logs {name}:\n"
                            f"{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
    assert not problems, f"dvc queue status:\n{status}\n" + "\n".join(problems)
    assert status.count("Success") >= 2, status

    default = two_runs[1]["eval"]
    for name, seed in seeds.items():
        exp = exps[name]
        assert exp["params"]["train"]["seed"] == seed and exp["params"]["model"] == "llama3", exp
        m = exp["metrics"]
        assert m["model"] == "llama3" and m["n_samples"] == default["n_samples"], m
        assert math.isfinite(m["log_loss"]) and m["log_loss"] > 0
    losses = [exps[name]["metrics"]["log_loss"] for name in seeds]
    assert losses[0] != losses[1], f"seeds 1 and 2 gave the same log_loss {losses}: did both run the same?"
    assert default["log_loss"] not in losses, (default["log_loss"], losses)

    # Each experiment's stored outputs were made with its own seed (no cross-talk between workers).
    for name, seed in seeds.items():
        sh(DVC, "exp", "apply", name, cwd=repo)
        resolved = json.loads((repo / "models" / "adapter" / "resolved_params.json").read_text())
        assert resolved["train"]["seed"] == seed, (name, resolved["train"])
        applied = json.loads((repo / "metrics" / "eval.json").read_text())
        assert applied["log_loss"] == exps[name]["metrics"]["log_loss"], (name, applied)
        assert UP_TO_DATE in sh(DVC, "status", cwd=repo)
    reset_workspace(repo)


def test_repro_cached_outputs_identical_across_runs(two_runs):
    """Every DVC-cached output is byte-identical between the two `dvc repro -f` runs (run with
    different PYTHONHASHSEED values): the same params give the same md5s in dvc.lock, so
    `dvc status`, the run cache and the remote see one version, not one per run."""
    first, second = two_runs
    differing = sorted(k for k in first["files"] if first["files"][k] != second["files"].get(k))
    assert first["files"] == second["files"], f"files differing between the two runs: {differing}"
    assert first["lock_outs"] == second["lock_outs"]
