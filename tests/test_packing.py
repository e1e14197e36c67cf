"""Packed (padding-free) inference equals the stock classifier row for row.

CPU, tiny models, float64 weights: the block-diagonal causal mask transformers builds from
restarting position_ids (eager, sdpa) must give each row what it gets alone, Gemma2's sliding
window and attention softcap included. The reference is each row alone through the stock
`*ForSequenceClassification` (batch 1: no padding). Not padded batches: with eager attention,
Gemma2's padded batches give nan for a row shorter than the batch's width minus the sliding
window (its pad queries see no key in the window; seen on the tiny model, window 64).

Tolerance: a "float64" model still computes RMSNorm and RoPE's cos / sin in float32
(transformers casts), and float32 vectorised kernels round a short tail differently, so logits of
scale 0.4 differ by up to 3e-9 (measured); the bound is 1e-7. A token of another row leaking in
moves them by > 1e-3 (test_a_leak_between_rows_is_caught).
"""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from prefbench.config import ParamsError, load_params
from prefbench.models import label_config_kwargs, load_model
from prefbench.packing import (collate_packed, forward_packed, pack_rows, predict_packed, resolve_packing,
                               split_classifier, unreachable_window_off, warmup_packs)
from tests.conftest import ROOT

CPU = torch.device("cpu")
TOL = 1e-7  # measured <= 3e-9 (float32 RMSNorm and RoPE inside the float64 model)


def padded_logits(model, seqs, pad_token_id, batch=1):
    """The stock classifier on right-padded batches with a mask (batch 1: each row alone, unpadded)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(seqs), batch):
            chunk = seqs[i:i + batch]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, s in enumerate(chunk):
                ids[k, :len(s)] = torch.as_tensor(s)
                mask[k, :len(s)] = 1
            out.append(model(input_ids=ids, attention_mask=mask).logits.double().numpy())
    return np.concatenate(out)


def rows(tok, lengths, seed=0):
    """BOS + random non-special tokens (never the pad token, as tokenize.encode_rows guarantees)."""
    rng = np.random.default_rng(seed)
    vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    return [np.array([tok.bos_token_id] + list(rng.choice(vocab, n - 1))) for n in lengths]


def tiny(name, pad_token_id, attn="eager", **overrides):
    """A tiny model in float64 with config overrides (softcap, window), trained weights, seeded head."""
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs(), **overrides)
    config.pad_token_id = pad_token_id
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(ROOT / "models" / name, config=config,
                                                              dtype=torch.float64, attn_implementation=attn).eval()


LENGTHS = [150, 3, 97, 64, 65, 12, 130, 1, 40, 88, 7, 129]  # around Gemma2's tiny window (64), shuffled


@pytest.mark.parametrize("name,attn", [("llama3", "sdpa"), ("llama3", "eager"), ("gemma2", "eager")])
def test_packed_logits_equal_padded_per_row_in_input_order(name, attn, tiny_llama_tok, tiny_gemma_tok):
    """The pipeline's loader (float64 on CPU), rows of mixed lengths, several budgets: one pack for
    all, several, and one smaller than most rows (those go alone). Input order comes back."""
    tok = {"llama3": tiny_llama_tok, "gemma2": tiny_gemma_tok}[name]
    cfg = dataclasses.replace(load_params(ROOT / "params.yaml").models[name], attn_implementation=attn)
    model, dtype, _ = load_model(cfg, tok.pad_token_id, CPU)
    assert dtype == torch.float64 and model.config._attn_implementation == attn
    seqs = rows(tok, LENGTHS)
    ref = padded_logits(model, seqs, tok.pad_token_id)
    assert np.ptp(ref[:, 0]) > 1e-3  # the rows really differ
    for budget in (10_000, 256, 60):
        out = predict_packed(model, seqs, budget, tok.pad_token_id, CPU)
        np.testing.assert_allclose(out["logits"], ref, rtol=0, atol=TOL, err_msg=f"{name} {attn} budget {budget}")
        assert out["tokens"] == sum(LENGTHS) and out["padded_tokens"] == out["tokens"]
        assert out["rows_over_budget"] == sum(n > budget for n in LENGTHS)
        assert out["packs"] == len(pack_rows(LENGTHS, budget))
    assert predict_packed(model, seqs, 10_000, tok.pad_token_id, CPU)["packs"] == 1
    # two copies in two threads (evaluate.devices: 2), the packs dealt to them: the same logits
    two = predict_packed([model, model], seqs, 60, tok.pad_token_id, [CPU, CPU])
    assert two["devices"] == 2 and np.array_equal(two["logits"], out["logits"])


def test_gemma2_sliding_window_and_softcap_are_applied_per_packed_row(tiny_gemma_tok):
    """Softcap 0.05 (the tiny model's attention scores are small: 50 and even 1.0 barely act, 0.05
    moves the logits by 3e-3) and the tiny window 64 with rows up to 150
    tokens in one pack of 1,000+: each row sees its own window only. Both settings are shown to
    change the logits, so the equality is not between paths that both ignore them."""
    pad = tiny_gemma_tok.pad_token_id
    seqs = rows(tiny_gemma_tok, LENGTHS, seed=1)
    capped = tiny("tiny-gemma2", pad, attn_logit_softcapping=0.05)
    ref = padded_logits(capped, seqs, pad)
    packed = predict_packed(capped, seqs, 10_000, pad, CPU)
    assert packed["packs"] == 1
    np.testing.assert_allclose(packed["logits"], ref, rtol=0, atol=TOL)

    uncapped = padded_logits(tiny("tiny-gemma2", pad, attn_logit_softcapping=None), seqs, pad)
    assert np.abs(uncapped - ref).max() > 1e-3  # the softcap acts
    wide = padded_logits(tiny("tiny-gemma2", pad, attn_logit_softcapping=0.05, sliding_window=4096), seqs, pad)
    long_rows = np.array(LENGTHS) > 64
    assert np.abs(wide - ref)[long_rows].max() > 1e-6  # the window acts on rows longer than it...
    np.testing.assert_allclose(wide[~long_rows], ref[~long_rows], rtol=0, atol=TOL)  # ...and only there


def test_gemma2_classifier_applies_no_final_logit_softcap(tiny_gemma_tok):
    """final_logit_softcapping is the causal-LM head's: the stock classifier's logits do not depend
    on it, and packing (score head on the pooled hidden state) matches that."""
    pad = tiny_gemma_tok.pad_token_id
    seqs = rows(tiny_gemma_tok, [30, 50], seed=2)
    a = padded_logits(tiny("tiny-gemma2", pad, final_logit_softcapping=30.0), seqs, pad)
    b = padded_logits(tiny("tiny-gemma2", pad, final_logit_softcapping=0.01), seqs, pad)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(predict_packed(tiny("tiny-gemma2", pad, final_logit_softcapping=0.01), seqs, 100,
                                              pad, CPU)["logits"], a, rtol=0, atol=TOL)


def test_a_leak_between_rows_is_caught(tiny_llama_tok):
    """The tolerance has teeth: packing without restarting positions (one long sequence, rows
    attending to the rows before them) gives other logits."""
    pad = tiny_llama_tok.pad_token_id
    model = tiny("tiny-llama3", pad)
    seqs = rows(tiny_llama_tok, [20, 30, 25], seed=3)
    ref = padded_logits(model, seqs, pad)
    pack = collate_packed(seqs, pad)
    pack["position_ids"] = torch.arange(pack["input_ids"].shape[1])[None]  # no restarts: one causal sequence
    body, head = split_classifier(model)
    with torch.inference_mode():
        leaked = forward_packed(body, head, pack, CPU, varlen=False).numpy()
    np.testing.assert_allclose(leaked[0], ref[0], rtol=0, atol=TOL)  # the first row has nothing before it
    assert np.abs(leaked[1:] - ref[1:]).max() > 1e-3


def test_pooling_follows_the_stock_classifier_on_trailing_pad_tokens(tiny_gemma_tok):
    """A row ending in pad tokens: the stock classifier pools its rightmost non-pad token; so does packing."""
    pad = tiny_gemma_tok.pad_token_id
    model = tiny("tiny-gemma2", pad)
    seqs = rows(tiny_gemma_tok, [20, 9, 33], seed=4)
    seqs[1] = np.concatenate([seqs[1], [pad, pad, pad]])
    np.testing.assert_allclose(predict_packed(model, seqs, 1000, pad, CPU)["logits"],
                               padded_logits(model, seqs, pad), rtol=0, atol=TOL)


def test_unmerged_lora_adapter_is_packed_through_peft(tiny_llama_tok):
    """A peft-wrapped model (4-bit evaluate keeps the adapter unmerged): LoRA layers in the base
    model and the adapter's score head copy both act in the packed path."""
    from prefbench.lora import add_lora

    pad = tiny_llama_tok.pad_token_id
    cfg = load_params(ROOT / "params.yaml").models["llama3"]
    model, _, _ = load_model(cfg, pad, CPU)
    lora = add_lora(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.normal_(0, 0.05)  # B = 0 at init would make the adapter a no-op
    lora.eval()
    seqs = rows(tiny_llama_tok, [40, 17, 66, 5], seed=5)
    ref = padded_logits(lora, seqs, pad)
    with lora.disable_adapter():
        assert np.abs(padded_logits(lora, seqs, pad) - ref).max() > 1e-3  # the adapter changes the logits
    np.testing.assert_allclose(predict_packed(lora, seqs, 64, pad, CPU)["logits"], ref, rtol=0, atol=TOL)


def test_pack_rows_covers_every_row_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 1025, 997)
    for budget in (4096, 1000, 300):
        packs = pack_rows(lengths, budget)
        assert sorted(np.concatenate(packs).tolist()) == list(range(len(lengths)))
        for p in packs:
            assert lengths[p].sum() <= budget or len(p) == 1  # over budget only as a single long row
            assert all(lengths[p[:-1]] >= lengths[p[1:]])  # longest first within a pack...
        for a, b in zip(packs, packs[1:]):
            assert lengths[a].min() >= lengths[b].max()  # ...and across packs
            assert lengths[a].sum() + lengths[b[0]] > budget  # next-fit: a pack closes only when the next row won't fit
        assert sum(len(p) == 1 and lengths[p[0]] > budget for p in packs) == int((lengths > budget).sum())
    assert pack_rows([], 10) == []


@pytest.mark.parametrize("budget", [0, -5, 2.5, True, None])
def test_pack_rows_rejects_a_bad_budget(budget):
    with pytest.raises(ValueError, match="token_budget"):
        pack_rows([3, 4], budget)


def test_pack_rows_rejects_an_empty_row():
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        pack_rows([3, 0, 4], 10)


def test_collate_packed_offsets_and_positions():
    pack = collate_packed([np.array([5, 6, 7]), np.array([9]), np.array([4, 0, 0])], pad_token_id=0)
    assert pack["input_ids"].tolist() == [[5, 6, 7, 9, 4, 0, 0]]
    assert pack["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2]]
    assert pack["cu_seq_lens"].tolist() == [0, 3, 4, 7] and pack["cu_seq_lens"].dtype == torch.int32
    assert pack["pooled"].tolist() == [2, 3, 4]  # the third row pools its last non-pad token
    assert pack["max_length"] == 3 and isinstance(pack["max_length"], int)


def test_warmup_covers_largest_smallest_and_both_divisibility_classes():
    totals = [4096, 4090, 4000, 1234, 77]
    picks = warmup_packs(totals)
    assert {0, 4} <= set(picks) and len(picks) == len(set(picks))
    assert {totals[k] % 16 == 0 for k in picks} == {True, False}
    assert warmup_packs([]) == []


def test_resolve_packing():
    assert resolve_packing("auto", "flash_attention_4") and resolve_packing("auto", "flash_attention_2")
    assert not resolve_packing("auto", "sdpa") and not resolve_packing("auto", "eager")
    assert resolve_packing("packed", "eager") and not resolve_packing("padded", "flash_attention_4")
    with pytest.raises(ParamsError, match="models.gemma2.packing"):
        resolve_packing("yes", "eager", key="models.gemma2.packing")


def test_a_compiled_model_is_refused_with_the_setting_to_change(tiny_llama_tok):
    model = tiny("tiny-llama3", tiny_llama_tok.pad_token_id)
    with pytest.raises(ValueError, match="compile: false"):
        predict_packed(torch.compile(model), rows(tiny_llama_tok, [5]), 10, tiny_llama_tok.pad_token_id, CPU)


def test_an_unreachable_sliding_window_is_off_during_the_forward_and_restored(tiny_gemma_tok, tiny_llama_tok):
    """flash-attention gets Gemma2's window when the packed row is longer than it; while every packed
    sequence fits the window (64 on the tiny model) the layers run without it (exact), then get it back."""
    body, _ = split_classifier(tiny("tiny-gemma2", tiny_gemma_tok.pad_token_id))

    def current():
        return [m.sliding_window for m in body.layers.modules() if type(m).__name__ == "Gemma2Attention"]

    windows = current()
    assert windows == [64, None, 64, None]  # layer_types: sliding, full, sliding, full
    with unreachable_window_off(body, 64):
        assert current() == [None] * 4
    assert current() == windows
    with unreachable_window_off(body, 65):  # a sequence longer than the window: it binds, it stays
        assert current() == windows
    with pytest.raises(RuntimeError), unreachable_window_off(body, 10):
        raise RuntimeError("a failing forward")
    assert current() == windows
    llama, _ = split_classifier(tiny("tiny-llama3", tiny_llama_tok.pad_token_id))
    with unreachable_window_off(llama, 1):  # no sliding layers: nothing to change
        assert all(getattr(m, "sliding_window", None) is None for m in llama.modules())


def test_packs_are_dealt_to_devices_by_tokens():
    """Largest pack first to the least-loaded device: loads within one pack of each other, every
    pack once, each device's packs in order."""
    from prefbench.packing import deal_packs
    totals = [100, 90, 90, 80, 30, 20, 10]
    shares = deal_packs(totals, 2)
    assert sorted(k for share in shares for k in share) == list(range(len(totals)))
    assert all(share == sorted(share) for share in shares)
    loads = [sum(totals[k] for k in share) for share in shares]
    assert abs(loads[0] - loads[1]) <= max(totals)
    assert shares == [[0, 3, 4], [1, 2, 5, 6]] and loads == [210, 210]
    assert deal_packs(totals, 1) == [list(range(len(totals)))]
    assert deal_packs([5], 3) == [[0], [], []]  # a device without packs runs nothing
