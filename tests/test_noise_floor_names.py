"""benchmarks/noise_floor.sh takes into the floor exactly the experiments it queued, by the names it
gave them, not every experiment of the commit whose params match (a user's own `-S train.seed=7`
would join the group). DVC and prefbench.compare are stood in for by a logging stub ($PREFBENCH_PYTHON);
prefbench.compare's --experiments is checked on a real `dvc exp show --json` shape."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from prefbench.compare import only, seed_groups
from tests.conftest import ROOT

STUB = """#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in
  "-m dvc queue status") echo "Worker status: 0 active, 0 idle" ;;
esac
"""


def test_script_queues_named_experiments_and_compares_only_those(tmp_path):
    stub, log = tmp_path / "python", tmp_path / "calls.log"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {**os.environ, "PREFBENCH_PYTHON": str(stub), "LOG": str(log), "MODELS": "llama3", "SEEDS": "1,2",
           "POLL_S": "0", "RUN": "t1", "OUT": str(tmp_path / "noise.json")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "noise_floor.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    queued = [c for c in calls if c[2:5] == ["exp", "run", "--queue"]]
    names = [c[c.index("-n") + 1] for c in queued]
    assert names == ["nf-t1-llama3-train-1", "nf-t1-llama3-train-2", "nf-t1-llama3-data-1", "nf-t1-llama3-data-2"]
    assert all(c.count("-S") == 2 and "model=llama3" in c for c in queued)  # one seed each, no grid
    (compare,) = [c for c in calls if c[:2] == ["-m", "prefbench.compare"]]
    assert compare[compare.index("--experiments") + 1].split(",") == names


def exp(name, seed):
    return {"experiment": name, "model": "llama3", "log_loss": 1.0 + seed / 10, "accuracy": 0.5,
            "baseline": "abc", "params": {"train.seed": seed, "data.seed": 42}}


def test_only_the_named_experiments_make_the_group():
    exps = [exp("nf-1", 1), exp("nf-2", 2), exp("users-own", 7)]
    assert seed_groups(exps)[0]["n"] == 3  # params alone take the user's run in
    (group,) = seed_groups(only(exps, ["nf-1", "nf-2"]))
    assert group["n"] == 2 and sorted(group["experiments"]) == ["nf-1", "nf-2"]
    with pytest.raises(SystemExit, match="no finished experiment named nf-3"):
        only(exps, ["nf-1", "nf-3"])
