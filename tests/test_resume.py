"""Checkpoints (prefbench.checkpoints, accelerate's save_state / load_state): a train stage killed
(SIGKILL) mid-run and run again ends with the same adapter and the same evaluation as an
uninterrupted run; a checkpoint made with other params is ignored; a checkpoint holds the trainable
weights in safetensors and nothing that needs unpickling code to load."""

import json
import os
import signal
import time

import pytest
import yaml
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file

from prefbench.sample import generate_arena_sample
from prefbench.files import atomic_path
from tests import forked
from tests.conftest import ROOT
from tests.test_stages import run_stage


def write_params(path, lora_dropout=0.0, **train):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = "llama3"
    raw["sample"]["rows"] = 150
    raw["train"].update({"epochs": 2, "checkpoint_every": 3, "log_every": 2, **train})
    for cfg in (c for c in raw["models"].values() if "kind" not in c):  # the LLM entries (tfidf: `kind`)
        cfg["pretrained"] = str(ROOT / cfg["pretrained"])
        cfg["max_length"] = 64
        cfg["lora_dropout"] = lora_dropout
    path.write_text(yaml.safe_dump(raw))
    return ["--params", str(path)]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    p = write_params(tmp / "params.yaml")
    generate_arena_sample(150, 0).to_csv(tmp / "train.csv", index=False)
    run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
              "--metrics", str(tmp / "data.json"))
    run_stage("tokenize", *p, "--prepared", str(tmp / "prepared"), "--out", str(tmp / "tokens"),
              "--metrics", str(tmp / "tokens.json"))
    return tmp / "tokens"


def train_args(params, tokens, out):
    return [*params, "--tokens", str(tokens), "--out", str(out / "adapter"), "--metrics", str(out / "train.json"),
            "--live", str(out / "live")]


def evaluate(params, tokens, out) -> dict:
    run_stage("evaluate", *params, "--tokens", str(tokens), "--adapter", str(out / "adapter"),
              "--metrics", str(out / "eval.json"), "--predictions", str(out / "pred.csv"),
              "--calibration", str(out / "cal.csv"), "--speed-accuracy", str(out / "sa.json"))
    return json.loads((out / "eval.json").read_text())


def curve(out) -> list[list[str]]:
    """(step, loss) rows of the dvclive loss curve (timestamps dropped)."""
    lines = (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    cols = [header.index("step"), header.index("loss")]
    return [[row.split("\t")[c] for c in cols] for row in lines[1:]]


def kill_after_first_checkpoint(args: list[str], ckpt) -> None:
    proc = forked.start("-m", "stages.train", *args)
    deadline = time.monotonic() + 600
    while not list(ckpt.glob("step-*")):
        assert proc.poll() is None, "train ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_killed_and_resumed_run_equals_uninterrupted_run(tokens, tmp_path):
    """With LoRA dropout, so the resumed run must also restore the torch RNG (accelerate's
    random_states file) to end bit for bit equal."""
    params = write_params(tmp_path / "params.yaml", lora_dropout=0.1)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    out_whole = run_stage("train", *train_args(params, tokens, whole))
    assert "resuming" not in out_whole
    assert not (whole / "adapter.ckpt").exists()  # deleted after a successful run

    kill_after_first_checkpoint(train_args(params, tokens, resumed), resumed / "adapter.ckpt")
    assert not (resumed / "adapter").exists() and not (resumed / "train.json").exists()
    [ckpt] = (resumed / "adapter.ckpt").glob("step-*")
    assert sorted(f.name for f in ckpt.iterdir()) == [
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin", "state.json"]
    trainable = load_file(ckpt / "model.safetensors")  # only the trainable weights, not the frozen base
    assert trainable and all("lora_" in k or "score" in k for k in trainable), sorted(trainable)[:5]
    for name in ("optimizer.bin", "random_states_0.pkl", "scheduler.bin"):
        accelerate_load(ckpt / name)  # torch.load(weights_only=True), as load_state reads them: no code unpickled
    out = run_stage("train", *train_args(params, tokens, resumed))
    assert "resuming from checkpoint" in out
    step = int(out.split("optimizer step ")[1].split(",")[0])
    assert 3 <= step < json.loads((whole / "train.json").read_text())["steps"]
    assert not (resumed / "adapter.ckpt").exists()

    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert a[key].equal(b[key]), key  # bitwise
    ta, tb = (json.loads((d / "train.json").read_text()) for d in (whole, resumed))
    for key in ("final_loss", "steps", "samples", "tokens"):
        assert ta[key] == tb[key], key
    assert curve(whole) == curve(resumed)  # the whole curve, including the points before the kill
    assert evaluate(params, tokens, whole)["log_loss"] == evaluate(params, tokens, resumed)["log_loss"]


def test_checkpoint_of_one_device_resumes_under_ddp(tokens, tmp_path):
    """devices is not part of the fingerprint: a run killed on one process continues on two
    (accelerate launch, DDP, same optimizer steps), writes its later checkpoints from both and ends
    with the adapter of an uninterrupted one-process run, up to float64 summation order (measured:
    see tests/test_multi_gpu.py)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    one = write_params(tmp_path / "one.yaml", epochs=1)
    run_stage("train", *train_args(one, tokens, whole))
    kill_after_first_checkpoint(train_args(one, tokens, resumed), resumed / "adapter.ckpt")
    two = write_params(tmp_path / "two.yaml", epochs=1, devices=2)
    # the launched processes on the warm server too ($PREFBENCH_PYTHON: prefbench.launch)
    out = run_stage("train", *train_args(two, tokens, resumed), env={"PREFBENCH_PYTHON": str(forked.server().python)})
    assert "2 processes through accelerate launch --multi_gpu" in out and "resuming from checkpoint" in out
    assert f"--no_python {forked.server().python} -m stages.train" in out
    assert not (resumed / "adapter.ckpt").exists()
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-12, key  # float64 summation order: 1.4e-15 measured
    ta, tb = (json.loads((d / "train.json").read_text()) for d in (whole, resumed))
    assert (tb["devices"], tb["steps"], tb["samples"]) == (2, ta["steps"], ta["samples"])
    assert curve(resumed)[0] == curve(whole)[0]  # the curve from before the kill, logged again


def test_checkpoint_with_other_params_is_ignored(tokens, tmp_path):
    out = tmp_path / "run"
    kill_after_first_checkpoint(train_args(write_params(tmp_path / "a.yaml", epochs=1), tokens, out),
                                out / "adapter.ckpt")
    other = write_params(tmp_path / "b.yaml", epochs=1, learning_rate=1e-3)
    stdout = run_stage("train", *train_args(other, tokens, out))
    assert "ignoring checkpoint" in stdout and "resuming" not in stdout
    assert not (out / "adapter.ckpt").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_checkpoint_every_is_not_part_of_the_fingerprint(tokens, tmp_path):
    """checkpoint_every may change between the killed run and the resumed one (0: resume, write none)."""
    out = tmp_path / "run"
    kill_after_first_checkpoint(train_args(write_params(tmp_path / "a.yaml", epochs=1), tokens, out),
                                out / "adapter.ckpt")
    same = write_params(tmp_path / "b.yaml", epochs=1, checkpoint_every=0)
    stdout = run_stage("train", *train_args(same, tokens, out))
    assert "resuming from checkpoint" in stdout


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed while writing")
    assert (out / "weights").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("new")
    assert (out / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["adapter"]
