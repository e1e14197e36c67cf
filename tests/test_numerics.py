"""Non-finite numbers and running out of device memory stop training and evaluation with a message
that says where and what to change; evaluation writes no metrics from non-finite logits."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from prefbench.config import load_params
from prefbench.device_errors import (BatchOutOfMemoryError, NonFiniteLogitsError, NonFiniteLossError, check_finite,
                                     non_finite_message, oom_message)
from prefbench.infer import predict
from prefbench.models import load_model, load_tokenizer
from prefbench.tokenize import read_tokens
from prefbench.lora import add_lora
from prefbench.train import steady_rate, train
from tests import forked
from tests.conftest import ROOT
from tests.test_resume import tokens, train_args, write_params  # noqa: F401  (tokens: a fixture)

CPU = torch.device("cpu")


@pytest.fixture
def setup():
    """The real tiny Llama3 with LoRA, a few random rows, and train params for a short run."""
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.models["llama3"], pretrained=str(ROOT / "models" / "tiny-llama3"),
                              max_length=64, train_batch_size=4)
    tok = load_tokenizer(cfg.pretrained)
    torch.manual_seed(0)
    model, _, _ = load_model(cfg, tok.pad_token_id, CPU)
    model = add_lora(model, cfg)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(10, 500, size=int(rng.integers(20, 40))) for _ in range(40)]
    labels = rng.integers(0, 3, size=len(seqs))
    tp = dataclasses.replace(params.train, epochs=1.0, log_every=2, checkpoint_every=0)
    return model, cfg, tp, tok.pad_token_id, seqs, labels


def test_nan_weight_stops_training_naming_the_step(setup):
    model, cfg, tp, pad, seqs, labels = setup
    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)

    def log(step, values):
        if step == 2:  # after the second optimizer step, a weight becomes nan
            with torch.no_grad():
                lora_a[0, 0] = float("nan")

    with pytest.raises(NonFiniteLossError) as err:
        train(model, seqs, labels, cfg, tp, pad, CPU, log=log, name="llama3")
    msg = str(err.value)
    assert "loss is nan at optimizer step 3 of 10" in msg
    assert "train.learning_rate" in msg


def test_steady_rate_reads_the_second_half_of_the_logged_steps():
    # marks at logged steps (every 5 of 20): the first 10 steps slow (compiles), then 100 tokens/s
    marks = [(0, 0.0, 0), (5, 50.0, 500), (10, 60.0, 1000), (15, 65.0, 1500), (20, 70.0, 2000)]
    assert steady_rate(marks) == pytest.approx(1000 / 10.0)
    # a run resumed at step 10: its second half starts at step 15
    assert steady_rate([(10, 60.0, 1000), (15, 65.0, 1500), (20, 80.0, 2000)]) == pytest.approx(500 / 15.0)
    # too sparse for a second half: from the start; one step: none
    assert steady_rate([(0, 0.0, 0), (20, 40.0, 2000)]) == pytest.approx(50.0)
    assert steady_rate([(0, 0.0, 0), (1, 1.0, 100)]) is None


def test_non_finite_message_suggests_bf16_or_fp32_for_fp16():
    msg = non_finite_message("loss", float("inf"), 7, 100, torch.float16, 2e-4, "gemma2")
    assert "optimizer step 7 of 100" in msg and "float16" in msg and "Gemma2" in msg
    assert "models.gemma2.dtype: bfloat16" in msg and "float32" in msg


def test_train_stage_stops_on_nan_loss_with_one_message(tokens, tmp_path):  # noqa: F811
    # A learning rate of 1e30 blows the weights up at the first step: the loss is nan at the second.
    params = write_params(tmp_path / "params.yaml", epochs=1, learning_rate=1e30, warmup_ratio=0.0)
    proc = forked.run("-m", "stages.train", *train_args(params, tokens, tmp_path))
    assert proc.returncode == 1
    assert "train: error: training loss is nan at optimizer step 2 of " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()


def test_check_finite_counts_rows():
    logits = np.zeros((5, 3), dtype=np.float32)
    check_finite(logits)
    logits[1, 0] = np.nan
    logits[3] = np.inf
    with pytest.raises(NonFiniteLogitsError, match="2 of 5 rows have non-finite logits"):
        check_finite(logits, "float16", "gemma2")


def test_evaluate_stage_writes_no_metrics_from_nan_logits(tokens, tmp_path):  # noqa: F811
    params = write_params(tmp_path / "params.yaml")
    cfg = load_params(params[1]).selected
    tok = load_tokenizer(cfg.pretrained)
    model = add_lora(load_model(cfg, tok.pad_token_id, CPU)[0], cfg)
    score = next(p for n, p in model.named_parameters() if "score" in n and p.requires_grad)
    with torch.no_grad():
        score.fill_(float("nan"))  # an adapter whose score head is nan: every logit is nan
    model.save_pretrained(tmp_path / "adapter")
    # the train stage writes the seed its base was built from beside the adapter; evaluate reads it
    (tmp_path / "adapter" / "resolved_params.json").write_text(json.dumps({"train": {"seed": 0}}))
    args = ["--tokens", str(tokens), "--adapter", str(tmp_path / "adapter"), "--metrics", str(tmp_path / "eval.json"),
            "--predictions", str(tmp_path / "pred.csv"), "--calibration", str(tmp_path / "cal.csv"),
            "--speed-accuracy", str(tmp_path / "sa.json")]
    proc = forked.run("-m", "stages.evaluate", *params, *args)
    assert proc.returncode == 1
    n_val = len(read_tokens(tokens, "val")[0])
    assert f"evaluate: error: {n_val} of {n_val} rows have non-finite logits" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any((tmp_path / f).exists() for f in ("eval.json", "pred.csv", "cal.csv"))


def test_oom_message_names_batch_and_settings(setup):
    _, cfg, *_ = setup
    msg = oom_message("train", 4, 61, cfg, "llama3", step=12)
    assert "optimizer step 12" in msg and "batch of 4 rows" in msg and "61 tokens" in msg
    assert "models.llama3.train_batch_size (now 4" in msg and "models.llama3.max_length" in msg
    assert "models.llama3.gradient_checkpointing: true" in msg and "models.llama3.quantization: 4bit" in msg
    msg = oom_message("evaluate", 32, 1024, dataclasses.replace(cfg, quantization="4bit"), "gemma2")
    assert "evaluation" in msg and "batch of 32 rows" in msg and "1024 tokens" in msg
    assert "models.gemma2.eval_batch_size (now" in msg and "models.gemma2.max_length" in msg
    assert "gradient_checkpointing" not in msg and "quantization" not in msg  # no help at inference / already 4-bit


def raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_train_turns_out_of_memory_into_a_clear_error(setup, monkeypatch):
    model, cfg, tp, pad, seqs, labels = setup
    monkeypatch.setattr(model, "forward", raise_oom)
    with pytest.raises(BatchOutOfMemoryError) as err:
        train(model, seqs, labels, cfg, tp, pad, CPU, name="llama3")
    msg = str(err.value)
    assert "optimizer step 1" in msg and f"batch of {cfg.train_batch_size} rows" in msg
    assert "models.llama3.train_batch_size" in msg
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_packed_predict_turns_out_of_memory_into_the_stages_clear_error(setup, monkeypatch):
    """Packed forwards (the GPU default) run out of memory as padded batches do: a
    BatchOutOfMemoryError, which evaluate and predict end on in one line, naming the model's keys."""
    import prefbench.packing

    model, cfg, _, pad, seqs, _ = setup
    monkeypatch.setattr(prefbench.packing, "forward_packed", raise_oom)
    with pytest.raises(BatchOutOfMemoryError, match="models.llama3.token_budget or models.llama3.max_length") as err:
        prefbench.packing.predict_packed(model, seqs, 256, pad, CPU, warmup=False, name="llama3")
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_predict_turns_out_of_memory_into_a_clear_error(setup, monkeypatch):
    model, cfg, _, pad, seqs, _ = setup
    monkeypatch.setattr(model, "forward", raise_oom)
    longest = max(len(s) for s in seqs)
    with pytest.raises(BatchOutOfMemoryError, match=f"batch of 8 rows, the longest {longest} tokens"):
        predict(model, seqs, 8, pad, CPU, warmup_batches=0, cfg=cfg, name="llama3")


def test_lora_input_cast_is_off_under_autocast_and_changes_nothing():
    """Mixed-precision training (GPU bf16 / fp16: accelerate's autocast) keeps the LoRA weights in
    float32; peft casts each LoRA layer's input, a whole activation, to float32, and autocast casts
    it straight back to bf16 for the matmul. prefbench.train turns peft's cast off for the loop:
    on a CPU under bf16 autocast a forward and backward give the same loss and LoRA gradients bit
    for bit either way (LoRA's B made non-zero, so its path counts), and the train loop runs with
    the cast off and leaves it on afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from peft.helpers import disable_input_dtype_casting
    from peft.tuners.tuners_utils import BaseTunerLayer

    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.models["llama3"], pretrained=str(ROOT / "models" / "tiny-llama3"),
                              dtype="bfloat16", max_length=64, train_batch_size=4)
    tok = load_tokenizer(cfg.pretrained)
    model = add_lora(load_model(cfg, tok.pad_token_id, CPU)[0], cfg)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert {p.dtype for p in lora.values()} == {torch.float32}  # peft's float32 adapters on a bf16 base
    with torch.no_grad():
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(10, 500, size=(4, 24)))

    def loss_and_grads(cast_off: bool):
        model.zero_grad(set_to_none=True)
        with disable_input_dtype_casting(model, active=cast_off), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lora.items()}

    (loss_on, grads_on), (loss_off, grads_off) = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(loss_on, loss_off)
    assert all(torch.equal(grads_on[n], grads_off[n]) for n in lora) and any(g.abs().sum() > 0 for g in grads_on.values())

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    seen = []
    hook = layers[0].register_forward_pre_hook(lambda m, args: seen.append(getattr(m, "cast_input_dtype_enabled", True)))
    seqs = [rng.integers(10, 500, size=20) for _ in range(8)]
    tp = dataclasses.replace(params.train, epochs=1.0, checkpoint_every=0)
    # accelerate keeps one state per process, set by the first Accelerator (an earlier test's, in
    # a pytest worker: no mixed precision); reset around this bf16 one, as accelerate's own tests do
    AcceleratorState._reset_state()
    try:
        train(model, seqs, np.zeros(8, dtype=np.int64), cfg, tp, tok.pad_token_id,
              accelerator=Accelerator(cpu=True, mixed_precision="bf16"))
    finally:
        AcceleratorState._reset_state()
    hook.remove()
    assert seen and not any(seen)  # off in every forward of the loop
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in layers)  # and on again after


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_add_is_peft_lora_to_rounding(dropout):
    """prefbench.lora.fused_lora_add (training under mixed precision: the scale and the add inside B's
    matmul) computes peft's LoRA Linear: on the fp64 tiny Llama3 with B non-zero, the loss, the
    logits and every trainable gradient agree to 1e-12 (dropout: the same mask, same seed); the
    patched forward runs (it is not peft's), and leaving the block restores peft's forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    from prefbench.lora import _fused_forward, fused_lora_add

    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.models["llama3"], pretrained=str(ROOT / "models" / "tiny-llama3"),
                              max_length=64, lora_dropout=dropout)
    tok = load_tokenizer(cfg.pretrained)
    model = add_lora(load_model(cfg, tok.pad_token_id, CPU)[0], cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    model.train()
    ids = torch.tensor(np.random.default_rng(0).integers(10, 500, size=(4, 24)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def run():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        out = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0]))
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in trainable.items()}

    logits_peft, grads_peft = run()
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    calls = []
    with fused_lora_add(model):
        assert all(m.forward.__func__ is _fused_forward for m in layers)
        hook = layers[0].base_layer.register_forward_hook(lambda *a: calls.append(1))
        logits_fused, grads_fused = run()
        hook.remove()
    assert calls and all("forward" not in vars(m) for m in layers)
    assert torch.allclose(logits_fused, logits_peft, rtol=0, atol=1e-12)
    assert all(torch.allclose(grads_fused[n], grads_peft[n], rtol=1e-10, atol=1e-12) for n in trainable)
    assert any(g.abs().sum() > 0 for n, g in grads_fused.items() if "lora_A" in n)
