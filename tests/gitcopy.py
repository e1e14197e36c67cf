"""A temporary git copy of the repo for tests that run DVC (or git) on it.

`git_copy(dst)` copies the working tree into `dst` (every file git tracks, as it is now, and
every untracked file git does not ignore: what `git add -A` would commit), then `git init` +
commit, so DVC sees a clean repo with the pipeline, params and models
but none of the DVC outputs or cache of the real checkout. `sh(...)` runs a command with the
venv's bin folder first on PATH, so `dvc` and the `python` in dvc.yaml's commands (and DVC's
queue workers) are the venv's; `dvc()` is the same DVC on the session's warm server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests import forked

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_ID = ("-c", "user.email=test@prefbench.invalid", "-c", "user.name=prefbench test")


def env(**extra: str) -> dict[str, str]:
    """os.environ with the venv first on PATH; no network (hub offline), no DVC analytics."""
    base = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "prefbench test", "GIT_AUTHOR_EMAIL": "test@prefbench.invalid",
            "GIT_COMMITTER_NAME": "prefbench test", "GIT_COMMITTER_EMAIL": "test@prefbench.invalid"}
    base.update(extra)
    return base


def warm_env(**extra: str) -> dict[str, str]:
    """`env()` with $PREFBENCH_PYTHON the session's warm server (tests/forked.py): the stages a
    command starts, and prefbench's DVC calls (prefbench.compare.dvc), run there."""
    return env(PREFBENCH_PYTHON=str(forked.server().python), **extra)


def dvc() -> str:
    """The tests' `dvc` command: DVC's command line on the session's warm server (tests/forked.py),
    without its second of imports a command."""
    return str(forked.server().dvc)


def run(*cmd: str, cwd: Path | str, check: bool = True, timeout: float | None = None,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          env=env(**(extra_env or {})), timeout=timeout)
    if check:
        assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} (in {cwd}) exited {proc.returncode}:\n"
                                      f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-4000:]}")
    return proc


def sh(*cmd: str, cwd: Path | str, **kw) -> str:
    """Run a command that must succeed; returns its stdout."""
    return run(*cmd, cwd=cwd, **kw).stdout


def git_commit(repo: Path, message: str) -> None:
    sh("git", "add", "-A", cwd=repo)
    sh("git", *GIT_ID, "commit", "-qm", message, cwd=repo)


def git_copy(dst: Path) -> Path:
    """Copy the working tree (tracked and untracked, not ignored files) to `dst`, git init, commit."""
    files = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    sh("git", "init", "-q", "-b", "main", cwd=dst)
    git_commit(dst, "copy")
    return dst


def shrink_params(repo: Path, rows: int, test_rows: int) -> None:
    """Make the copy's default pipeline quick: fewer generated rows, one epoch, 64 tokens."""
    import yaml

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["sample"].update(rows=rows, test_rows=test_rows)
    raw["train"]["epochs"] = 1
    for cfg in (c for c in raw["models"].values() if "kind" not in c):  # the LLM entries (tfidf: `kind`)
        cfg["max_length"] = 64
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
