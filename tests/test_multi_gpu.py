"""Several devices: sharded inference (one model copy per device, rows dealt round-robin) and DDP
training through accelerate (launched by the stage itself, or by hand on several machines). On a
CPU, `devices: 2` runs two CPU workers (threads for inference, two gloo processes for training):
the same code paths as two GPUs, checked against one device.

Training tolerance: the processes all-reduce (sum) their weighted gradients where one process sums
them in one pass, so the weights differ by float64 summation order only. Measured on the default
tiny Llama3 (float64, 120 rows, 8-16 optimizer steps): at most 1.4e-15 absolute on weights of up to
0.13; the tests allow 1e-12 (three orders of magnitude above, far below any real difference). Packed
training with token-budget batches, 2 processes against 1 (ranks split each batch by tokens, so
their packed rows differ from the one process's): 2.8e-15 measured, the same 1e-12 allowed."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from prefbench.config import ParamsError
from prefbench.data import deal_round_robin
from prefbench.infer import predict, predict_sharded
from prefbench.models import load_model, pick_devices
from prefbench.train_batches import shard
from tests import forked
from tests.conftest import ROOT
from tests.test_stages import run_stage


def test_pick_devices_counts_gpus_and_names_the_key():
    assert pick_devices(0, "evaluate.devices", visible=4) == [torch.device("cuda", i) for i in range(4)]
    assert pick_devices(2, "evaluate.devices", visible=4) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert pick_devices(1, "train.devices", visible=0) == [torch.device("cpu")]
    assert pick_devices(0, "train.devices", visible=0) == [torch.device("cpu")]
    assert pick_devices(2, "train.devices", visible=0) == [torch.device("cpu")] * 2
    with pytest.raises(ParamsError, match=r"train\.devices: 3 GPUs asked for, 2 visible"):
        pick_devices(3, "train.devices", visible=2)


def test_round_robin_deals_every_row_once_and_balances_lengths():
    lengths = np.random.default_rng(0).integers(10, 1000, 101)
    shards = deal_round_robin(lengths, 2)
    assert sorted(np.concatenate(shards).tolist()) == list(range(101))
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    # dealt in turn from the longest down: each worker's token count within one long row of the other
    assert abs(lengths[shards[0]].sum() - lengths[shards[1]].sum()) <= lengths.max()


@pytest.mark.parametrize("world", [2, 3])
def test_shard_weights_make_the_rank_average_the_batch_mean(world):
    """DDP averages gradients over ranks; with these weights the average of the weighted local mean
    losses is the whole batch's mean loss, for any batch size, including ranks left empty."""
    rng = np.random.default_rng(world)
    for size in range(1, 10):
        idx = rng.permutation(50)[:size]
        losses = rng.random(50)
        parts = [shard(idx, r, world) for r in range(world)]
        covered = sorted(np.concatenate([p for p, w in parts if w > 0]).tolist())
        assert covered == sorted(idx.tolist())
        average = sum(w * losses[p].mean() for p, w in parts) / world
        assert average == pytest.approx(losses[idx].mean(), rel=1e-12)
    assert shard(np.arange(8), 0, 1)[1] == 1.0  # one device: weight exactly 1, numerics unchanged


def test_sharded_predict_equals_one_device(tiny_llama_tok):
    from prefbench.config import load_params
    cfg = load_params(ROOT / "params.yaml").models["llama3"]
    cfg.pretrained = str(ROOT / "models" / "tiny-llama3")
    cpu = torch.device("cpu")
    models = [load_model(cfg, tiny_llama_tok.pad_token_id, cpu)[0] for _ in range(2)]
    rng = np.random.default_rng(1)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(5, 60, 23)]
    one = predict(models[0], seqs, 4, tiny_llama_tok.pad_token_id, cpu)
    two = predict_sharded(models, [cpu, cpu], seqs, 4, tiny_llama_tok.pad_token_id)
    assert two["devices"] == 2 and two["tokens"] == one["tokens"]
    np.testing.assert_allclose(two["logits"], one["logits"], atol=1e-5)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sample"].update(rows=150, test_rows=20)
    raw["train"]["epochs"] = 1
    for cfg in (c for c in raw["models"].values() if "kind" not in c):  # the LLM entries (tfidf: `kind`)
        cfg["pretrained"] = str(ROOT / cfg["pretrained"])
        cfg["max_length"] = 96
    for k in (1, 2):
        raw["train"]["devices"] = raw["evaluate"]["devices"] = k
        (tmp / f"p{k}.yaml").write_text(yaml.safe_dump(raw))
    # packed training, token-budget batches (about 8 rows of the 96-token rows), half an epoch: pb1.yaml
    raw["models"][raw["model"]].update(packing="packed", train_token_budget=600)
    raw["train"]["epochs"] = 0.5
    raw["train"]["devices"] = raw["evaluate"]["devices"] = 1  # two "machines" launch it (the test below)
    (tmp / "pb1.yaml").write_text(yaml.safe_dump(raw))
    p = ["--params", str(tmp / "p1.yaml")]
    run_stage("sample", *p, "--out", str(tmp / "train.csv"), "--test-out", str(tmp / "test.csv"))
    run_stage("prepare", *p, "--csv", str(tmp / "train.csv"), "--out", str(tmp / "prepared"),
              "--metrics", str(tmp / "data.json"))
    run_stage("tokenize", *p, "--prepared", str(tmp / "prepared"), "--out", str(tmp / "tokens"),
              "--metrics", str(tmp / "tokens.json"))
    return tmp


def train(tmp, k):
    out = run_stage("train", "--params", str(tmp / f"p{k}.yaml"), "--tokens", str(tmp / "tokens"),
                    "--out", str(tmp / f"adapter{k}"), "--metrics", str(tmp / f"train{k}.json"),
                    "--live", str(tmp / f"live{k}"))
    return out, json.loads((tmp / f"train{k}.json").read_text())


WEIGHTS_ATOL = 1e-12  # see the module doc: measured 1.4e-15


def assert_trains_like_one_process(tmp, k, one_k):
    """Run `k` (2 processes) against run `one_k` (1 process): the same steps, rows and tokens, the
    same loss curve and adapter up to float64 summation order."""
    one, other = (json.loads((tmp / f"train{j}.json").read_text()) for j in (one_k, k))
    assert one["devices"] == 1 and other["devices"] == 2
    assert (other["steps"], other["samples"], other["tokens"]) == (one["steps"], one["samples"], one["tokens"])
    assert other["final_loss"] == pytest.approx(one["final_loss"], abs=1e-9)
    a = load_file(tmp / f"adapter{one_k}" / "adapter_model.safetensors")
    b = load_file(tmp / f"adapter{k}" / "adapter_model.safetensors")
    assert set(a) == set(b)
    print(f"{k} vs {one_k}: weights {max((a[n] - b[n]).abs().max().item() for n in a):.1e} apart")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHTS_ATOL, rtol=0)
    assert any(a[n].abs().max() > 0 for n in a if "lora_B" in n)  # trained (B starts at 0): a real comparison
    curves = [(tmp / f"live{j}" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
              for j in (k, one_k)]
    assert len(curves[0]) == len(curves[1])


def test_two_machines_train_packed_budget_batches_like_one_process(tokens):
    """Several machines (docs/multi-gpu.md): one `accelerate launch --num_machines 2
    --machine_rank R` per machine, here two "machines" of one CPU process each on 127.0.0.1; the
    stage, already launched, trains in the launcher's processes whatever train.devices says. The
    params are packed training with token-budget batches (pb1.yaml): each rank's share of a batch
    split by tokens (prefbench.train_batches.shard_tokens), packed into one row through PackedClassifier
    (the module DDP wraps, so its gradients are all-reduced), against the same params on one
    process. (Padded batches under DDP, and the stage's own relaunch for train.devices: 2, run in
    tests/test_resume.py's resume under DDP.)"""
    tmp = tokens
    train(tmp, "b1")
    one = json.loads((tmp / "trainb1.json").read_text())
    assert one["steps"] > 3 and one["samples"] < one["steps"] * 32  # budget batches, not 32 rows each
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The stage as README's `accelerate launch ... -m stages.train ...`, its interpreter the warm
    # server's client (`--no_python`: the program and its arguments as given; tests/forked.py)
    stage = ["--no_python", str(forked.server().python), "-m", "stages.train", "--params", str(tmp / "pb1.yaml"),
             "--tokens", str(tmp / "tokens"), "--out", str(tmp / "adapterm"), "--metrics", str(tmp / "trainm.json"),
             "--live", str(tmp / "livem")]
    logs = [(tmp / f"machine{rank}.out", tmp / f"machine{rank}.err") for rank in (0, 1)]
    machines = [forked.start(  # `python -m accelerate.commands.launch ...`, forked (tests/forked.py)
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
        "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", "no", "--dynamo_backend", "no", *stage,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, out=out, err=err) for rank, (out, err) in zip((0, 1), logs)]
    codes = [m.wait(timeout=600) for m in machines]
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    for code, (_, err) in zip(codes, outputs):
        assert code == 0, err[-3000:]
    assert "through accelerate launch" not in outputs[0][0]  # no second launch
    assert "on 2 x cpu" in outputs[0][0]
    assert_trains_like_one_process(tmp, "m", one_k="b1")


def test_sharded_evaluate_gives_the_same_predictions(tokens):
    if not (tokens / "adapter1").exists():
        train(tokens, 1)
    metrics = {}
    for k in (1, 2):
        run_stage("evaluate", "--params", str(tokens / f"p{k}.yaml"), "--tokens", str(tokens / "tokens"),
                  "--adapter", str(tokens / "adapter1"), "--metrics", str(tokens / f"eval{k}.json"),
                  "--predictions", str(tokens / f"pred{k}.csv"), "--calibration", str(tokens / f"cal{k}.csv"),
                  "--speed-accuracy", str(tokens / f"sa{k}.json"))
        metrics[k] = json.loads((tokens / f"eval{k}.json").read_text())
    assert metrics[2]["devices"] == 2 and metrics[1]["devices"] == 1
    assert metrics[2]["log_loss"] == metrics[1]["log_loss"]
    assert metrics[2]["n_samples"] == metrics[1]["n_samples"]
    assert (tokens / "pred2.csv").read_text() == (tokens / "pred1.csv").read_text()


def test_compiled_merged_copies_predict_like_the_plain_model(tiny_gemma_tok):
    """models.*.compile: true merges LoRA into the base and compiles; two compiled copies in two threads give
    the logits of the plain, uncompiled adapter model, and the compiling happens in the warm-up.

    Dynamo captures the merged model's graph with dynamic shapes here as on a GPU (its guards and
    graph breaks are what this checks); the graph then runs on Dynamo's `eager` backend instead of
    Inductor's code. Inductor's CPU backend (C++ built with g++) is not the GPU path's code
    generator (Triton), and for this one graph it costs about 85 s of CPU on a 2-core machine
    without a compile cache, as in a clean CI run (AOTAutograd alone, `aot_eager`: 44 s; `eager`:
    16 s, the imports included). The GPU path through Inductor is measured, with recompiles in the
    timed loop refused (benchmarks/results/default-path-compile-h100.json at commit 29c075c)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from prefbench.config import load_params
    from prefbench.models import prepare_for_inference
    cfg = load_params(ROOT / "params.yaml").models["gemma2"]
    cfg.compile = True
    cfg.pretrained = str(ROOT / "models" / "tiny-gemma2")
    cpu = torch.device("cpu")

    def adapted():
        model = load_model(cfg, tiny_gemma_tok.pad_token_id, cpu)[0]
        torch.manual_seed(1)  # non-zero LoRA B, so merging changes the weights
        return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))

    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(5, 60, 40)]
    plain = predict(adapted(), seqs, 8, tiny_gemma_tok.pad_token_id, cpu)
    import torch._dynamo.utils as dynamo_utils
    dynamo_utils.counters.clear()
    copies = [prepare_for_inference(adapted(), cfg, backend="eager") for _ in range(2)]
    assert all(isinstance(c, torch._dynamo.eval_frame.OptimizedModule) for c in copies)
    compiled = predict_sharded(copies, [cpu, cpu], seqs, 8, tiny_gemma_tok.pad_token_id)
    assert compiled["warmup_seconds"] > 0 and dynamo_utils.counters["stats"]["unique_graphs"] >= 1
    np.testing.assert_allclose(compiled["logits"], plain["logits"], atol=1e-5)
