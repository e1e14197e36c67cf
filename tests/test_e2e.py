"""End to end, as a user runs it: in a temporary git copy of the repo, `dvc repro` on the defaults,
then `dvc exp run -S model=gemma2`, compared with `dvc exp show` and `dvc metrics diff`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DVC = str(Path(sys.executable).with_name("dvc"))
EVAL_KEYS = ("log_loss", "accuracy", "seconds_per_sample", "samples_per_second", "tokens_per_second",
             "load_seconds", "peak_memory_gb", "params_total", "params_embedding", "params_non_embedding",
             "params_trainable", "n_samples", "device", "dtype", "attn_implementation", "weights")


def sh(*cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("e2e") / "prefbench"
    files = sh("git", "ls-files", "-z", cwd=ROOT).split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    # A first run, as on a fresh laptop: without the committed dvc.lock every stage runs (with it,
    # DVC would rightly skip stages whose deterministic outputs match the lock).
    (dst / "dvc.lock").unlink()
    sh("git", "init", "-q", cwd=dst)
    sh("git", "add", "-A", cwd=dst)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy", cwd=dst)
    return dst


def test_repro_then_gemma2_experiment(repo):
    out = sh(DVC, "repro", cwd=repo)
    for stage in ("sample", "prepare", "tokenize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    llama = json.loads((repo / "metrics" / "eval.json").read_text())
    assert llama["model"] == "llama3" and llama["log_loss"] < llama["log_loss_prior"]  # it learned
    committed = json.loads((ROOT / "metrics" / "eval.json").read_text())
    assert llama["log_loss"] == committed["log_loss"]  # the committed default run reproduces

    # A second repro right after does nothing.
    again = sh(DVC, "repro", cwd=repo)
    assert "Running stage" not in again and "up to date" in again

    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "default run", cwd=repo)
    exp_out = sh(DVC, "exp", "run", "-S", "model=gemma2", "--name", "gemma2-exp", cwd=repo)
    # Only the model-dependent stages re-run.
    assert "Running stage 'prepare'" not in exp_out and "Running stage 'train'" in exp_out

    rows = json.loads(sh(DVC, "exp", "show", "--json", cwd=repo))
    found = {}
    for commit in rows:
        for exp in [commit] + [e for ex in commit.get("experiments") or [] for e in ex.get("revs", [])]:
            data = (exp.get("data") or {})
            metrics = (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data", {})
            if metrics and data.get("rev") != "workspace":
                found[(data.get("name") or data.get("rev"), metrics["model"])] = metrics
    models = {m for _, m in found}
    assert models == {"llama3", "gemma2"}, found.keys()
    for metrics in found.values():
        assert all(k in metrics for k in EVAL_KEYS)
        assert metrics["log_loss"] < metrics["log_loss_prior"]

    diff = sh(DVC, "metrics", "diff", "HEAD", "gemma2-exp", cwd=repo)
    assert "metrics/eval.json" in diff and "log_loss" in diff and "seconds_per_sample" in diff
