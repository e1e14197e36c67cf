"""Faults: a stage killed anywhere, a full disk, and what DVC makes of them (docs/faults.md).

Every stage runs on a small pipeline (150 generated rows, the tiny llama3, one epoch with a
checkpoint every 2 steps), as a child of the session's warm server (tests/forked.py) that first
installs the fault, then runs the stage module as `python -m` would:

- a full disk: RLIMIT_FSIZE (what `ulimit -f` sets) of FULL_DISK_BYTES, so the stage's first
  larger write fails with EFBIG as on a full disk (ENOSPC takes the same path: prefbench.files);
  the stage must end with one line naming the output it could not write, leave neither that
  output nor a temporary file, and the next run (space back) gives the clean outputs;
- a kill: SIGKILL at a point of the stage's run, counted over its outputs (every output goes
  through prefbench.files.atomic_path, in a fixed order): on entering output k (`enter`), in the
  middle of writing it (`mid`: a file size limit of half that output's largest file, with SIGXFSZ's
  default action, which ends the process at that write as SIGKILL would), with it written aside
  but not renamed (`written`), just after its rename (`renamed`), after a training checkpoint
  (`checkpoint`) and at exit (`exit`). Nothing partial may be left: each output is whole (the
  clean run's bytes) or absent, and running the stage again gives the clean outputs.

The suite runs one kill point per stage, mid-write of its first output (the train stage: after
its first checkpoint, as well), the full-disk case of every stage and one kill under `dvc repro`;
PREFBENCH_FAULTS_FULL=1 runs every kill point of every stage, each also under `dvc repro`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prefbench.files import remove
from tests import forked, gitcopy
from tests.conftest import ROOT
from tests.gitcopy import git_commit, git_copy

FULL = os.environ.get("PREFBENCH_FAULTS_FULL") == "1"
FULL_DISK_BYTES = 256  # smaller than every output but the smallest metrics JSON files


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]  # after --params; paths relative to the run folder
    outputs: tuple[str, ...]  # in the order the stage writes them (its atomic_path calls)
    timed: tuple[str, ...] = ()  # outputs holding timings or timestamps: checked whole, not by bytes


STAGES = {s.name: s for s in (
    Stage("sample", ("--out", "sample/train.csv", "--test-out", "sample/test.csv"),
          ("sample/train.csv", "sample/test.csv")),
    Stage("prepare", ("--csv", "sample/train.csv", "--out", "prepared", "--metrics", "metrics/data.json"),
          ("prepared", "metrics/data.json")),
    Stage("tokenize", ("--prepared", "prepared", "--out", "tokens", "--metrics", "metrics/tokens.json"),
          ("tokens", "metrics/tokens.json")),
    Stage("train", ("--tokens", "tokens", "--out", "adapter", "--metrics", "metrics/train.json", "--live", "dvclive"),
          ("dvclive", "adapter", "metrics/train.json"), timed=("dvclive", "metrics/train.json")),
    Stage("evaluate", ("--tokens", "tokens", "--adapter", "adapter", "--metrics", "metrics/eval.json",
                       "--predictions", "metrics/predictions.csv", "--calibration", "metrics/calibration.csv",
                       "--speed-accuracy", "metrics/speed_accuracy.json"),
          ("metrics/predictions.csv", "metrics/calibration.csv", "metrics/speed_accuracy.json", "metrics/eval.json"),
          timed=("metrics/speed_accuracy.json", "metrics/eval.json")),
    Stage("predict", ("--test-csv", "sample/test.csv", "--adapter", "adapter", "--out", "submission.csv",
                      "--metrics", "metrics/predict.json"),
          ("submission.csv", "metrics/predict.json"), timed=("metrics/predict.json",)),
)}

# Run in the forked child before the stage (argv: -m stages.NAME args, as scripts/python.sh passes
# them to $PREFBENCH_PYTHON): installs the fault $PREFBENCH_TEST_FAULT names for that stage
# ("NAME fsize:BYTES", "NAME POINT:K[:BYTES]" or "NAME pause:SECONDS"; other stages run untouched),
# then runs the stage.
FAULT = r'''
import atexit, os, resource, runpy, signal, sys
from contextlib import contextmanager
module, sys.argv = sys.argv[2], sys.argv[2:]
target, _, fault = os.environ.get("PREFBENCH_TEST_FAULT", "").partition(" ")
point, _, rest = fault.partition(":") if module == f"stages.{target}" else ("none", "", "")
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core files
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def patch(module, name, new):  # also where it was imported by name (the server imported prefbench already)
    real = getattr(module, name)
    for m in list(sys.modules.values()):
        if getattr(m, name, None) is real:
            setattr(m, name, new)
if point == "pause":  # a slow stage: another command can start meanwhile
    import time
    time.sleep(float(rest))
elif point == "fsize":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(rest), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
elif point == "exit":
    atexit.register(die)
elif point == "checkpoint":
    from prefbench import checkpoints
    real_save = checkpoints.save_checkpoint
    def save_checkpoint(*args, **kwargs):
        real_save(*args, **kwargs)
        die()
    patch(checkpoints, "save_checkpoint", save_checkpoint)
elif point != "none":
    from prefbench import files
    k, _, size = rest.partition(":")
    k, real, seen = int(k), files.atomic_path, []
    @contextmanager
    def atomic_path(path):
        n = len(seen)
        seen.append(path)
        if (point, n) == ("enter", k):
            die()
        if (point, n) == ("mid", k):  # the kernel ends the process at the write past `size` bytes
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(size), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with real(path) as tmp:
            yield tmp
            if (point, n) == ("written", k):
                die()
        if (point, n) == ("renamed", k):
            die()
    patch(files, "atomic_path", atomic_path)
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


def write_params(path: Path) -> Path:
    """The small pipeline: 80 generated rows (4 optimizer steps of 16, a checkpoint every 2), 10
    test rows without the A/B swap; the models by the committed relative paths (`models/` beside
    params.yaml), so that a stage folder's outputs and a repo copy's are the same bytes."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = "llama3"
    raw["sample"].update(rows=80, test_rows=10)
    raw["train"].update(epochs=1, checkpoint_every=2)
    raw["predict"]["swap_tta"] = False
    raw["models"]["llama3"].update(max_length=64, train_batch_size=16)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage(folder: Path, stage: Stage, fault: str = "none") -> tuple[int, str]:
    """Run `stage` in `folder` under `fault` (FAULT): (exit status, negative for a signal; stderr).
    Its stdout and stderr are pipes, not files, so that a file size limit applies to its outputs only."""
    args = ["--params", str(folder / "params.yaml"), *stage.args]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        child = forked.server().start(["-c", FAULT, "-m", f"stages.{stage.name}", *args], folder,
                                      {**os.environ, "PREFBENCH_TEST_FAULT": f"{stage.name} {fault}"},
                                      null, out_w, err_w)
    finally:
        for fd in (null, out_w, err_w):
            os.close(fd)
    chunks: dict[int, bytes] = {}

    def drain(fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            chunks[fd] = f.read()

    readers = [threading.Thread(target=drain, args=(fd,)) for fd in (out_r, err_r)]
    for t in readers:
        t.start()
    code = child.wait(900)
    for t in readers:
        t.join()
    return code, chunks[err_r].decode(errors="replace")


def digest(path: Path) -> str | None:
    """md5 of a file, or of a folder's files by relative path; None when absent."""
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.md5()
    for p in files:
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}\0".encode())
        h.update(hashlib.md5(p.read_bytes()).digest())
    return h.hexdigest()


def whole(path: Path) -> bool:
    """A timed output is whole: its JSON parses; a dvclive folder has its summary and loss curve."""
    if path.is_dir():
        return json.loads((path / "metrics.json").read_text()) is not None and \
            (path / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    return json.loads(path.read_text()) is not None


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic_path could leave (`.NAME.tmp-PID`, `.NAME.old-PID`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Every stage run once, uninterrupted: the outputs the faulted runs must end with."""
    folder = tmp_path_factory.mktemp("clean")
    write_params(folder / "params.yaml")
    (folder / "models").symlink_to(ROOT / "models")
    for stage in STAGES.values():
        code, err = run_stage(folder, stage)
        assert code == 0, f"{stage.name}: {err[-3000:]}"
    return folder


def inputs_of(clean: Path, stage: Stage, folder: Path) -> None:
    """Link the clean run's files into `folder`, leaving out `stage`'s own outputs."""
    (folder / "metrics").mkdir(parents=True)
    (folder / "params.yaml").write_text((clean / "params.yaml").read_text())
    for name in ("models", "sample", "prepared", "tokens", "adapter"):
        if name not in {o.split("/")[0] for o in stage.outputs}:
            (folder / name).symlink_to(clean / name)


def assert_clean(clean: Path, folder: Path, stage: Stage, allow_absent: bool = False,
                 leftovers_ok: bool = False) -> None:
    """Each output of `stage` in `folder` is the clean run's (bytes; timed outputs: whole), or
    absent when allowed; no temporary file is left (unless allowed: a killed run's)."""
    for out in stage.outputs:
        got = folder / out
        if allow_absent and not got.exists():
            continue
        assert got.exists(), f"{stage.name}: {out} missing"
        if out in stage.timed:
            assert whole(got), f"{stage.name}: {out} is not whole"
        else:
            assert digest(got) == digest(clean / out), f"{stage.name}: {out} differs from the clean run's"
    assert leftovers_ok or not leftovers(folder), leftovers(folder)


def kill_points(clean: Path, stage: Stage) -> list[str]:
    """Every kill point of `stage` (see the module doc); `mid` at half the output's largest file."""
    points = []
    for k, out in enumerate(stage.outputs):
        path = clean / out
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        largest = max(p.stat().st_size for p in files)
        points += [f"enter:{k}", f"mid:{k}:{largest // 2}", f"written:{k}", f"renamed:{k}"]
    return points + (["checkpoint"] if stage.name == "train" else []) + ["exit"]


def ci_points(clean: Path, stage: Stage) -> list[str]:
    """The suite's share: mid-write of the stage's first output; the train stage: after its first
    checkpoint (mid-run; its first larger write is a checkpoint, which the full-disk case fails)."""
    if stage.name == "train":
        return ["checkpoint"]
    return [p for p in kill_points(clean, stage) if p.startswith("mid:0:")]


def finished(point: str, stage: Stage) -> int:
    """How many of the stage's outputs are renamed into place when it is killed at `point`."""
    if point == "exit":
        return len(stage.outputs)
    if point == "checkpoint":
        return 0
    what, k = point.split(":")[:2]
    return int(k) + (what == "renamed")


def kill_and_rerun(clean: Path, folder: Path, stage: Stage, point: str) -> None:
    """Kill `stage` at `point`: what it finished is whole and the rest absent (no partial file at
    an output's path); run again, it ends with the clean outputs and no temporary files. The
    outputs of an earlier run are deleted first, as DVC deletes them before it runs a stage."""
    for out in stage.outputs:
        remove(folder / out)
    code, err = run_stage(folder, stage, point)
    assert code in (-signal.SIGKILL, -signal.SIGXFSZ), f"{stage.name} at {point}: exit {code}\n{err[-3000:]}"
    done = finished(point, stage)
    for k, out in enumerate(stage.outputs):
        if k < done:
            assert_clean(clean, folder, Stage(stage.name, stage.args, (out,), stage.timed), allow_absent=False,
                         leftovers_ok=True)
        else:
            assert not (folder / out).exists(), f"{stage.name} killed at {point}: {out} exists"
    code, err = run_stage(folder, stage)
    assert code == 0, f"{stage.name} after a kill at {point}: {err[-3000:]}"
    assert_clean(clean, folder, stage)


def test_write_failures_for_want_of_space_are_recognised_as_each_library_words_them(tmp_path):
    """ENOSPC, EDQUOT and EFBIG as OSError (Python, pandas, pyarrow), in safetensors' text, and
    torch's stream writer; any other error passes through atomic_path unchanged."""
    import errno

    from prefbench.files import atomic_path, no_space_reason
    assert no_space_reason(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert no_space_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "Disk quota exceeded"
    assert no_space_reason(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert no_space_reason(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert no_space_reason(OSError(errno.ENOENT, "No such file or directory")) is None
    assert no_space_reason(ValueError("a bug")) is None
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "out"):
            raise ValueError("a bug")
    # safetensors under a real file size limit, in a forked child (the limit stays there)
    code = ("import resource, numpy, sys; from safetensors.numpy import save_file\n"
            "from prefbench.files import OutputError, atomic_path\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))\n"
            "try:\n    with atomic_path(sys.argv[1]) as tmp: save_file({'x': numpy.zeros(10000)}, str(tmp))\n"
            "except OutputError as e: sys.exit(f'OutputError: {e}')")  # short: stderr is a file, limited too
    proc = forked.run("-c", code, tmp_path / "w.safetensors")
    assert proc.returncode == 1 and f"OutputError: could not write {tmp_path / 'w.safetensors'}: File too large" \
        in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- a full disk and a kill: each stage

@pytest.mark.parametrize("name", list(STAGES))
def test_full_disk_and_a_kill_leave_no_partial_output(clean, tmp_path, name):
    """Under `ulimit -f` the stage's first larger write fails: one line naming that output, no
    traceback, nothing partial left. Then killed mid-write (the train stage: also after its first
    checkpoint). The next run gives the clean outputs."""
    stage = STAGES[name]
    inputs_of(clean, stage, tmp_path)
    code, err = run_stage(tmp_path, stage, f"fsize:{FULL_DISK_BYTES}")
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 1 and "Traceback" not in err, err[-3000:]
    # the output the stage could not write: one of its outputs, or a training checkpoint
    failed = last.removeprefix("error: could not write ").split(":")[0]
    assert any(failed == w or failed.startswith(w + "/") for w in [*stage.outputs, "adapter.ckpt"]), last
    assert "File too large" in last and "free some space and run the stage again" in last, last
    assert not (tmp_path / failed).exists() and not leftovers(tmp_path)
    assert not list((tmp_path / "adapter.ckpt").glob(".tmp-*"))  # no half checkpoint either
    for point in ci_points(clean, stage):
        kill_and_rerun(clean, tmp_path, stage, point)


@pytest.mark.skipif(not FULL, reason="the whole kill matrix: PREFBENCH_FAULTS_FULL=1")
@pytest.mark.parametrize("name", list(STAGES))
def test_kill_anywhere(clean, tmp_path, name):
    """Every kill point of the stage, one after another in one folder (each run starts from what
    the kill before it left)."""
    stage = STAGES[name]
    inputs_of(clean, stage, tmp_path)
    for point in kill_points(clean, stage):
        kill_and_rerun(clean, tmp_path, stage, point)


# ---------------------------------------------------------------- under `dvc repro`

def in_repo(out: str) -> str:
    """A stage folder's output path as dvc.yaml names it."""
    top = out.split("/")[0]
    if top == "adapter":
        return f"models/{out}"
    return f"data/{out}" if top in ("sample", "prepared", "tokens", "submission.csv") else out


@pytest.fixture(scope="module")
def faulty_python(tmp_path_factory) -> Path:
    """$PREFBENCH_PYTHON for DVC's stage commands (scripts/python.sh): the warm server's client,
    FAULT run before the stage."""
    folder = tmp_path_factory.mktemp("faulty")
    (folder / "fault.py").write_text(FAULT)
    script = folder / "python"
    script.write_text(f'#!/bin/sh\nexec {forked.server().python} -c "$(cat {folder / "fault.py"})" "$@"\n')
    script.chmod(0o755)
    return script


def small_repo(folder: Path) -> Path:
    repo = git_copy(folder / "repo")
    write_params(repo / "params.yaml")
    git_commit(repo, "the small pipeline")
    return repo


def dvc(repo: Path, python: Path, *args: str, fault: str = "") -> str:
    """`dvc ARGS` (on the warm server) with the stages on `python`; stdout and stderr, one text,
    and the exit status."""
    proc = gitcopy.run(gitcopy.dvc(), *args, cwd=repo, check=False,
                       extra_env={"PREFBENCH_PYTHON": str(python), "PREFBENCH_TEST_FAULT": fault})
    return proc.returncode, proc.stdout + proc.stderr


def kill_under_dvc(clean: Path, repo: Path, python: Path, stage: Stage, point: str, upto: str | None = None) -> None:
    """`dvc repro -f -s STAGE` with the stage killed at `point`: DVC fails naming the stage and
    records nothing; the next `dvc repro [upto]` (default: every stage) completes, every output
    equal to the clean run's (bytes; timed ones whole) and `dvc status` clean."""
    if point == "checkpoint":  # a checkpoint left by an earlier kill would be resumed past this point
        remove(repo / "models" / "adapter.ckpt")  # (left when DVC restored train from its run cache)
    code, out = dvc(repo, python, "repro", "-f", "-s", stage.name, fault=f"{stage.name} {point}")
    assert code != 0 and f"failed to reproduce '{stage.name}'" in out, out[-3000:]
    code, out = dvc(repo, python, "repro", *[upto] if upto else [])
    assert code == 0, out[-3000:]
    names = list(STAGES)
    for s in list(STAGES.values())[:names.index(upto) + 1 if upto else None]:
        for o in s.outputs:
            got = repo / in_repo(o)
            assert whole(got) if o in s.timed else digest(got) == digest(clean / o), f"{in_repo(o)} after {point}"
    code, out = dvc(repo, python, "status", *[upto] if upto else [])
    assert code == 0 and "up to date" in out, out[-3000:]
    # A temporary file of the killed run stays when DVC restores the stage from its run cache
    # instead of running it (which would delete it): git ignores it, so it is never committed.
    untracked = gitcopy.sh("git", "status", "--porcelain", "--untracked-files=all", cwd=repo)
    assert not [line for line in untracked.splitlines() if ".tmp-" in line or ".old-" in line], untracked


def test_dvc_repro_after_a_kill_gives_the_clean_outputs(clean, faulty_python, tmp_path):
    """`dvc repro tokenize` of a small pipeline, tokenize killed mid-write: the token cache is
    absent (nothing DVC or the train stage could take) and DVC sees the stage to run; `dvc repro`
    then completes with the clean outputs, and does again after a second kill (forced)."""
    repo = small_repo(tmp_path)
    point = ci_points(clean, STAGES["tokenize"])[0]
    code, out = dvc(repo, faulty_python, "repro", "tokenize", fault=f"tokenize {point}")
    assert code != 0 and "failed to reproduce 'tokenize'" in out, out[-3000:]
    assert not (repo / "data" / "tokens").exists() and (repo / "data" / "prepared").is_dir()
    code, out = dvc(repo, faulty_python, "status", "tokenize")
    assert "tokenize" in out and "up to date" not in out, out
    kill_under_dvc(clean, repo, faulty_python, STAGES["tokenize"], point, upto="tokenize")


@pytest.mark.skipif(not FULL, reason="the whole kill matrix: PREFBENCH_FAULTS_FULL=1")
@pytest.mark.parametrize("name", list(STAGES))
def test_kill_anywhere_under_dvc(clean, faulty_python, tmp_path, name):
    repo = small_repo(tmp_path)
    code, out = dvc(repo, faulty_python, "repro")
    assert code == 0, out[-3000:]
    for point in kill_points(clean, STAGES[name]):
        kill_under_dvc(clean, repo, faulty_python, STAGES[name], point)
