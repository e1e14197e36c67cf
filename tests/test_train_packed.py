"""Packed (padding-free) LoRA training and token-budget batches (prefbench.train, prefbench.packing).

CPU, tiny models, float64, `packing: packed`: sdpa (Llama3) and eager (Gemma2: sliding window 64,
attention softcap) build the block-diagonal mask from the restarting position_ids, so each row
attends to itself only, as in its padded batch.

Tolerances, measured on this project's 2-core AMD EPYC machine with 1 and 2 threads, this CPU's
kernels and PyTorch's portable ones (ATEN_CPU_CAPABILITY=default, as another CPU rounds; also with
MKL_CBWR=COMPATIBLE) and avx2. A float64 Gemma2 still computes RMSNorm and RoPE's cos / sin in
float32: where the padded and the packed shapes take other vector paths, a float32 value rounds the
other way, about 1e-7 relative. Llama3 stays at float64's 1e-15.
- gradients of one batch, packed through PackedClassifier vs the stock classifier on the padded
  batch: at most 1.4e-7 of the largest gradient (Gemma2, portable kernels; 2.1e-10 on this CPU's,
  1 thread), losses 1.2e-9 apart; allowed GRAD_TOL and LOSS_TOL. A row attending to the rows before it, or
  pooling one token early, moves them by more than 1e-2 (test_a_leak_or_a_pooling_slip_is_caught).
- one optimizer step through `train`, packed vs padded: losses at most 4.6e-9 apart, the LoRA
  weights and score head 5.6e-7 (Gemma2, portable kernels; 1.1e-10 on this CPU's, 1 thread; Llama3
  8.6e-15); allowed LOSS_TOL and WEIGHT_TOL. AdamW's first step moves a weight by about the learning
  rate times the sign of its gradient (3e-3 here), so a wrong gradient shows as weights 3e-3 to
  6e-3 apart, and in the loss; the same normalisation lifts a float32-level gradient difference on
  a near-zero gradient to the 1e-7 seen above.
"""

import dataclasses

import numpy as np
import pytest
import torch

from prefbench.batching import collate, masks_padding
from prefbench.config import load_params
from prefbench.device_errors import BatchOutOfMemoryError
from prefbench.lora import add_lora
from prefbench.models import load_model, load_tokenizer
from prefbench.packing import PackedClassifier, collate_packed
from prefbench.train import train
from prefbench.train_batches import EpochBatches, budget_batches, shard, shard_tokens
from tests.conftest import ROOT

CPU = torch.device("cpu")
LENGTHS = [150, 3, 97, 64, 65, 12, 130, 1, 40, 88, 7, 129]  # around Gemma2's tiny window (64), shuffled
GRAD_TOL = 1e-5  # relative to the largest gradient; measured <= 1.4e-7 (module doc)
LOSS_TOL = 1e-6  # of one batch, and after one step; measured <= 4.6e-9
WEIGHT_TOL = 2e-5  # after one step; measured <= 5.6e-7, a wrong gradient >= 3e-3


def rows(tok, lengths, seed=0):
    """BOS + random non-special tokens (never the pad token, as tokenize.encode_rows guarantees)."""
    rng = np.random.default_rng(seed)
    vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    return [np.array([tok.bos_token_id] + list(rng.choice(vocab, n - 1))) for n in lengths]


def setup(name, **cfg_overrides):
    """(cfg, train params, tokenizer) for the tiny model `name`, float64 on the CPU."""
    params = load_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(params.models[name], pretrained=str(ROOT / "models" / f"tiny-{name}"),
                              **cfg_overrides)
    tp = dataclasses.replace(params.train, checkpoint_every=0, log_every=1)
    return cfg, tp, load_tokenizer(cfg.pretrained)


def lora_model(cfg, tok, seed=0):
    """The tiny base with LoRA, the same weights for the same seed."""
    torch.manual_seed(seed)
    model, dtype, _ = load_model(cfg, tok.pad_token_id, CPU, seed=seed)
    assert dtype == torch.float64
    return add_lora(model, cfg)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_rel_diff(a: dict, b: dict) -> float:
    scale = max(v.abs().max().item() for v in a.values())
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


# ------------------------------------------------------------------ packed equals padded

def packed_and_padded_gradients(name, pack_hook=None):
    """Gradients of the mean cross-entropy of LENGTHS rows: the stock classifier on the padded batch
    (masked as training masks it) and PackedClassifier on one packed row; LoRA B random so that
    every adapter matrix has a gradient."""
    cfg, _, tok = setup(name)
    model = lora_model(cfg, tok)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    seqs = rows(tok, LENGTHS)
    labels = torch.as_tensor(np.random.default_rng(1).integers(0, 3, len(seqs)))
    model.train()
    padded = collate(seqs, tok.pad_token_id, mask_padding=masks_padding(model))
    ref_loss = model(**padded, labels=labels).loss
    ref = gradients(model, ref_loss)
    pack = collate_packed(seqs, tok.pad_token_id)
    if pack_hook:
        pack_hook(pack)
    out = PackedClassifier(model)(**pack, labels=labels)
    return ref_loss.item(), out.loss.item(), ref, gradients(model, out.loss)


@pytest.mark.parametrize("name", ["llama3", "gemma2"])
def test_packed_gradients_equal_padded(name):
    ref_loss, loss, ref, got = packed_and_padded_gradients(name)
    diff = max_rel_diff(ref, got)
    print(f"{name}: loss {abs(loss - ref_loss):.1e} apart, gradients {diff:.1e} of the largest")
    assert set(got) == set(ref) and all(g.abs().max() > 0 for g in ref.values())
    assert abs(loss - ref_loss) < LOSS_TOL and diff < GRAD_TOL


def test_a_leak_or_a_pooling_slip_is_caught():
    """The tolerance has teeth: rows attending across the boundary (positions not restarting) and
    pooling one token early each move the gradients far past it."""
    def leak(pack):
        pack["position_ids"] = torch.arange(pack["input_ids"].shape[1])[None]

    def slip(pack):
        pack["pooled"] = pack["pooled"] - 1

    for hook in (leak, slip):
        ref_loss, loss, ref, got = packed_and_padded_gradients("llama3", hook)
        assert max_rel_diff(ref, got) > 1e-2 and abs(loss - ref_loss) > 1e-3, hook.__name__


def one_step(name, packing, **cfg_overrides):
    """train() for one optimizer step over all LENGTHS rows in one batch: (result, weights after)."""
    cfg, tp, tok = setup(name, packing=packing, train_batch_size=len(LENGTHS), **cfg_overrides)
    model = lora_model(cfg, tok)
    labels = np.random.default_rng(1).integers(0, 3, len(LENGTHS))
    result = train(model, rows(tok, LENGTHS), labels, cfg, dataclasses.replace(tp, epochs=1.0), tok.pad_token_id,
                   CPU, name=name)
    assert result["steps"] == 1
    return result, trainable(model)


@pytest.mark.parametrize("name,checkpointing", [("llama3", False), ("gemma2", False), ("llama3", True)])
def test_one_packed_step_equals_a_padded_step(name, checkpointing):
    """Through `train`: the same loss, and the caller's model left with the same weights (the
    wrapper trained it in place), gradient checkpointing included."""
    padded, before = one_step(name, "padded", gradient_checkpointing=checkpointing)
    packed, after = one_step(name, "packed", gradient_checkpointing=checkpointing)
    weights = max((before[k] - after[k]).abs().max().item() for k in before)
    print(f"{name} checkpointing={checkpointing}: loss {abs(packed['final_loss'] - padded['final_loss']):.1e} "
          f"apart, weights {weights:.1e}")
    assert set(after) == set(before)
    assert any(v.abs().max() > 1e-3 for k, v in after.items() if "lora_B" in k)  # it trained (B starts at 0)
    assert abs(packed["final_loss"] - padded["final_loss"]) < LOSS_TOL and weights < WEIGHT_TOL
    assert packed["tokens"] == padded["tokens"] == sum(LENGTHS)  # real tokens, no padding counted


# ------------------------------------------------------------------ token-budget batches

def test_budget_batches_take_every_row_once_an_epoch_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 300, 257)
    for budget in (1000, 250, 40):
        sampler = EpochBatches(lengths, 8, seed=3, token_budget=budget)
        epochs = [list(sampler) for _ in range(3)]
        for batches in epochs:
            assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
            for b, nxt in zip(batches, batches[1:] + [None]):
                assert lengths[b].sum() <= budget or len(b) == 1  # over budget only as one long row
                if nxt is not None:
                    assert lengths[b].sum() + lengths[nxt[0]] > budget  # closed only when the next won't fit
        if budget == 1000:
            assert len({len(e) for e in epochs}) > 1  # epochs differ in their number of batches
        again = EpochBatches(lengths, 8, seed=3, token_budget=budget)
        assert [as_lists(again) for _ in range(3)] == [[b.tolist() for b in e] for e in epochs]  # the seed decides
        assert as_lists(EpochBatches(lengths, 8, seed=4, token_budget=budget)) != as_lists(epochs[0])


def as_lists(batches) -> list[list[int]]:
    return [b.tolist() for b in batches]


def test_budget_batches_keep_a_long_row_alone():
    lengths = np.array([5, 50, 5, 5])
    for seed in range(5):
        batches = [b.tolist() for b in budget_batches(lengths, 20, np.random.default_rng(seed))]
        assert [1] in batches and all(lengths[b].sum() <= 20 for b in batches if b != [1])


def test_skip_replays_the_epochs_a_resumed_run_skips():
    """EpochBatches.skip(k) then iterating gives the batches after the first k, across epochs."""
    lengths = np.random.default_rng(1).integers(1, 100, 50)
    for budget, size in ((0, 7), (180, 7)):
        whole = EpochBatches(lengths, size, 0, budget)
        flat = [b for _ in range(3) for b in whole]
        for k in (0, 3, len(flat) // 3, len(flat) // 2):
            resumed = EpochBatches(lengths, size, 0, budget)
            done = resumed.skip(k)
            rest = list(resumed)[done:] + [b for _ in range(2) for b in resumed]
            assert as_lists(rest[:len(flat) - k]) == as_lists(flat[k:])


def planned(lengths, budget, grad_accum, epochs, seed=0):
    """(optimizer steps, rows, tokens) of the micro-batches a run of `epochs` takes, from a sampler of its own."""
    sampler = EpochBatches(lengths, 1, seed, budget)
    micro = sampler.optimizer_steps(grad_accum, epochs) * grad_accum
    taken = []
    while len(taken) < micro:
        taken += list(sampler)
    taken = taken[:micro]
    return micro // grad_accum, sum(len(b) for b in taken), int(sum(lengths[b].sum() for b in taken))


@pytest.mark.parametrize("epochs,grad_accum", [(1.0, 1), (1.5, 2)])
def test_train_takes_the_planned_budget_steps(epochs, grad_accum):
    """The step count `train` plans is what it takes, on the batches the plan counted: one epoch of
    budget batches trains on every row once; 1.5 epochs on half the second epoch's batches more
    (rounded up to whole optimizer steps)."""
    cfg, tp, tok = setup("llama3", packing="packed", train_token_budget=120)
    lengths = np.random.default_rng(2).integers(5, 45, 24)
    tp = dataclasses.replace(tp, epochs=epochs, grad_accum_steps=grad_accum)
    result = train(lora_model(cfg, tok), rows(tok, lengths), np.zeros(len(lengths), dtype=np.int64), cfg, tp,
                   tok.pad_token_id, CPU, name="llama3")
    steps, samples, tokens = planned(lengths, 120, grad_accum, epochs, seed=tp.seed)
    assert (result["steps"], result["samples"], result["tokens"]) == (steps, samples, tokens)
    sampler = EpochBatches(lengths, 1, tp.seed, 120)
    first, second = len(list(sampler)), len(list(sampler))
    if epochs == 1.0:
        assert steps == first and samples == len(lengths) and tokens == lengths.sum()
    else:
        assert steps == int(np.ceil((first + second / 2) / 2))


class Killed(Exception):
    pass


@pytest.mark.parametrize("packing,budget,batch", [("packed", 100, 1), ("padded", 0, 3)])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, packing, budget, batch):
    """Packed with token-budget batches (and padded batches of rows, as before), LoRA dropout (the
    RNG is restored too), 1.5 epochs: a run stopped after its step-2 checkpoint and resumed from it
    ends with the uninterrupted run's weights, bit for bit, its curve and counts."""
    cfg, tp, tok = setup("llama3", packing=packing, train_token_budget=budget, train_batch_size=batch,
                         lora_dropout=0.1)
    tp = dataclasses.replace(tp, epochs=1.5, checkpoint_every=2)
    lengths = np.random.default_rng(3).integers(5, 45, 20)
    seqs, labels = rows(tok, lengths), np.random.default_rng(4).integers(0, 3, len(lengths))

    def run(ckpt, log=None):
        model = lora_model(cfg, tok)
        return model, train(model, seqs, labels, cfg, tp, tok.pad_token_id, CPU, log=log, checkpoint_dir=ckpt,
                            fingerprint="fp", name="llama3")

    whole_log, resumed_log = [], []
    whole, ref = run(tmp_path / "whole", lambda s, v: whole_log.append((s, v)))
    assert ref["steps"] > 4

    def stop_at_3(step, values):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "resumed", stop_at_3)
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["step-00000002"]
    resumed, result = run(tmp_path / "resumed", lambda s, v: resumed_log.append((s, v)))
    for key in ("steps", "samples", "tokens", "final_loss"):
        assert result[key] == ref[key], key
    assert resumed_log == whole_log  # the points before the stop logged again, then the same ones
    a, b = trainable(whole), trainable(resumed)
    assert all(a[k].equal(b[k]) for k in a)


# ------------------------------------------------------------------ several processes

@pytest.mark.parametrize("world", [2, 3])
def test_shard_tokens_splits_by_tokens_and_weights_average_the_batch_mean(world):
    """Per-rank rows partition the batch, token counts within one row of each other, and the weighted
    local means average (DDP) to the whole batch's mean loss; a rank left without a row reruns one
    with weight 0."""
    rng = np.random.default_rng(world)
    lengths = rng.integers(1, 500, 60)
    for size in range(1, 14):
        idx = rng.permutation(60)[:size]
        losses = rng.random(60)
        parts = [shard_tokens(idx, lengths, r, world) for r in range(world)]
        real = [(p, w) for p, w in parts if w > 0]
        assert sorted(np.concatenate([p for p, _ in real]).tolist()) == sorted(idx.tolist())
        assert all(w == 0.0 and len(p) == 1 for p, w in parts if w == 0)
        assert len(real) == min(world, size)
        tokens = [lengths[p].sum() for p, _ in real]
        assert max(tokens) - min(tokens) <= lengths[idx].max()
        average = sum(w * losses[p].mean() for p, w in parts) / world
        assert average == pytest.approx(losses[idx].mean(), rel=1e-12)
    idx = np.array([4, 2, 9])
    local, weight = shard_tokens(idx, lengths, 0, 1)
    assert local is idx and weight == 1.0  # one device: the batch as it is


def test_shard_tokens_balances_where_every_nth_row_would_not():
    lengths = np.array([100, 1, 100, 1, 100, 1, 100, 1])  # a token-budget batch is not length-sorted
    assert [lengths[shard(np.arange(8), r, 2)[0]].sum() for r in (0, 1)] == [400, 4]
    assert [lengths[shard_tokens(np.arange(8), lengths, r, 2)[0]].sum() for r in (0, 1)] == [202, 202]


# ------------------------------------------------------------------ errors

def test_out_of_memory_on_a_budget_batch_names_the_budget(monkeypatch):
    cfg, tp, tok = setup("llama3", packing="packed", train_token_budget=90)

    def raise_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(PackedClassifier, "forward", raise_oom)
    lengths = np.full(6, 30)
    with pytest.raises(BatchOutOfMemoryError) as err:
        train(lora_model(cfg, tok), rows(tok, lengths), np.zeros(6, dtype=np.int64), cfg, tp, tok.pad_token_id,
              CPU, name="llama3")
    msg = str(err.value)
    assert "optimizer step 1" in msg and "batch of 3 rows, 90 tokens" in msg
    assert "models.llama3.train_token_budget (now 90" in msg and "train_batch_size" not in msg
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)
