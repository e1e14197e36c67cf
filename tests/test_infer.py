import numpy as np
import pytest
import torch

from prefbench.batching import collate, length_sorted_batches, shuffled_batches
from prefbench.config import load_params
from prefbench.infer import predict
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


def test_warmup_plan_runs_every_padded_shape_once_before_the_timer():
    """warmup_shapes: one untimed batch per distinct (rows, padded width), none twice; without it, only
    the first warmup_batches (a shape first seen inside the timed loop pays its compile/plan there)."""
    from prefbench.batching import padded_shape
    from prefbench.infer import warmup_plan
    lengths = np.random.default_rng(0).integers(5, 1025, 2003)
    batches = length_sorted_batches(lengths, 16)
    shapes = [padded_shape(lengths[b], None, 64) for b in batches]
    plan = warmup_plan(batches, lengths, 1, True, pad_multiple=64)
    planned = [padded_shape(lengths[b], None, 64) for b in plan]
    assert sorted(set(planned)) == sorted(set(shapes)) and len(planned) == len(set(planned))
    # bounded: at most 16 widths x 2 row counts (full batches and the last one), whatever the row count
    assert len(set(shapes)) <= 2 * 1024 // 64 < len(batches) and all(s[1] % 64 == 0 and s[1] <= 1024 for s in shapes)
    assert [padded_shape(lengths[b], None, 64) for b in warmup_plan(batches, lengths, 1, False, pad_multiple=64)] \
        == shapes[:1]
    assert {padded_shape(lengths[b], 1024, 64) for b in warmup_plan(batches, lengths, 0, True, 1024, 64)} \
        == {(16, 1024), (2003 % 16, 1024)}  # fixed padding: the full and the last, short batch


def test_warmup_shapes_leave_predictions_and_the_timed_rows_unchanged(tiny_llama_tok):
    params = load_params(ROOT / "params.yaml")
    model, _, _ = load_model(params.models["llama3"], tiny_llama_tok.pad_token_id, torch.device("cpu"))
    rng = np.random.default_rng(1)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(3, 40, 13)]
    plain = predict(model, seqs, 4, tiny_llama_tok.pad_token_id, torch.device("cpu"), warmup_batches=0)
    warmed = predict(model, seqs, 4, tiny_llama_tok.pad_token_id, torch.device("cpu"), warmup_batches=0,
                     pad_multiple=8, warmup_shapes=True)
    np.testing.assert_allclose(warmed["logits"], plain["logits"], atol=1e-5)
    assert warmed["warmup_seconds"] > 0 and warmed["tokens"] == plain["tokens"]
    assert warmed["batch_shapes"] <= plain["batch_shapes"]  # padding to 8 can only merge shapes


def test_batches_are_padded_to_64_on_a_gpu_and_to_their_longest_row_on_a_cpu():
    from prefbench.batching import GPU_PAD_MULTIPLE, pad_multiple_for
    seqs = [np.arange(70), np.arange(3)]
    gpu, cpu = pad_multiple_for(torch.device("cuda", 0)), pad_multiple_for(torch.device("cpu"))
    assert collate(seqs, 0, pad_multiple=gpu)["input_ids"].shape == (2, 2 * GPU_PAD_MULTIPLE) and GPU_PAD_MULTIPLE == 64
    assert collate(seqs, 0, pad_multiple=cpu)["input_ids"].shape == (2, 70)


def inference(n: int, **changes):
    """A run_inference result for n rows, as an LLM on two devices would give it."""
    from prefbench.infer import Inference
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), n)
    info = {"dtype": "float32", "attn_implementation": "sdpa", "kernels": "none", "weights": "pretrained",
            "params_total": 1000, "params_embedding": 100, "params_non_embedding": 900, "params_trainable": 10,
            "lora_merged": True, "compiled": False, "packed": False, "quantization": "none", "max_length": 256, "device": "cpu",
            "devices": 2}
    fields = dict(ids=[str(i) for i in range(n)], labels=rng.integers(0, 3, n), probs=probs, seconds=2.0, tokens=3000,
                  padded_tokens=4000, warmup_seconds=0.5, load_seconds=1.5, batch_shapes=3, peak_memory_gb=0.25,
                  info=info, timing={"threads": 1, "timing_passes": 3, "timing_noise": 0.02})  # as run_inference sets it
    return Inference(**{**fields, **changes})


def test_eval_metrics_have_the_committed_keys_and_follow_from_the_run():
    """metrics/eval.json's keys, in the committed file's order, for a made-up run; its speeds from
    the run's seconds, rows and devices."""
    import json

    from prefbench.infer import evaluation_metrics
    from prefbench.metrics import log_loss
    params = load_params(ROOT / "params.yaml")
    inf = inference(40)
    m = evaluation_metrics(params, inf, train_labels=np.array([0, 0, 1, 2]))
    assert list(m) == list(json.loads((ROOT / "metrics" / "eval.json").read_text()))
    assert m["seconds_per_sample"] == 2.0 / 40 and m["device_seconds_per_sample"] == 2 * 2.0 / 40
    assert m["samples_per_second"] == 20 and m["tokens_per_second"] == 1500 and m["padding_share"] == 0.25
    assert m["log_loss"] == log_loss(inf.labels, inf.probs) and m["log_loss"] < m["log_loss_prior"] + 1
    assert (m["n_samples"], m["devices"], m["max_length"], m["batch_size"]) == (40, 2, 256,
                                                                                params.selected.eval_batch_size)


def test_predict_metrics_count_loading_and_warmup_against_the_kaggle_limit():
    import dataclasses
    import json

    from prefbench.infer import prediction_metrics
    params = load_params(ROOT / "params.yaml")
    pp = params.predict
    # the timed loop alone projects to half the limit; loading and warm-up push it over or not
    seconds = pp.kaggle_hours * 3600 / 2 / pp.kaggle_rows * 100
    fits = prediction_metrics(params, inference(100, seconds=seconds), {"null_turn_as_empty": 1})
    assert list(fits) == list(json.loads((ROOT / "metrics" / "predict.json").read_text()))
    assert fits["projected_hours"] == pytest.approx(pp.kaggle_hours / 2) and fits["fits_kaggle_limit"] is True
    assert fits["repaired"] == {"null_turn_as_empty": 1}
    late = inference(100, seconds=seconds, load_seconds=pp.kaggle_hours * 3600 / 2 + 1)
    assert prediction_metrics(params, late, {})["fits_kaggle_limit"] is False
    tfidf = prediction_metrics(params, dataclasses.replace(late, featurise_seconds=3.0), {})
    assert tfidf["featurise_seconds"] == 3.0 and set(tfidf) - set(fits) == {"featurise_seconds"}


def test_rows_a_window_shorter_than_their_batch_stay_finite_with_sliding_window_eager(tiny_gemma_tok):
    """Gemma2 with eager attention and a sliding window (the tiny model's is 64 tokens): a row more
    than a window shorter than its batch's longest once got nan logits (its trailing pads had no key
    left to attend to). Batched, every row's logits are the row's own, computed alone."""
    from transformers import AutoConfig

    from prefbench.batching import masks_padding
    from prefbench.models import classifier_class

    path = str(ROOT / "models" / "tiny-gemma2")
    config = AutoConfig.from_pretrained(path, num_labels=3, pad_token_id=tiny_gemma_tok.pad_token_id)
    model = classifier_class(type(config)).from_pretrained(path, config=config, dtype=torch.float64,
                                                          attn_implementation="eager").eval()
    assert config.sliding_window == 64 and not masks_padding(model)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(10, 500, n) for n in (10, 40, 130)]  # 130 - 10 > 64
    with torch.no_grad():
        batched = model(**collate(seqs, tiny_gemma_tok.pad_token_id, mask_padding=masks_padding(model))).logits
        alone = torch.cat([model(input_ids=torch.as_tensor(s)[None]).logits for s in seqs])
        masked = model(**collate(seqs, tiny_gemma_tok.pad_token_id)).logits  # the old mask: the failure
    assert torch.isfinite(batched).all()
    # Gemma2's eager attention takes its softmax in float32 even in a float64 model (transformers'
    # upcast), so rows summed at another width round apart by float32's 1e-7 on AVX-512 (AVX2 happened
    # to agree bit for bit); a pad leaking into a row's attention moves its logits by far more.
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-6)
    assert not torch.isfinite(masked[0]).all()  # the test sees the failure it guards against
