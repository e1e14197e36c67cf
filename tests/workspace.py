"""The one pipeline run the DVC tests share: the README's commands, run once per test session in
fresh git copies of the repo.

Two copies run side by side, one core each. NATIVE runs the README and the pull-request workflow
through: `make repro`, `dvc repro` again (nothing to do), `dvc push` / `git clone` + `dvc pull`,
`dvc exp run -S model=tfidf`, `-S model=mistral` (half an epoch), switching back to llama3 (restored from the run
cache), `dvc exp show` / `dvc metrics diff`, `dvc exp push` / `exp pull` through a git remote and
the workflow's own `run:` steps. SECOND runs its data stages (`dvc repro tokenize`, whose outputs
must be the native copy's byte for byte) under another PYTHONHASHSEED, `dvc exp run -S
model=gemma2`, `-S model=qwen2` (half an epoch), and
benchmarks/noise_floor.sh (two seeds through the parallel queue, each training llama3). Each LLM's
default run trains once (COPY_OF; Qwen2's and Mistral's, the default DAG for the families added by
one params entry each, are checked for their metrics, tests/test_e2e.py) and is checked against the committed reference
(tests/test_e2e.py). The default runs under other CPU kernels (PyTorch's portable ones, MKL's
reproducible path) are benchmarks/cpu_repro.sh's: the same log-loss to 6 decimals for both models
(benchmarks/results/cpu-repro.jsonl). Which copy runs what keeps the two copies' scripts about as
long: the session waits for the longer.

The native `make repro` starts every stage as a user's does: a fresh interpreter per stage, with
nothing activated (PYTHONHASHSEED=1). Every later stage, and all of the second copy's, runs through
$PREFBENCH_PYTHON (scripts/python.sh) on the session's warm interpreter server (tests/forked.py,
PYTHONHASHSEED=forked.HASH_SEED): the same stage code (the library imported from the checkout,
which the copies' files equal) on the same kernels, each stage with its copy's environment, without
its seconds of imports per stage. So do the copies' own DVC commands, all but that `make repro`'s
(forked.Server.dvc: `-m dvc`, what the venv's `dvc` entry point runs), and prefbench's DVC calls
(prefbench.compare.dvc and benchmarks/noise_floor.sh: `$PREFBENCH_PYTHON -m dvc`; the queue's
workers are processes DVC starts itself); the workflow's steps run the venv's `dvc` as written.

After each model's run the copy's outputs are snapshotted into logs/<model>/ (metrics, adapter,
dvclive, submission), so the per-stage smoke tests read them after the copy has moved on. Every
command's output is in logs/<n>-<name>.log. A failing command stops its copy's script; the tests
then fail naming the log (`Copy.log`).

PREFBENCH_WRITE_REFERENCE=1 rewrites metrics/reference.json from the two copies' runs (COPY_OF).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from scripts.write_reference import write_reference
from tests import forked
from tests.gitcopy import BIN, ROOT, env, git_copy

# The pull-request workflow's steps that run here as on GitHub (install: the venv is linked in;
# posting the comment needs GitHub).
WORKFLOW_STEPS = ("Reproduce the default pipeline (CPU)", "Build the review comment", "Plots against the base")
# The queue's two experiments are made small: they check the queue and the noise-floor script, not
# the default run's numbers (those are checked above). A tenth of an epoch (6 steps): the data stages are the
# committed run's (restored from the cache), and train, evaluate and predict run.
QUEUE_EPOCHS = 0.1
QUEUE_SET = f"-S train.epochs={QUEUE_EPOCHS} -S predict.swap_tta=false"  # (the submission's A/B swap: not needed)
# Qwen2's and Mistral's runs check that a family added by one params entry goes through the DAG and
# learns (tests/test_e2e.py), not their numbers: half an epoch (25 steps) gets both below the prior's
# log-loss by about 0.07, in a quarter of the default's training time.
FAMILY_SET = "-S train.epochs=0.5"
SNAPSHOT = ("metrics", "data/tokens", "models/adapter", "dvclive", "data/submission.csv", "params.yaml", "dvc.lock")
# the command that ran each model
MODEL_LOGS = {"llama3": "1-repro", "gemma2": "4-gemma2", "qwen2": "4b-qwen2", "mistral": "5b-mistral", "tfidf": "5-tfidf"}
# the copy whose run a test reads
COPY_OF = {"llama3": "native", "gemma2": "second", "qwen2": "second", "mistral": "native", "tfidf": "native"}
# PYTHONHASHSEED of each copy's shell: native's `make repro` stages are fresh interpreters with 1; the
# second copy's stages all run on the server, whose seed is fixed at its start (forked.HASH_SEED)
HASH_SEEDS = {"native": "1", "second": forked.HASH_SEED}


def default_epochs():
    """params.yaml's train.epochs, which the Mistral run changed (FAMILY_SET)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["epochs"]


def user_env() -> dict[str, str]:
    """A fresh shell's environment: the venv not on PATH, no VIRTUAL_ENV; one thread per copy, so
    the two copies share two cores without oversubscription (float64 results do not depend on it)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != BIN.resolve())
    e = {k: v for k, v in env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    e.update(PATH=path, OMP_NUM_THREADS="1")
    return e


def workflow_script() -> str:
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())["jobs"]["review"]["steps"]
    runs = {s["name"]: s["run"] for s in steps if "name" in s and "run" in s}
    return "\n".join(runs[name] for name in WORKFLOW_STEPS)


def snap(name: str) -> str:
    return f"mkdir -p ../logs/{name} && cp -r {' '.join(SNAPSHOT)} ../logs/{name}/"


def script(native: bool) -> str:
    """The user's session; logs and snapshots in ../logs (outside the repo copy). Stages and DVC
    commands run on the session's server after the native copy's first `make repro`."""
    dvc = forked.server().dvc
    warm = f"export PREFBENCH_PYTHON={forked.server().python}"  # later stages on the warm server
    noise_floor = [  # the noise floor of two seeds through the queue, two workers in parallel
        (f"QUEUE_SET='{QUEUE_SET}' MODELS=llama3 SEED_PARAMS=train.seed SEEDS=1,2 JOBS=2 POLL_S=10 "
         "bash benchmarks/noise_floor.sh > ../logs/9-noise.log 2>&1"),
        "cp metrics/noise.json ../logs/noise.json",
        f"{dvc} exp show --json > ../logs/exp-show-queue.json"]
    if not native:  # data stages, the gemma2 experiment, the noise floor (queued on HEAD)
        return "\n".join(["set -ex", warm, f"{dvc} repro tokenize > ../logs/1-repro.log 2>&1",
                          "mkdir -p ../logs/llama3 && cp -r data/tokens dvc.lock ../logs/llama3/",
                          # (nothing new when the committed dvc.lock already holds these data stages)
                          "git add -A && git commit -qm 'data stages' --allow-empty",
                          f"{dvc} exp run -S model=gemma2 --name gemma2-exp > ../logs/4-gemma2.log 2>&1",
                          snap("gemma2"),
                          # the other families, one params entry each, through the same DAG
                          f"{dvc} exp run -S model=qwen2 {FAMILY_SET} --name qwen2-exp > ../logs/4b-qwen2.log 2>&1",
                          snap("qwen2"),
                          # params.yaml back to llama3; the queue runs each experiment from HEAD's
                          # files and the cached data stages, whatever the workspace's outputs are
                          "git reset -q --hard", *noise_floor]) + "\n"
    return "\n".join([
        "set -ex",
        # README: `make repro` (the venv exists: `-o` keeps make from reinstalling the shared one)
        "make -o .venv/.installed repro > ../logs/1-repro.log 2>&1", snap("llama3"), warm,
        f"{dvc} repro > ../logs/2-again.log 2>&1",
        # a local folder as the DVC remote, in the committed config so that clones have it
        f"{dvc} remote add -d local ../remote", "git add -A && git commit -qm 'default run'",
        f"{dvc} push > ../logs/3-push.log 2>&1",
        f"{dvc} status --cloud > ../logs/3-cloud.log 2>&1",
        "git clone -q . ../clone && ln -s \"$(readlink -f .venv)\" ../clone/.venv",
        f"(cd ../clone && {dvc} pull && {dvc} status && {dvc} repro) > ../logs/3-pull.log 2>&1",
        "cp -r ../clone/models/adapter ../logs/clone-pulled-adapter",
        f"{dvc} exp run -S model=tfidf --name tfidf-exp > ../logs/5-tfidf.log 2>&1", snap("tfidf"),
        f"{dvc} exp run -S model=mistral {FAMILY_SET} --name mistral-exp > ../logs/5b-mistral.log 2>&1", snap("mistral"),
        # back to llama3 and the default epochs (`exp run -S` leaves its values in params.yaml)
        f"{dvc} exp run -S model=llama3 -S train.epochs={default_epochs()} --name llama3-again > ../logs/6-back.log 2>&1",
        "cp dvc.lock ../logs/back.lock",
        f"{dvc} exp show --json > ../logs/exp-show.json",
        f"{dvc} metrics diff HEAD tfidf-exp > ../logs/7-diff.log 2>&1",
        # experiments shared through a git remote, with their DVC-cached outputs
        "git init -q --bare ../origin.git && git remote add origin ../origin.git",
        "git push -q origin HEAD",
        f"{dvc} exp push origin tfidf-exp > ../logs/8-exp-push.log 2>&1",
        (f"(cd ../clone && git remote add shared ../origin.git && {dvc} exp pull shared tfidf-exp"
         f" && {dvc} exp show --json > ../logs/clone-exp-show.json && {dvc} exp apply tfidf-exp"
         f" && {dvc} status) > ../logs/8-exp-pull.log 2>&1"),
        "cp -r ../clone/models/adapter ../logs/clone-adapter",
        f"git reset -q --hard && {dvc} checkout --force > /dev/null",
        # the pull-request workflow against the committed default run
        "export BASE=HEAD GITHUB_STEP_SUMMARY=../logs/summary.md",
        "{\n" + workflow_script() + "\n} > ../logs/10-workflow.log 2>&1"]) + "\n"


@dataclass
class Copy:
    top: Path  # holds prefbench/ (the repo copy), logs/, clone/, remote/
    returncode: int
    output: str

    @property
    def repo(self) -> Path:
        return self.top / "prefbench"

    @property
    def logs(self) -> Path:
        return self.top / "logs"

    def log(self, name: str) -> str:
        """A command's log by name (`1-repro`, `4-gemma2`, ...); fails naming the script's end if
        that command never ran."""
        path = self.logs / f"{name}.log"
        assert path.exists(), f"{path} missing: the script stopped earlier:\n{self.output[-3000:]}\n{self.tail()}"
        return path.read_text()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))

    def json(self, name: str):
        return json.loads((self.logs / name).read_text())

    def run_of(self, model: str) -> "Run":
        return Run(model, self.logs / model, self.repo, self.log(MODEL_LOGS[model]))

    def check(self) -> None:
        assert self.returncode == 0, f"{self.top.name} copy failed:\n{self.output[-3000:]}\n{self.tail()}"


@dataclass
class Run:
    """One model's run in a copy: its snapshot (metrics/, tokens/, adapter/, dvclive/,
    submission.csv, params.yaml) and the DVC output that made it; the data stages' outputs are the
    repo's, the same for every model."""
    model: str
    dir: Path
    repo: Path
    out: str  # stdout and stderr of the `make repro` / `dvc exp run` that ran the stages

    def metrics(self, name: str) -> dict:
        return json.loads((self.dir / "metrics" / name).read_text())

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.dir / "params.yaml").read_text())


def run_of(copies: dict[str, Copy], model: str) -> Run:
    """The session's run of `model`, from the copy that ran it (COPY_OF)."""
    return copies[COPY_OF[model]].run_of(model)


def build(tmp_path_factory) -> dict[str, Copy]:
    procs = {}
    for name, hash_seed in HASH_SEEDS.items():
        top = tmp_path_factory.mktemp(f"workspace-{name}")
        repo = git_copy(top / "prefbench")
        (repo / ".venv").symlink_to(BIN.parent)  # what `make install` made; git ignores it
        (top / "logs").mkdir()
        procs[name] = (top, subprocess.Popen(["bash", "-c", script(name == "native")], cwd=repo,
                                             env={**user_env(), "PYTHONHASHSEED": hash_seed},
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = {name: proc.communicate(timeout=3600)[0] for name, (_, proc) in procs.items()}  # both finish first
    copies = {name: Copy(top, proc.returncode, outs[name]) for name, (top, proc) in procs.items()}
    if os.environ.get("PREFBENCH_WRITE_REFERENCE") == "1":  # after a change meant to move the default run
        write_reference({m: copies[COPY_OF[m]].logs / m / "metrics" / "eval.json" for m in ("llama3", "gemma2")},
                        ROOT / "metrics" / "reference.json")
    return copies
