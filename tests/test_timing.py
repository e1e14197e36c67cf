"""What the timers cover. The evaluate stage: collating batches is inside seconds_per_sample (it is
part of serving a row), loading the model is not (it is load_seconds), warm-up batches are not.
Training: tokens_per_second covers the whole loop, steady_tokens_per_second its second half.

The stage runs in-process through its `main` on a tiny pipeline built here (tokens from the
prepare and tokenize stages, a fresh LoRA adapter), with delays injected by module attribute into
`prefbench.infer.collate` and `prefbench.models.load_model`. A delay advances the clocks timers read
(time.perf_counter, time.monotonic) instead of sleeping: the test takes no longer for it, and a
1000-second delay per batch cannot be mistaken for real work on a busy machine.
"""

import dataclasses
import json
import math
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

import prefbench.infer
import prefbench.models
from prefbench.config import load_params
from prefbench.models import load_model, load_tokenizer
from prefbench.lora import add_lora
from tests.test_resume import tokens, write_params  # noqa: F401  (tokens: a fixture)

PER_BATCH = 1_000.0  # seconds added to every collate call
LOAD = 1_000_000.0  # seconds added to every base-model load


class Clock:
    """time.perf_counter and time.monotonic, plus whatever `advance` has added."""

    def __init__(self, monkeypatch):
        self.offset = 0.0
        for name in ("perf_counter", "monotonic"):
            real = getattr(time, name)
            monkeypatch.setattr(time, name, lambda real=real: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def adapter(tmp_path, tokens):  # noqa: F811
    params = write_params(tmp_path / "params.yaml")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["models"][raw["model"]]["eval_batch_size"] = 8  # several timed batches from the 30 validation rows
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_params(params[1]).selected
    tok = load_tokenizer(cfg.pretrained)
    add_lora(load_model(cfg, tok.pad_token_id, torch.device("cpu"))[0], cfg).save_pretrained(tmp_path / "adapter")
    # the train stage writes the seed its base was built from beside the adapter; evaluate reads it
    (tmp_path / "adapter" / "resolved_params.json").write_text(json.dumps({"train": {"seed": 0}}))
    return params, tmp_path


def run_evaluate(monkeypatch, params, tokens, out) -> dict:  # noqa: F811
    import stages.evaluate
    monkeypatch.setattr(sys, "argv", [
        "evaluate", *params, "--tokens", str(tokens), "--adapter", str(out / "adapter"),
        "--metrics", str(out / "eval.json"), "--predictions", str(out / "pred.csv"),
        "--calibration", str(out / "cal.csv"), "--speed-accuracy", str(out / "sa.json")])
    stages.evaluate.main()
    return json.loads((out / "eval.json").read_text())


def test_collate_is_timed_model_load_and_warmup_are_not(monkeypatch, adapter, tokens):  # noqa: F811
    params, out = adapter
    clock = Clock(monkeypatch)
    calls = {"collate": 0, "load": 0}
    collate, load = prefbench.infer.collate, prefbench.models.load_model

    def slow_collate(*args, **kwargs):
        calls["collate"] += 1
        clock.advance(PER_BATCH)
        return collate(*args, **kwargs)

    def slow_load(*args, **kwargs):
        calls["load"] += 1
        clock.advance(LOAD)
        return load(*args, **kwargs)

    monkeypatch.setattr(prefbench.infer, "collate", slow_collate)
    monkeypatch.setattr(prefbench.models, "load_model", slow_load)
    m = run_evaluate(monkeypatch, params, tokens, out)

    assert calls["load"] == m["devices"] == 1  # evaluate built its model through load_model
    batches = math.ceil(m["n_samples"] / m["batch_size"])
    assert batches >= 2 and calls["collate"] > batches  # timed batches, and warm-up ones before them
    # every timed batch's collate is in the predict time, no warm-up batch's and no model load;
    # the real work adds seconds at most, far below the 1000 s of a single injected delay
    assert batches * PER_BATCH <= m["predict_seconds"] < (batches + 0.5) * PER_BATCH  # a pass: the median
    assert m["seconds_per_sample"] == pytest.approx(m["predict_seconds"] / m["n_samples"], rel=1e-5)
    warmup = calls["collate"] - m["timing_passes"] * batches  # on the CPU the median of several passes
    assert warmup * PER_BATCH <= m["warmup_seconds"] < (warmup + 0.5) * PER_BATCH
    # the load is in load_seconds, and nothing of the predict loop is
    assert LOAD <= m["load_seconds"] < LOAD + 0.5 * PER_BATCH


def test_packed_evaluate_predicts_like_padded_batches_and_says_so(monkeypatch, adapter, tokens):  # noqa: F811
    """`packing: packed` (prefbench.packing: rows back to back in token-budget forwards, no padding)
    through the evaluate stage gives the padded batches' predictions and metrics, and eval.json says
    which ran. On a CPU `auto` pads (no varlen attention kernel), so the committed run is padded."""
    params, out = adapter
    path = out / "params.yaml"
    runs = {}
    for packing, devices in (("auto", 1), ("packed", 1), ("packed", 2)):
        raw = yaml.safe_load(path.read_text())
        raw["models"][raw["model"]].update(packing=packing, token_budget=200)  # several packs of the 30 rows
        raw["evaluate"]["devices"] = devices  # 2: two CPU copies, the packs dealt to them
        path.write_text(yaml.safe_dump(raw))
        runs[packing, devices] = (run_evaluate(monkeypatch, params, tokens, out), pd.read_csv(out / "pred.csv"))
    (padded, padded_pred), (packed, packed_pred) = runs["auto", 1], runs["packed", 1]
    assert padded["packed"] is False and packed["packed"] is True
    # two copies: each pack's logits do not depend on the copy that ran it
    two, two_pred = runs["packed", 2]
    assert two["devices"] == 2 and two["packed"] is True and two["log_loss"] == packed["log_loss"]
    assert two_pred.equals(packed_pred)
    assert packed["padding_share"] == 0 < padded["padding_share"]
    assert packed["log_loss"] == pytest.approx(padded["log_loss"], abs=1e-7)  # float64: measured <= 3e-9 per logit
    # every row's probabilities as written (rounded to 6 decimals: a last-digit flip at most)
    assert packed_pred["id"].tolist() == padded_pred["id"].tolist()
    cols = ["p_a", "p_b", "p_tie"]
    assert (packed_pred[cols] - padded_pred[cols]).abs().max().max() <= 1.01e-6


def test_packing_that_cannot_run_says_what_to_change():
    from prefbench.config import ParamsError
    from prefbench.infer import packs
    cfg = load_params_dict({"packing": "packed", "compile": True})
    with pytest.raises(ParamsError, match=r"models.llama3.packing: .*models.llama3.compile to false"):
        packs(cfg, "sdpa", "llama3")
    assert not packs(load_params_dict({"packing": "auto", "compile": True}), "flash_attention_4", "llama3")  # pads
    assert packs(load_params_dict({"packing": "auto"}), "flash_attention_4", "llama3")
    assert not packs(load_params_dict({"packing": "auto"}), "sdpa", "llama3")
    assert packs(load_params_dict({"packing": "packed"}), "sdpa", "llama3")


def load_params_dict(changes: dict):
    from prefbench.config import parse_params
    from tests.conftest import ROOT
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["llama3"].update(changes)
    return parse_params(raw).selected


def test_train_steady_rate_leaves_out_the_first_steps(monkeypatch, tmp_path):
    """train.json's tokens_per_second covers the whole loop; steady_tokens_per_second its second
    half of optimizer steps only: a delay in the first batch (as a GPU's first kernel compiles)
    lowers the first, not the second."""
    import numpy as np

    import prefbench.train
    from prefbench.train_batches import ShardCollate
    params = load_params(write_params(tmp_path / "params.yaml")[1])
    cfg, tp = params.selected, params.train
    cfg.train_batch_size = 4
    tok = load_tokenizer(cfg.pretrained)
    model = add_lora(load_model(cfg, tok.pad_token_id, torch.device("cpu"))[0], cfg)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(5, 40, 24)]  # 6 steps of 4 rows
    labels = rng.integers(0, 3, len(seqs))
    clock, calls, real = Clock(monkeypatch), [], ShardCollate.__call__

    def first_slow(self, idx):
        calls.append(len(idx))
        if len(calls) == 1:
            clock.advance(PER_BATCH)
        return real(self, idx)

    monkeypatch.setattr(ShardCollate, "__call__", first_slow)
    tp = dataclasses.replace(tp, epochs=1, checkpoint_every=0)
    result = prefbench.train.train(model, seqs, labels, cfg, tp, tok.pad_token_id, torch.device("cpu"))
    assert result["steps"] == 6 and len(calls) == 6
    assert result["train_seconds"] >= PER_BATCH
    assert result["tokens_per_second"] <= result["tokens"] / PER_BATCH
    assert result["steady_tokens_per_second"] > 100 * result["tokens_per_second"]
