import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from prefbench.flops import attention_pairs, forward_flops, layer_windows, lora_train_flops, mfu
from prefbench.models import count_parameters, label_config_kwargs, resolve_attention
from tests.conftest import ROOT


def full_size(name):
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return config, count_parameters(model)["params_non_embedding"]


def test_attention_pairs_causal_and_sliding():
    assert attention_pairs(1, None) == 1
    assert attention_pairs(4, None) == 1 + 2 + 3 + 4
    assert attention_pairs(4, 8) == 10  # window longer than the sequence: no effect
    assert attention_pairs(6, 2) == 1 + 2 + 2 + 2 + 2 + 2
    # brute force
    n, w = 37, 5
    assert attention_pairs(n, w) == sum(min(i + 1, w) for i in range(n))


def test_gemma2_alternates_sliding_window_layers():
    config, _ = full_size("gemma2-9b")
    windows = layer_windows(config)
    assert len(windows) == 42 and windows[0] == 4096 and windows[1] is None
    assert windows.count(4096) == 21
    llama, _ = full_size("llama3-8b")
    assert layer_windows(llama) == [None] * 32


def test_forward_flops_by_hand():
    config, n = full_size("llama3-8b")
    L = 1024
    attention = 32 * 4 * 32 * 128 * (L * (L + 1) // 2)  # layers * 4 * heads * head_dim * pairs
    assert forward_flops(config, n, [L]) == pytest.approx(2 * n * L + attention)
    # Per token, Llama3-8B forward is ~2 x 7.0e9 + attention: 15-16 GFLOP at 1024 tokens.
    assert 14e9 < forward_flops(config, n, [L]) / L < 16.5e9


def test_gemma2_over_llama3_flop_ratio_is_about_1_2():
    g, gn = full_size("gemma2-9b")
    l, ln = full_size("llama3-8b")
    ratio = forward_flops(g, gn, [1024]) / forward_flops(l, ln, [1024])
    assert 1.15 < ratio < 1.30  # the ~1.19 the issue quotes, attention included


def test_sliding_window_cuts_flops_only_past_the_window():
    g, gn = full_size("gemma2-9b")
    full = g.__class__(**{**g.to_dict(), "sliding_window": 10**6})
    assert forward_flops(g, gn, [4000]) == forward_flops(full, gn, [4000])
    assert forward_flops(g, gn, [8000]) < forward_flops(full, gn, [8000])


def test_training_flops_and_mfu_arithmetic():
    config, n = full_size("llama3-8b")
    fwd = forward_flops(config, n, [512, 1024])
    train = lora_train_flops(config, n, [512, 1024])
    matmul = 2 * n * 1536
    assert train == pytest.approx(2 * matmul + 3 * (fwd - matmul))
    assert mfu(400e12, 1.0, 800e12) == 0.5
    assert mfu(fwd, 0.01, 1e15) == pytest.approx(fwd / 1e13)


@pytest.mark.parametrize("name,model_type,expected", [
    ("auto", "gemma2", "eager"),  # softcap applied, no per-shape compile, has a backward
    ("auto", "llama", "sdpa"),
    ("flex_attention", "gemma2", "flex_attention"),  # an explicit choice wins
    ("eager", "llama", "eager"),
])
def test_default_attention_path(name, model_type, expected):
    assert resolve_attention(name, model_type) == expected


def test_default_gpu_path_matches_committed_benchmark():
    """The default (auto) attention must be the fastest softcap-correct one without per-shape
    compilation (flex attention and torch.compile build kernels per batch shape, which a short
    evaluate pays inside its timed loop, and flex has no Gemma2 backward) at max_length 1024 with
    dynamic padding, in the committed side-by-side H200 run (within 2%: the run-to-run noise)."""
    import json
    run = json.loads((ROOT / "benchmarks" / "results" / "bench-side-by-side-3.json").read_text())
    for name, family in (("gemma2-9b", "gemma2"), ("llama3-8b", "llama")):
        cells = [c for c in run["cells"] if c["model"] == name and c["max_length"] == 1024
                 and c["batching"] == "dynamic" and c["dtype"] == "bfloat16" and c["softcap_applied"]
                 and not c.get("compiled") and c["attn"] != "flex_attention"]
        assert len(cells) >= (1 if family == "gemma2" else 2)  # Gemma2: sdpa is refused (softcap)
        best = min(c["seconds_per_sample"] for c in cells)
        chosen = next(c for c in cells if c["attn"] == resolve_attention("auto", family))
        assert chosen["seconds_per_sample"] <= best * 1.02, (name, chosen["attn"])
