import shutil

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForSequenceClassification

from prefbench.config import ParamsError, load_params, parse_params
from prefbench.flops import head_dim
from prefbench.models import count_parameters, has_weights, label_config_kwargs, load_model, resolve_dtype
from tests import forked
from tests.conftest import ROOT


# The published sizes less the LM head (Llama3's own 128256 x 4096, Qwen2's 152064 x 3584, Mistral's
# 32768 x 4096; Gemma2 ties it to the embedding) plus our 3-class score head (3 x hidden):
# 8,030,261,248 - 525,336,576 + 12,288; 9,241,705,984 + 10,752; 7,615,616,512 - 544,997,376 + 10,752;
# 7,248,023,552 - 134,217,728 + 12,288.
@pytest.mark.parametrize("folder,total,norms_per_layer", [("gemma2-9b", 9_241_716_736, 4),
                                                          ("llama3-8b", 7_504_936_960, 2),
                                                          ("qwen2-7b", 7_070_629_888, 2),
                                                          ("mistral-7b", 7_113_818_112, 2)])
def test_full_size_parameter_counts_are_exact(folder, total, norms_per_layer):
    config = AutoConfig.from_pretrained(ROOT / "models" / folder, **label_config_kwargs())
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    counts = count_parameters(model)
    assert counts["params_total"] == total
    assert counts["params_embedding"] == config.vocab_size * config.hidden_size
    # non-embedding from the architecture: per layer q, k, v, o (grouped k/v heads), the gated MLP's
    # three matrices and the RMSNorm scales (Gemma2 has pre- and post-norms on both blocks); then the
    # final norm and the score head. Biases on Qwen2's q, k and v only.
    h, d = config.hidden_size, head_dim(config)  # Qwen2 configs have no head_dim: hidden / heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    layer = 2 * h * q + 2 * h * kv + 3 * h * config.intermediate_size + norms_per_layer * h
    layer += (q + 2 * kv) if config.model_type == "qwen2" else 0
    assert counts["params_non_embedding"] == config.num_hidden_layers * layer + h + 3 * h
    assert not has_weights(str(ROOT / "models" / folder))  # config only: random-init timing runs


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_auto_dtype_by_gpu_capability(capability, expected):
    assert resolve_dtype("auto", "cuda", capability) == expected


def test_auto_dtype_is_fp32_on_cpu_and_explicit_wins():
    assert resolve_dtype("auto", "cpu") == torch.float64
    assert resolve_dtype("float16", "cuda", (9, 0)) == torch.float16


def test_tiny_models_keep_family_traits():
    g = AutoConfig.from_pretrained(ROOT / "models" / "tiny-gemma2")
    l = AutoConfig.from_pretrained(ROOT / "models" / "tiny-llama3")
    assert g.num_attention_heads // g.num_key_value_heads == 2
    assert g.head_dim * g.num_attention_heads > g.hidden_size  # large head_dim, as in Gemma2
    assert g.attn_logit_softcapping == 50.0 and g.final_logit_softcapping == 30.0
    assert "sliding_attention" in g.layer_types and "full_attention" in g.layer_types
    assert g.tie_word_embeddings and not l.tie_word_embeddings
    assert l.num_attention_heads // l.num_key_value_heads == 4


def test_qwen2_and_mistral_tiny_models_keep_family_traits():
    q = AutoConfig.from_pretrained(ROOT / "models" / "tiny-qwen2")
    m = AutoConfig.from_pretrained(ROOT / "models" / "tiny-mistral")
    for c in (q, m):
        assert c.num_attention_heads // c.num_key_value_heads == 4 and not c.tie_word_embeddings
        assert c.sliding_window is None  # Qwen2-7B: use_sliding_window off; Mistral v0.3: none
    model = AutoModelForSequenceClassification.from_config(q)
    attn = model.model.layers[0].self_attn
    assert all(getattr(attn, p).bias is not None for p in ("q_proj", "k_proj", "v_proj")) and attn.o_proj.bias is None
    for folder in ("qwen2-7b", "mistral-7b"):
        full = AutoConfig.from_pretrained(ROOT / "models" / folder)
        assert full.sliding_window is None and not full.tie_word_embeddings
        assert full.rope_parameters["rope_theta"] == 1e6


@pytest.mark.parametrize("folder", ["tiny-llama3", "tiny-gemma2", "tiny-qwen2", "tiny-mistral"])
def test_pad_token_is_the_familys_own_or_eos(folder):
    """prefbench.families' `pad` says which tokenizers come with a pad token (Gemma2's <pad>,
    Qwen2's <|endoftext|>) and which are padded with EOS (Llama3, Mistral): the shipped tokenizers
    are laid out so, and load_tokenizer pads the latter with EOS."""
    from transformers import AutoTokenizer

    from prefbench.families import family_of
    from prefbench.models import load_tokenizer
    family = family_of(AutoConfig.from_pretrained(ROOT / "models" / folder))
    assert family.known
    raw = AutoTokenizer.from_pretrained(ROOT / "models" / folder)
    tok = load_tokenizer(str(ROOT / "models" / folder))
    assert (raw.pad_token_id is not None) == (family.pad == "own")
    assert tok.pad_token_id == (raw.pad_token_id if family.pad == "own" else raw.eos_token_id) is not None


def test_llama3_tokenizer_has_no_pad_and_we_pad_with_eos(tiny_llama_tok, tiny_gemma_tok):
    from transformers import AutoTokenizer
    raw = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-llama3")
    assert raw.pad_token_id is None
    assert tiny_llama_tok.pad_token_id == tiny_llama_tok.eos_token_id
    assert tiny_gemma_tok.pad_token_id == 0


@pytest.mark.parametrize("name", ["gemma2", "llama3", "qwen2", "mistral"])
def test_four_bit_on_cpu_fails_naming_the_selected_model(name):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = name
    raw["models"][name]["quantization"] = "4bit"
    cfg = parse_params(raw).selected
    with pytest.raises(ParamsError, match=rf"^models\.{name}\.quantization: 4bit needs a CUDA GPU .* set it to none "
                                          rf"\(dvc exp run -S models\.{name}\.quantization=none\)$"):
        load_model(cfg, pad_token_id=0, device=torch.device("cpu"))


LOAD = """
import sys, torch
from prefbench.config import load_params
from prefbench.models import load_model, load_tokenizer
from prefbench.lora import add_lora
params = load_params("params.yaml")
for name in ("llama3", "gemma2"):
    cfg = params.models[name]
    tok = load_tokenizer(cfg.pretrained)
    add_lora(load_model(cfg, tok.pad_token_id, torch.device("cpu"))[0], cfg)  # peft's FutureWarning came here
print("--- damaged", file=sys.stderr)
cfg.pretrained = sys.argv[1]
load_model(cfg, tok.pad_token_id, torch.device("cpu"))
"""


def test_model_loads_are_quiet_unless_something_unexpected_is_missing(tmp_path):
    """A causal-LM checkpoint into a classifier: no score head, an unused lm_head; transformers'
    LOAD REPORT about those, peft's FutureWarning and the weight-loading bar (in a log) are expected
    noise. A checkpoint that lacks a real weight must still be reported."""
    from safetensors.torch import load_file, save_file
    damaged = tmp_path / "damaged"
    shutil.copytree(ROOT / "models" / "tiny-gemma2", damaged)
    weights = load_file(damaged / "model.safetensors")
    lost = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    save_file({k: v for k, v in weights.items() if k != lost}, damaged / "model.safetensors")
    proc = forked.run("-c", LOAD, damaged)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quiet, damaged_report = proc.stderr.split("--- damaged\n")
    assert quiet == ""  # no LOAD REPORT, no FutureWarning, no "Loading weights" bar
    assert "LOAD REPORT" in damaged_report and lost.removeprefix("model.") in damaged_report
    assert "score.weight" not in damaged_report


def test_random_init_from_config_folder(tmp_path):
    cfg = load_params(ROOT / "params.yaml").models["gemma2"]
    config = AutoConfig.from_pretrained(ROOT / "models" / "tiny-gemma2")
    config.save_pretrained(tmp_path)  # a config without weights
    cfg.pretrained = str(tmp_path)
    model, dtype, weights = load_model(cfg, pad_token_id=0, device=torch.device("cpu"))
    assert weights == "random-init" and dtype == torch.float64  # dtype auto on CPU
    assert model.config.num_labels == 3
    cfg.pretrained = str(ROOT / "models" / "tiny-gemma2")
    assert load_model(cfg, pad_token_id=0, device=torch.device("cpu"))[2] == "pretrained"


@pytest.mark.parametrize("device,capability,installed,model_type,expected", [
    ("cuda", (9, 0), True, "gemma2", "flash_attention_4"),  # H100 / H200 with the gpu extra: softcap in-kernel
    ("cuda", (10, 0), True, "llama", "flash_attention_4"),  # Blackwell
    ("cuda", (8, 0), True, "gemma2", "eager"),  # A100: flash-attn-4 needs sm_90+
    ("cuda", (7, 5), True, "llama", "sdpa"),  # T4 (Kaggle)
    ("cuda", (9, 0), False, "gemma2", "eager"),  # Hopper without flash-attn-4
    ("cpu", None, True, "llama", "sdpa"),
    ("cpu", None, True, "qwen2", "sdpa"),
    ("cuda", (8, 0), True, "mistral", "sdpa"),
    ("cuda", (9, 0), True, "qwen2", "flash_attention_4"),
])
def test_auto_attention_picks_flash_attention_4_only_where_it_runs(device, capability, installed, model_type, expected):
    from prefbench.models import resolve_attention
    assert resolve_attention("auto", model_type, device, capability, installed) == expected
    assert resolve_attention("eager", model_type, device, capability, installed) == "eager"  # explicit wins


def test_auto_attention_without_flash_attn_4_installed_here():
    """This CPU venv has no flash-attn-4: the real availability check must say so."""
    from prefbench.models import fa4_usable, resolve_attention
    assert not fa4_usable("cuda", (9, 0)) and resolve_attention("auto", "gemma2", "cuda", (9, 0)) == "eager"


@pytest.mark.parametrize("name,device,capability,installed,expected", [
    ("auto", "cuda", (9, 0), True, "liger"),
    ("auto", "cuda", (8, 0), True, "liger"),
    ("auto", "cuda", (7, 5), True, "none"),  # T4: unmeasured there, keep the plain modules
    ("auto", "cuda", (9, 0), False, "none"),
    ("auto", "cpu", None, True, "none"),  # Triton has no CPU backend
    ("none", "cuda", (9, 0), True, "none"),
    ("liger", "cuda", (7, 5), True, "liger"),  # an explicit choice wins where it can run
])
def test_kernels_auto_is_liger_on_bf16_gpus_with_liger_installed(name, device, capability, installed, expected):
    from prefbench.models import resolve_kernels
    assert resolve_kernels(name, device, capability, installed) == expected
    # a 4-bit base keeps the plain modules under auto (unmeasured there); an explicit liger still wins
    assert resolve_kernels(name, device, capability, installed, quantized=True) == (
        "liger" if name == "liger" else "none")


def test_a_family_outside_the_table_runs_on_the_generic_rule():
    """A model_type prefbench has no entry for: sdpa, or eager where its config softcaps the
    attention; kernels none under auto (said in the metrics, kernels_note), and liger fails naming
    the key and the families Liger runs for."""
    import types

    from prefbench.families import FAMILIES, family_of
    from prefbench.models import kernels_note, resolve_attention, resolve_kernels
    plain = types.SimpleNamespace(model_type="phi3")
    capped = types.SimpleNamespace(model_type="gemma3", attn_logit_softcapping=30.0)
    assert not family_of(plain).known and family_of(plain).liger is None
    assert resolve_attention("auto", plain) == "sdpa" and resolve_attention("auto", capped) == "eager"
    assert resolve_attention("auto", plain, "cuda", (9, 0), True) == "flash_attention_4"
    assert resolve_kernels("auto", "cuda", (9, 0), installed=True, family=plain) == "none"
    assert resolve_kernels("auto", "cuda", (9, 0), installed=True, family=FAMILIES["qwen2"].model_type) == "liger"
    assert "phi3" in kernels_note("auto", plain)["kernels_reason"]
    assert kernels_note("none", plain) == {} and kernels_note("auto", "mistral") == {}
    with pytest.raises(ParamsError, match=r"^models\.phi\.kernels: liger has no kernels for model type 'phi3' "
                                          r"\(it runs for llama, gemma2, qwen2, mistral\)"):
        resolve_kernels("liger", "cuda", (9, 0), installed=True, key="models.phi.kernels", family=plain)


def test_kernels_liger_fails_naming_the_key_where_it_cannot_run():
    from prefbench.models import liger_installed, resolve_kernels
    with pytest.raises(ParamsError, match="models.gemma2.kernels: liger needs a CUDA GPU"):
        resolve_kernels("liger", "cpu", key="models.gemma2.kernels")
    with pytest.raises(ParamsError, match="models.gemma2.kernels: liger needs liger-kernel"):
        resolve_kernels("liger", "cuda", (9, 0), installed=False, key="models.gemma2.kernels")
    assert not liger_installed()  # this CPU venv: kernels auto resolves to none below
    assert resolve_kernels("auto", "cuda", (9, 0)) == "none"


def test_liger_rope_is_pinned_to_its_triton_kernel_unless_the_user_chose(monkeypatch):
    """apply_kernels(liger) pins Liger's RoPE to Triton (its CuTe DSL kernel compiles once per sequence
    length: packed training's every step; benchmarks/results/profile-train-h100.json at commit 29c075c), leaving any
    implementation the user set alone (liger-kernel faked here: not installed in this venv)."""
    import sys
    import types

    from prefbench.models import LIGER_IMPL_VARS, apply_kernels, pin_liger_rope
    calls = []
    fake = types.ModuleType("liger_kernel.transformers")
    for family in ("llama", "gemma2", "qwen2", "mistral"):
        setattr(fake, f"apply_liger_kernel_to_{family}", lambda family=family, **kw: calls.append({"fn": family, **kw}))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    for k in LIGER_IMPL_VARS:
        monkeypatch.setenv(k, "")  # unset for liger's dispatch; restored (removed) after the test
    model = types.SimpleNamespace(config=types.SimpleNamespace(model_type="llama"))
    assert apply_kernels(model, "liger") is model and calls[0]["rope"] and calls[0]["model"] is model
    import os
    assert os.environ["LIGER_KERNEL_IMPL_ROPE"] == "nvidia-triton"
    chosen = {"LIGER_KERNEL_IMPL": "nvidia-cutedsl"}
    pin_liger_rope(chosen)
    assert chosen == {"LIGER_KERNEL_IMPL": "nvidia-cutedsl"}
    # each family through its own function, with its gated MLP (prefbench.families), the loss untouched
    for family, mlp in (("gemma2", "geglu"), ("qwen2", "swiglu"), ("mistral", "swiglu"), ("llama", "swiglu")):
        calls.clear()
        apply_kernels(types.SimpleNamespace(config=types.SimpleNamespace(model_type=family)), "liger")
        assert [c["fn"] for c in calls] == [family] and calls[0][mlp] and calls[0]["rms_norm"]
        assert not calls[0]["fused_linear_cross_entropy"] and not calls[0]["cross_entropy"]
    with pytest.raises(ParamsError, match="liger has no kernels here for model type 'phi3'"):
        apply_kernels(types.SimpleNamespace(config=types.SimpleNamespace(model_type="phi3")), "liger")


def test_kernels_param_is_validated():
    from prefbench.config import parse_params
    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["gemma2"]["kernels"] = "fast"
    with pytest.raises(ParamsError, match="models.gemma2.kernels: 'fast' is not one of auto, liger, none"):
        parse_params(raw)
    del raw["models"]["gemma2"]["kernels"]
    with pytest.raises(ParamsError, match="missing params key: models.gemma2.kernels"):
        parse_params(raw)


def test_inference_merges_lora_into_the_base_and_predicts_like_the_adapter(tiny_gemma_tok):
    """prepare_for_inference (what evaluate and predict run): LoRA merged, no LoRA layers left, the
    same logits as the unmerged adapter model (non-zero B, so merging really changes the weights)."""
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model

    from prefbench.infer import predict
    from prefbench.models import prepare_for_inference
    cfg = load_params(ROOT / "params.yaml").models["gemma2"]
    cpu = torch.device("cpu")
    base = load_model(cfg, tiny_gemma_tok.pad_token_id, cpu)[0]
    torch.manual_seed(1)
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj", "down_proj"],
                                           init_lora_weights=False))
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 200, n) for n in rng.integers(5, 40, 9)]
    unmerged = predict(lora, seqs, 4, tiny_gemma_tok.pad_token_id, cpu, warmup_batches=0)["logits"]
    merged = prepare_for_inference(lora, cfg)
    assert not any("lora_" in n for n, _ in merged.named_modules())
    np.testing.assert_allclose(predict(merged, seqs, 4, tiny_gemma_tok.pad_token_id, cpu, warmup_batches=0)["logits"],
                               unmerged, atol=1e-5)
