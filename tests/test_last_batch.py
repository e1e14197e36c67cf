"""Training's last numbers: a remainder batch of a few rows joins another batch of its epoch (1601
rows at 32 a batch: no step on one row alone), the optimizer-step count says so, and the progress
display ends on the loss the stage prints as `final loss`."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

import prefbench.train
from prefbench.config import load_params
from prefbench.models import load_model, load_tokenizer
from prefbench.train import add_lora
from prefbench.train_batches import EpochBatches, ShardCollate
from tests.test_resume import write_params


@pytest.mark.parametrize("rows,size,per_epoch", [(1601, 32, 50), (1616, 32, 51), (1615, 32, 50), (10, 32, 1)])
def test_small_last_batch_joins_another(rows, size, per_epoch):
    lengths = np.random.default_rng(0).integers(5, 64, rows)
    sampler = EpochBatches(lengths, size, seed=0)
    assert sampler.optimizer_steps(grad_accum=1, epochs=2) == 2 * per_epoch
    for _ in range(2):
        epoch = list(sampler)
        assert len(epoch) == per_epoch
        assert sorted(np.concatenate(epoch).tolist()) == list(range(rows))  # every row once
        if rows >= size:
            assert min(len(b) for b in epoch) >= size / 2 and max(len(b) for b in epoch) < size * 1.5


def test_progress_ends_on_the_final_loss(tmp_path, capsys):
    params = load_params(write_params(tmp_path / "params.yaml")[1])
    cfg, tp = params.selected, dataclasses.replace(params.train, epochs=1, checkpoint_every=0, log_every=4)
    cfg.train_batch_size = 4
    tok = load_tokenizer(cfg.pretrained)
    model = add_lora(load_model(cfg, tok.pad_token_id, torch.device("cpu"))[0], cfg)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(5, 40, 25)]  # 6 batches of 4 rows and 1 row
    sizes, real = [], ShardCollate.__call__

    def count(self, idx):
        sizes.append(len(idx))
        return real(self, idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardCollate, "__call__", count)
        result = prefbench.train.train(model, seqs, rng.integers(0, 3, len(seqs)), cfg, tp, tok.pad_token_id,
                                       torch.device("cpu"))
    assert result["steps"] == 6 and sorted(sizes) == [4, 4, 4, 4, 4, 5]
    shown = re.findall(r"loss=([\d.]+)", capsys.readouterr().err)
    assert shown and shown[-1] == f"{result['final_loss']:.4f}"  # the display's last loss is the final one
