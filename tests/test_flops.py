import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForSequenceClassification

from prefbench.batching import collate, masks_padding
from prefbench.config import load_params
from prefbench.flops import attention_pairs, forward_flops, layer_windows, lora_train_flops
from prefbench.models import count_parameters, label_config_kwargs, load_model, load_tokenizer, resolve_attention
from prefbench.lora import add_lora
from tests.conftest import ROOT

MM, ADDMM, BMM = torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm
# Qwen2 and Mistral with a sliding window on every layer (Mistral v0.1's kind; v0.3 has none) or on
# the upper layers (Qwen2 with use_sliding_window), cut to 16 tokens: variants of the tiny models,
# so the window is checked where the shipped configs have none.
WINDOWED = {"tiny-mistral": {"sliding_window": 16},
            "tiny-qwen2": {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2,
                           "layer_types": None}}

def full_size(name):
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return config, count_parameters(model)["params_non_embedding"]

def counted(fn) -> dict:
    """FLOPs torch's own counter (torch.utils.flop_counter) sees while fn runs, by aten op."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return dict(counter.get_flop_counts()["Global"])

def not_matmul_weights(model) -> int:
    """Non-embedding parameters that multiply no activation matrix: the RMSNorm scales and Qwen2's
    q/k/v biases (elementwise). flops.py counts 2 FLOPs per non-embedding weight per token, these
    included (under 1e-4 of the full-size models, 0.3-0.7% of the tiny ones); FlopCounterMode
    rightly counts no FLOPs for them (a bias makes a linear layer's mm an addmm, of the same FLOPs)."""
    norms = sum(p.numel() for m in model.modules() if not isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
                for p in m.parameters(recurse=False))
    return norms + sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)

def matmuls(ops: dict) -> int:
    """The counter's FLOPs of linear layers: mm, and addmm where the layer has a bias (Qwen2's q/k/v)."""
    return ops.get(MM, 0) + ops.get(ADDMM, 0)

def tiny_config(name: str, windowed: bool = False):
    """models/<name>'s config as a 3-class classifier, or its WINDOWED variant."""
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    if windowed:
        config = config.__class__(**{**config.to_dict(), **WINDOWED[name]})
    config.pad_token_id = 0
    return config

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
    # Qwen2-7B and Mistral-7B-v0.3: full attention everywhere (Qwen2's use_sliding_window is off)
    assert layer_windows(full_size("qwen2-7b")[0]) == [None] * 28
    assert layer_windows(full_size("mistral-7b")[0]) == [None] * 32

def test_windowed_variants_slide_where_their_attention_does():
    """Mistral applies `sliding_window` on every layer (no layer_types); Qwen2 on the layers from
    max_window_layers on, when use_sliding_window is set."""
    assert layer_windows(tiny_config("tiny-mistral", windowed=True)) == [16] * 4
    assert layer_windows(tiny_config("tiny-qwen2", windowed=True)) == [None, None, 16, 16]
    assert layer_windows(tiny_config("tiny-qwen2")) == [None] * 4

@pytest.mark.parametrize("name,windowed", [("tiny-llama3", False), ("tiny-gemma2", False), ("tiny-qwen2", False),
                                           ("tiny-mistral", False), ("tiny-qwen2", True), ("tiny-mistral", True)])
def test_forward_flops_match_torch_flop_counter(name, windowed):
    """flops.py's forward count against torch's FlopCounterMode on a real forward, exactly.

    Two differences are accounted for, not tolerated: (1) eager attention computes QK^T and PV over
    the full n x n square and masks afterwards, so the counter sees 4 * heads * head_dim * n^2 per
    layer, while flops.py counts only the query-key pairs the mask keeps (causal; `window` keys on
    Gemma2's sliding layers, and the windowed Qwen2 and Mistral variants): the pairs are counted
    from the mask the model itself builds for each layer and the counter's dense cost is scaled to
    them. (2) flops.py counts the RMSNorm scales and Qwen2's q/k/v biases as weights (2 FLOPs each
    per token); they are elementwise, so the counter has no FLOPs for them.
    Eager, not sdpa: on a CPU, sdpa runs aten._scaled_dot_product_flash_attention_for_cpu, which
    the counter has no formula for (it would count no attention at all); that sdpa and eager slide
    the same window is test_sliding_window_is_the_same_under_eager_and_sdpa's. One unpadded
    sequence a forward (the counter sees the padded square). Lengths 65 and 150 pass tiny Gemma2's
    64-token window, 37 and up the variants' 16."""
    config = tiny_config(name, windowed)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager",
                                                           dtype=torch.float64).eval()
    masks = []  # the attention mask each layer's attention receives, in layer order
    for module in model.modules():
        if module.__class__.__name__.endswith("Attention"):
            module.register_forward_pre_hook(lambda m, args, kw: masks.append(kw["attention_mask"]), with_kwargs=True)
    non_emb = count_parameters(model)["params_non_embedding"]
    norms = not_matmul_weights(model)
    windows = layer_windows(config)
    # both kinds of layer where the config has them (Gemma2, windowed Qwen2), every layer sliding
    # (windowed Mistral) or none (Llama3 and the shipped Qwen2 and Mistral)
    slides = {"tiny-gemma2": {None, 64}}.get(name, {None, 16} if name == "tiny-qwen2" else {16})
    assert set(windows) == (slides if windowed or name == "tiny-gemma2" else {None}), windows
    total = 0.0
    lengths = (1, 37, 64, 65, 150)
    for n in lengths:
        masks.clear()
        ids = torch.randint(5, config.vocab_size, (1, n))
        with torch.no_grad():
            ops = counted(lambda: model(input_ids=ids))
        # linear layers (mm; addmm with a bias) and eager attention (bmm), nothing else
        assert set(ops) == ({MM, ADDMM, BMM} if name == "tiny-qwen2" else {MM, BMM}), ops
        assert len(masks) == config.num_hidden_layers
        # an additive float mask: 0 where a query attends a key, the dtype's minimum where it does not
        kept = [int((m == 0).sum()) if m.dtype != torch.bool else int(m.sum()) for m in masks]
        assert kept == [attention_pairs(n, w) for w in windows], (n, kept)
        dense = ops[BMM] / (config.num_hidden_layers * n * n)  # counter's attention FLOPs per query-key pair
        expected = matmuls(ops) + 2 * norms * n + dense * sum(kept)
        assert forward_flops(config, non_emb, [n]) == pytest.approx(expected, rel=1e-12), n
        total += expected
    assert forward_flops(config, non_emb, lengths) == pytest.approx(total, rel=1e-12)

@pytest.mark.parametrize("folder,key", [("llama3-8b", "llama3"), ("gemma2-9b", "gemma2"), ("qwen2-7b", "qwen2"),
                                        ("mistral-7b", "mistral")])
def test_lora_training_flops_match_torch_flop_counter(folder, key):
    """lora_train_flops against torch's FlopCounterMode on one forward + backward of the full-size
    architecture with the pipeline's LoRA (params.yaml), on the meta device (shapes only, no memory),
    cut to 2 layers (every layer has the same shapes; 2 keep it to seconds; Gemma2's are one sliding,
    one full). Accounted for exactly:
    the dense attention square (as in the forward test; the pairs are flops.py's, checked there),
    the norm scales, the score head's weight gradient (trained in full: 2 * 3 * hidden per token)
    and layer 0's q/k/v input gradient, which autograd skips (nothing below it trains). What is
    left is LoRA's own FLOPs, which flops.py leaves out as under 1%: that is the tolerance, one-sided."""
    config = AutoConfig.from_pretrained(ROOT / "models" / folder, **label_config_kwargs())
    config.pad_token_id = 0
    layers = config.num_hidden_layers = 2
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager",
                                                              dtype=torch.bfloat16)
    non_emb = count_parameters(base)["params_non_embedding"]
    norms = not_matmul_weights(base)
    layer0 = base.model.layers[0].self_attn
    qkv0 = sum(getattr(layer0, p).weight.numel() for p in ("q_proj", "k_proj", "v_proj"))
    score = base.score.weight.numel()
    model = add_lora(base, load_params(ROOT / "params.yaml").models[key])
    n = 4608  # past Gemma2's 4096 window; long enough that attention is ~10% of the total
    ids = torch.zeros((1, n), dtype=torch.long, device="meta")
    with torch.no_grad():
        fwd = counted(lambda: model(input_ids=ids))
    train = counted(lambda: model(input_ids=ids, labels=torch.tensor([1], device="meta")).loss.backward())
    assert set(train) <= {MM, ADDMM, BMM}, train
    assert train[BMM] == 3 * fwd[BMM]  # attention backward: grads of Q, K, scores and V, 2x the forward
    pairs = sum(attention_pairs(n, w) for w in layer_windows(config))
    base_matmuls = matmuls(train) - 2 * score * n + 2 * qkv0 * n + 4 * norms * n  # + LoRA's own, left in
    expected = base_matmuls + train[BMM] * pairs / (layers * n * n)
    formula = lora_train_flops(config, non_emb, [n])

    assert formula < expected < 1.01 * formula, (expected / formula - 1)

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

@pytest.mark.parametrize("key", ["llama3", "gemma2", "qwen2", "mistral"])
def test_auto_attention_on_cpu_loads_and_computes_the_eager_reference(key):
    """What `auto` picks on this CPU must be an implementation transformers accepts for the family
    (it refuses sdpa for Gemma2: no softcap) and give the logits of eager attention, the reference
    that applies Gemma2's softcap, on a padded batch (the score head is seeded: the same in both)."""
    cfg = load_params(ROOT / "params.yaml").models[key]
    tok = load_tokenizer(cfg.pretrained)
    assert cfg.attn_implementation == "auto"
    cpu = torch.device("cpu")
    auto = load_model(cfg, tok.pad_token_id, cpu)[0].eval()
    cfg.attn_implementation = "eager"
    eager = load_model(cfg, tok.pad_token_id, cpu)[0].eval()
    assert auto.config._attn_implementation == resolve_attention("auto", auto.config.model_type)
    batch = tok(["a short one", "a rather longer text, with more tokens in it than the first"],
                padding=True, return_tensors="pt")
    with torch.no_grad():  # fp64; Llama3's CPU sdpa kernel differs from eager by ~1e-7 relative (measured)
        torch.testing.assert_close(auto(**batch).logits, eager(**batch).logits, rtol=1e-6, atol=1e-7)
    if key == "gemma2":
        with pytest.raises(ValueError, match="scaled_dot_product_attention"):
            AutoModelForSequenceClassification.from_config(auto.config, attn_implementation="sdpa")

@pytest.mark.parametrize("name", ["tiny-mistral", "tiny-qwen2"])
def test_sliding_window_is_the_same_under_eager_and_sdpa(name):
    """The windowed variants (WINDOWED: 16 tokens) on a batch as the pipeline pads it (right
    padding; pads left unmasked under eager with a window: prefbench.batching.masks_padding), rows
    of 40 and 12 tokens: sdpa gives eager's logits, and the long row's differ from the same
    weights without the window, so the window is applied, the same one, under either attention
    `auto` may pick on a GPU without flash-attn-4 or on this CPU. (Gemma2's window is eager's
    only: sdpa is refused.)"""
    seqs = [np.arange(40) % 900 + 5, np.arange(12) + 7]
    logits = {}
    for windowed in (True, False):
        for attn in ("eager", "sdpa"):
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(tiny_config(name, windowed), attn_implementation=attn,
                                                                   dtype=torch.float64).eval()
            with torch.no_grad():
                logits[windowed, attn] = model(**collate(seqs, 0, mask_padding=masks_padding(model))).logits
    for windowed in (True, False):
        assert torch.isfinite(logits[windowed, "eager"]).all()
        # CPU sdpa rounds ~1e-7 relative away from eager, fp64 (as Llama3 above); the window moves logits far more
        torch.testing.assert_close(logits[windowed, "sdpa"], logits[windowed, "eager"], rtol=1e-6, atol=1e-7)
    assert (logits[True, "eager"][0] - logits[False, "eager"][0]).abs().max() > 1e-4  # the long row: windowed
    torch.testing.assert_close(logits[True, "eager"][1], logits[False, "eager"][1])  # 12 tokens: within it

# (GPU run, settings held equal): attention side by sides of 2026-11 (made by the benchmark scripts
# of commit 29c075c, kept as test data: the evidence behind `auto`). The H100 run had flash-attn-4
# installed (its `versions`), so auto's Hopper branch; the H200 run had not, so the eager/sdpa branch.
RUNS = [("default-path-h100.json", {"kernels": "none", "adapter": "merged"}),
        ("bench-side-by-side-3.json", {"max_length": 1024, "batching": "dynamic", "dtype": "bfloat16"})]

@pytest.mark.parametrize("run_file,fixed", RUNS)
def test_auto_attention_is_the_fastest_correct_one_in_committed_gpu_runs(run_file, fixed):
    """On the GPU each committed run measured, `auto` (resolved for that card and whether
    flash-attn-4 was installed) must be within 2% (run-to-run noise) of the fastest attention that
    applies the softcap and compiles nothing per batch shape (flex attention and torch.compile do,
    inside a short evaluate's timed loop), other settings equal. Every comparison has a rival: Gemma2
    on the H100 run (eager vs flash_attention_4), Llama3 on both; Gemma2 without flash-attn-4 has
    only eager left (sdpa refused, flex compiles), which auto must then pick."""
    run = json.loads((ROOT / "tests" / "data" / "gpu-runs" / run_file).read_text())
    capability = tuple(run.get("capability") or (9, 0))  # the H200 run predates the field: sm_90
    fa4 = "flash-attn-4" in run["versions"]
    compared = 0
    for name, family in (("gemma2-9b", "gemma2"), ("llama3-8b", "llama")):
        auto = resolve_attention("auto", family, "cuda", capability, fa4)
        cells = [c for c in run["cells"] if c["model"] == name and c["softcap_applied"] and not c.get("compiled")
                 and c["attn"] != "flex_attention" and all(c.get(k) == v for k, v in fixed.items())]
        chosen = [c for c in cells if c["attn"] == auto]
        assert len(chosen) == 1, (name, auto, [c["attn"] for c in cells])
        best = min(cells, key=lambda c: c["seconds_per_sample"])
        assert chosen[0]["seconds_per_sample"] <= best["seconds_per_sample"] * 1.02, (name, auto, best["attn"])
        compared += len(cells) > 1
    assert compared == (2 if fa4 else 1)
