import numpy as np
import torch

from prefbench.config import load_params
from prefbench.infer import collate, length_sorted_batches, predict, shuffled_batches
from prefbench.models import load_model
from tests.conftest import ROOT


def test_batches_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 300, 103)
    batches = length_sorted_batches(lengths, 8)
    flat = np.concatenate(batches)
    assert sorted(flat) == list(range(103))
    assert all(lengths[b].max() <= lengths[a].min() for a, b in zip(batches, batches[1:]))
    shuffled = shuffled_batches(lengths, 8, np.random.default_rng(1))
    assert sorted(np.concatenate(shuffled)) == list(range(103))


def test_collate_pads_right_with_mask():
    batch = collate([np.array([5, 6, 7]), np.array([9])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_dynamic_padding_and_batching_do_not_change_predictions(tiny_llama_tok, tiny_gemma_tok):
    """Each row alone (no padding) vs length-sorted batches (padding): the same logits, in input order.
    Catches pooling on a pad token (Llama3 pads with EOS) and order mix-ups."""
    params = load_params(ROOT / "params.yaml")
    rng = np.random.default_rng(0)
    for name, tok in (("llama3", tiny_llama_tok), ("gemma2", tiny_gemma_tok)):
        model, _, _ = load_model(params.models[name], tok.pad_token_id, torch.device("cpu"))
        vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
        seqs = [np.array([tok.bos_token_id] + list(rng.choice(vocab, n))) for n in rng.integers(3, 60, 11)]
        alone = predict(model, seqs, 1, tok.pad_token_id, torch.device("cpu"), warmup_batches=0)["logits"]
        batched = predict(model, seqs, 4, tok.pad_token_id, torch.device("cpu"), warmup_batches=1)["logits"]
        np.testing.assert_allclose(batched, alone, atol=1e-4, err_msg=name)
        assert len(set(np.round(alone[:, 0], 5))) > 5  # rows really differ
