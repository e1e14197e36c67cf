"""Experiments at once: two `dvc exp run` in one workspace, and the queue with two workers
(docs/faults.md), on the small pipeline of tests/test_faults.py.

The suite runs the first (two commands, data stages only); PREFBENCH_FAULTS_FULL=1 also runs the
second: 6 experiments (both LLMs x 3 training seeds) through `dvc queue start -j 2`, three times,
each experiment's metrics equal to the same experiment run alone (float64 on CPU), and all of
them seen by prefbench.compare. The queue is run by benchmarks/noise_floor.sh, which carries the
project's workaround for DVC's worker that exits with experiments still queued
(treeverse/dvc#10562: it starts another worker).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from prefbench.compare import experiments
from tests import forked, gitcopy
from tests.test_faults import FULL, STAGES, clean, digest, dvc, faulty_python, small_repo  # noqa: F401  (fixtures)

MODELS, SEEDS = ("llama3", "gemma2"), (1, 2, 3)
COMPARED = {"eval.json": ("log_loss", "accuracy", "n_samples"), "train.json": ("final_loss", "steps")}


def test_two_exp_runs_at_once_one_ends_with_the_lock_message(clean, faulty_python, tmp_path):
    """The second `dvc exp run` in the same workspace, started while the first runs (its sample
    stage paused 2.5 s), ends with DVC's lock message ("... is busy, it is being blocked by") and
    runs nothing. The first's stages complete, their outputs the clean run's and DVC's status up
    to date: nothing is corrupted. DVC 3.67 then fails to record the first as an experiment (the
    second's clean-up took its baseline ref: "'NoneType' object is not subscriptable"); the same
    `dvc exp run` again records it, its stages restored from the run cache (docs/faults.md)."""
    repo = small_repo(tmp_path)
    env = gitcopy.env(PREFBENCH_PYTHON=str(faulty_python), PREFBENCH_TEST_FAULT="sample pause:2.5")
    first = subprocess.Popen([gitcopy.dvc(), "exp", "run", "--name", "first", "tokenize"], cwd=repo, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in first.stdout:  # until its first stage runs
        lines.append(line)
        if "Running stage 'sample'" in line:
            break
    code, second = dvc(repo, faulty_python, "exp", "run", "--name", "second", "tokenize")
    out = "".join(lines) + first.communicate(timeout=600)[0]
    assert first.poll() is not None and code != 0, second[-3000:]
    assert "is busy, it is being blocked by" in second and "Running stage" not in second, second[-3000:]
    assert first.returncode == 0 or "Failed to reproduce experiment" in out, out[-3000:]
    ran = [s for s in ("params", "sample", "prepare", "tokenize") if f"Running stage '{s}'" in out]
    assert ran == ["params", "sample", "prepare", "tokenize"], out[-3000:]  # every stage up to tokenize
    assert out.count("Updating lock file 'dvc.lock'") == len(ran), out[-3000:]  # ... ran through
    for o in ("sample/train.csv", "sample/test.csv", "prepared", "tokens"):
        assert digest(repo / "data" / o) == digest(clean / o), o
    code, out = dvc(repo, faulty_python, "status", "tokenize")
    assert code == 0 and "up to date" in out, out
    code, out = dvc(repo, faulty_python, "exp", "run", "--name", "first", "tokenize")
    assert code == 0 and "Running stage" not in out, out[-3000:]  # recorded now, nothing run again
    code, out = dvc(repo, faulty_python, "exp", "show", "--json")
    assert code == 0 and '"first"' in out and '"second"' not in out, out[-3000:]


def exp_rows(repo, python) -> list[dict]:
    code, out = dvc(repo, python, "exp", "show", "--json")
    assert code == 0, out[-3000:]
    return experiments(json.loads(out[out.index("["):]))


def key(exp: dict) -> tuple[str, int]:
    return exp["params"]["model"], exp["params"]["train.seed"]


@pytest.mark.skipif(not FULL, reason="the queue three times over: PREFBENCH_FAULTS_FULL=1")
def test_two_queue_workers_run_six_experiments_as_alone(tmp_path):
    repo = small_repo(tmp_path)
    python = forked.server().python
    alone = {}
    for model in MODELS:
        for seed in SEEDS:
            code, out = dvc(repo, python, "exp", "run", "-f", "--name", f"alone-{model}-{seed}",
                            "-S", f"model={model}", "-S", f"train.seed={seed}")
            assert code == 0, out[-3000:]
            alone[(model, seed)] = {f: json.loads((repo / "metrics" / f).read_text()) for f in COMPARED}
    gitcopy.sh("git", "reset", "-q", "--hard", cwd=repo)
    seen = {e["experiment"] for e in exp_rows(repo, python)}
    for repetition in range(3):
        # -f: every stage runs in the workers (else DVC's run cache would restore the runs above)
        proc = gitcopy.run("bash", "benchmarks/noise_floor.sh", cwd=repo, check=False, extra_env={
            "PREFBENCH_PYTHON": str(python), "MODELS": " ".join(MODELS), "SEED_PARAMS": "train.seed",
            "SEEDS": ",".join(map(str, SEEDS)), "JOBS": "2", "POLL_S": "2", "QUEUE_SET": "-f",
            "OUT": f"../noise-{repetition}.json"})
        assert proc.returncode == 0, f"repetition {repetition}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        rows = exp_rows(repo, python)
        new = [e for e in rows if e["experiment"] not in seen]
        seen |= {e["experiment"] for e in rows}
        assert sorted(key(e) for e in new) == sorted(alone), f"repetition {repetition}: {[key(e) for e in new]}"
        for exp in new:
            for name, metric in (("eval.json", k) for k in COMPARED["eval.json"]):
                assert exp[metric] == alone[key(exp)][name][metric], (repetition, key(exp), metric)
        noise = (tmp_path / f"noise-{repetition}.json").read_text()  # prefbench.compare's seed groups
        assert all(f'"{m}"' in noise for m in MODELS), noise
