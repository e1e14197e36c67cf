"""`make queue` runs queued experiments with nothing activated: DVC's queue worker starts `dvc`
from PATH, which here holds only the system's folders (a one-stage pipeline stands in for the real one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests import gitcopy
from tests.conftest import ROOT

VENV = Path(sys.executable).parents[1]


def test_make_queue_runs_a_queued_experiment_with_a_bare_path(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        (repo / name).write_text((ROOT / name).read_text())
    (repo / "params.yaml").write_text("n: 1\n")
    (repo / "dvc.yaml").write_text("stages:\n  echo:\n    cmd: echo ${n} > out.txt\n    params: [n]\n"
                                   "    outs: [out.txt]\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "DVC_NO_ANALYTICS": "1",
           **{k: v for k, v in gitcopy.env().items() if k.startswith("GIT_")}}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    dvc = str(VENV / "bin" / "dvc")
    assert run("git", "init", "-q", "-b", "main").returncode == 0 and run(dvc, "init", "-q").returncode == 0
    assert run("git", "add", "-A").returncode == 0 and run("git", "commit", "-qm", "init").returncode == 0
    assert run(dvc, "exp", "run", "--queue", "-S", "n=2", "-n", "bare").returncode == 0
    # the venv is up to date for make: only `dvc queue start`, with the venv's bin first on PATH, runs
    installed = VENV / ".installed"
    marker = installed.exists()
    if not marker:
        installed.touch()
    try:
        os.utime(installed)  # newer than the copied Makefile and pyproject.toml
        proc = run("make", f"VENV={VENV}", "queue")
    finally:
        if not marker:
            installed.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline, idle = time.monotonic() + 90, 0
    while time.monotonic() < deadline:
        status = run(dvc, "queue", "status").stdout
        idle = idle + 1 if "0 active, 0 idle" in status else 0
        if ("Queued" not in status and "Running" not in status) or idle >= 5:  # done, or no worker left
            break
        time.sleep(1)
    assert "Success" in status, status + run(dvc, "queue", "logs", "bare").stdout
    assert run(dvc, "exp", "show", "--csv").stdout.count("bare") == 1
