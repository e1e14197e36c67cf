"""Reliability of the DVC side: reproducible runs, storage through a local DVC remote, experiments
shared through a git remote, and the parallel experiment queue.

All of it ran in the session's shared run (tests/workspace.py): the native copy pushed its default
run to a local DVC remote, cloned itself and pulled, pushed the tfidf experiment through a bare
git remote into that clone; the second copy ran the same data stages under another PYTHONHASHSEED,
then the gemma2 experiment, then two seeds through the queue with two workers. The remotes are
local folders (no network).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.workspace import QUEUE_EPOCHS


pytestmark = pytest.mark.xdist_group("workspace")

STAGES = ("sample", "prepare", "tokenize", "train", "evaluate")
# DVC-cached outputs (dvc.yaml `outs` without `cache: false`) that must be there; any other cached
# output dvc.yaml declares is checked the same way (cached_outs).
CACHED_OUTS = ("data/sample/train.csv", "data/prepared", "data/tokens", "models/adapter")
UP_TO_DATE = "Data and pipelines are up to date"


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


def md5_files(folder: Path) -> dict[str, str]:
    """folder-relative path -> md5 of every file under `folder`."""
    return {k.removeprefix(folder.name + "/"): v for k, v in md5_tree(folder.parent, folder.name).items()}


def lock_outs(repo: Path, lock: Path | None = None) -> dict[str, str]:
    """path -> md5 of the cached outputs as dvc.lock (default: the repo's) records them."""
    lock = yaml.safe_load((lock or repo / "dvc.lock").read_text())
    outs = set(cached_outs(repo))
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])
            if o["path"] in outs}


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


# ---------------------------------------------------------------- tests

def test_two_runs_give_identical_data_and_tokens(workspace):
    """The same data stages in two copies, fresh interpreters with PYTHONHASHSEED=1 and the warm
    server's with another: the data stages' DVC-cached outputs (no float math before train) are
    byte-identical as dvc.lock records them, so `dvc status`, the run cache and the remote see one
    version, not one per run. (The float stages agree across CPU kernels: benchmarks/cpu_repro.sh;
    within the tolerance of the committed reference on any CPU: tests/test_e2e.py; on one machine
    the adapter is the committed one bit for bit, which is why evaluate may skip.)"""
    native, second = workspace["native"], workspace["second"]
    data_outs = ("data/sample/train.csv", "data/prepared", "data/tokens")
    for copy in (native, second):
        for stage in STAGES[:3]:
            assert f"Running stage '{stage}'" in copy.log("1-repro")
    a = lock_outs(native.repo, native.logs / "llama3" / "dvc.lock")
    b = lock_outs(native.repo, second.logs / "llama3" / "dvc.lock")
    assert {k: a[k] for k in data_outs} == {k: b[k] for k in data_outs}
    assert md5_files(native.logs / "llama3" / "tokens") == md5_files(second.logs / "llama3" / "tokens")
    # gemma2's experiment re-tokenized the same prepared data (its tokenizer; not re-prepared)
    c = lock_outs(native.repo, second.logs / "gemma2" / "dvc.lock")
    assert c["data/prepared"] == a["data/prepared"] and c["data/tokens"] != a["data/tokens"]


def test_push_then_pull_restores_every_output_in_a_fresh_clone(workspace):
    ws = workspace["native"]
    assert "Cache and remote 'local' are in sync" in ws.log("3-cloud")
    assert any((ws.top / "remote").rglob("*")), "dvc push wrote nothing to the remote"
    pull = ws.log("3-pull")
    assert UP_TO_DATE in pull and "Running stage" not in pull, pull  # and a repro there has nothing to do
    # dvc pull restored the committed default run's outputs: the bytes dvc.lock records
    clone = ws.top / "clone"
    for out in cached_outs(clone):
        assert (clone / out).exists(), f"dvc pull did not restore {out}: {pull}"
    assert md5_files(ws.logs / "clone-pulled-adapter") == md5_files(ws.logs / "llama3" / "adapter")


def test_experiment_pushed_to_git_remote_is_pulled_with_its_outputs(workspace):
    ws = workspace["native"]
    assert "tfidf-exp" in ws.log("8-exp-push")
    pulled = ws.log("8-exp-pull")
    assert "tfidf-exp" in pulled and UP_TO_DATE in pulled, pulled
    local, remote = experiments(ws.json("exp-show.json")), experiments(ws.json("clone-exp-show.json"))
    exp = remote["tfidf-exp"]
    assert exp["params"].get("model") == "tfidf" and exp["metrics"] == local["tfidf-exp"]["metrics"]
    assert exp["metrics"]["model"] == "tfidf" and math.isfinite(exp["metrics"]["log_loss"])
    # exp push sent the experiment's cached outputs to the DVC remote and exp pull fetched them:
    # `dvc exp apply` in the clone restored the tfidf model with nothing to re-run.
    resolved = json.loads((ws.logs / "clone-adapter" / "resolved_params.json").read_text())
    assert resolved["model"] == "tfidf"
    assert md5_files(ws.logs / "clone-adapter") == md5_files(ws.logs / "tfidf" / "adapter")
    assert md5_files(ws.logs / "clone-adapter") != md5_files(ws.logs / "clone-pulled-adapter")  # not llama3's


def test_queue_runs_two_seeds_in_parallel(workspace):
    ws = workspace["second"]
    status = ws.log("9-noise")
    assert status.count("Success") >= 2, status
    exps = experiments(ws.json("exp-show-queue.json"))
    queued = {name: e for name, e in exps.items() if e["params"]["train"]["epochs"] == QUEUE_EPOCHS}
    seeds = sorted(e["params"]["train"]["seed"] for e in queued.values())
    assert seeds == [1, 2], exps.keys()
    for e in queued.values():
        assert e["state"] in (None, "success") and e["params"]["model"] == "llama3", e
        assert e["metrics"]["model"] == "llama3" and math.isfinite(e["metrics"]["log_loss"])
    losses = [e["metrics"]["log_loss"] for e in queued.values()]
    assert losses[0] != losses[1], f"seeds 1 and 2 gave the same log_loss {losses}: did both run the same?"
