"""Load tokenizers and `*ForSequenceClassification` models: local tiny, full-size random-init, or real.

`pretrained` is a hub id or a local folder. A local folder with a config but no weight files
(the shipped `models/gemma2-9b`, `models/llama3-8b`) builds the architecture with random
weights: timing is real, predictions are not, and `weights: random-init` says so in the metrics.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import warnings
from pathlib import Path

import torch
from transformers import (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING, AutoConfig, AutoModelForSequenceClassification,
                          AutoTokenizer)
from transformers.utils import logging as hf_logging

from prefbench.config import ModelParams, ParamsError
from prefbench.data import LABEL_NAMES
from prefbench.families import family_of, liger_families
from prefbench.progress import is_terminal

# peft 0.21 reads the attribute transformers 5 renamed (PeftModel.__init__), once per model load;
# nothing here can act on it. Only this message is silenced; other FutureWarnings still show.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module="transformers.modeling_utils")

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pth")


def pick_devices(n: int, key: str, visible: int | None = None) -> list[torch.device]:
    """The devices of a multi-GPU stage: GPUs 0..n-1 (n = 0: all `visible` GPUs, default: those
    torch sees). Asking for more GPUs than are visible fails naming the params `key`. Without a
    GPU, n > 1 gives n CPU workers (how tests exercise the sharded and DDP paths on a laptop)."""
    visible = torch.cuda.device_count() if visible is None else visible
    if visible == 0:
        return [torch.device("cpu")] * max(n, 1)
    if n > visible:
        raise ParamsError(f"{key}: {n} GPUs asked for, {visible} visible (set {key}: 0 for all of them)")
    return [torch.device("cuda", i) for i in range(n or visible)]


def resolve_dtype(name: str, device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """`auto`: bf16 on GPUs with native bf16 (compute capability >= 8.0, Ampere and later), else
    fp16 (T4 is 7.5: bf16 there is emulated and slow); fp64 on CPU.

    Why fp64 on a CPU: the CPU path runs the tiny default models, whose numbers are committed and
    compared in review on any machine. Kernels of another CPU (AVX2, AVX-512, AMX, another thread
    count) round differently and training amplifies that rounding; fp64's rounding is 1e-16, so
    the run reproduces within the committed tolerance (measured in docs/reproducibility.md,
    benchmarks/results/cpu-repro.jsonl). Set `float32` for speed when cross-machine agreement does not matter."""
    if name != "auto":
        return DTYPES[name]
    if device_type != "cuda":
        return torch.float64
    if capability is None:
        capability = torch.cuda.get_device_capability()
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def fa4_usable(device_type: str, capability: tuple[int, int] | None = None, installed: bool | None = None) -> bool:
    """flash-attn-4 is installed and the GPU is Hopper or newer (compute capability >= 9.0): its
    kernels are written for sm_90+ (a T4 is 7.5, an A100 8.0)."""
    if device_type != "cuda":
        return False
    if installed is None:
        from transformers.utils import is_flash_attn_4_available
        installed = is_flash_attn_4_available()
    if capability is None:
        capability = torch.cuda.get_device_capability()
    return installed and capability >= (9, 0)


def resolve_attention(name: str, family, device_type: str = "cpu", capability: tuple[int, int] | None = None,
                      fa4_installed: bool | None = None) -> str:
    """`auto`: the fastest attention that computes the model correctly (benchmarks/README.md).

    `family`: the model's config (or its `model_type`), looked up in prefbench.families.
    On Hopper and newer with flash-attn-4 installed (the `gpu` extra): flash_attention_4, for every
    family. It applies Gemma2's softcap (tanh at 50) inside the fused kernel and has a backward, so
    training uses it too (benchmarks/results: checked against fp32 eager). Elsewhere (CPU, T4,
    A100, no flash-attn-4): the family's own pick, eager where the attention is softcapped
    (Gemma2), else sdpa (Llama3, Qwen2, Mistral). SDPA cannot apply the softcap
    (transformers 5.24 refuses it); flex attention compiles a kernel per padded batch shape and has
    no backward for Gemma2's head_dim 256 (Inductor NoValidChoicesError) nor any on a CPU.
    """
    if name != "auto":
        return name
    if fa4_usable(device_type, capability, fa4_installed):
        return "flash_attention_4"
    return family_of(family).attention


def liger_installed() -> bool:
    from importlib.util import find_spec
    return find_spec("liger_kernel") is not None


def resolve_kernels(name: str, device_type: str, capability: tuple[int, int] | None = None,
                    installed: bool | None = None, key: str = "models.<model>.kernels",
                    quantized: bool = False, family=None) -> str:
    """`auto`: Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU / GeGLU) on CUDA GPUs with
    native bf16 (compute capability >= 8.0) when liger-kernel is installed, else none. A T4 (7.5)
    and a 4-bit base (`quantized`: peft's k-bit preparation keeps norms in fp32) keep the plain
    modules: Liger is unmeasured there. `liger` asks for them and fails, naming `key`, where they
    cannot run (no GPU: Triton has no CPU backend; not installed; `family`, the model's config or
    model_type, one Liger has no kernels for: prefbench.families, whose `kernels_note` says so
    in the metrics under auto)."""
    if name == "none":
        return "none"
    unsupported = family is not None and family_of(family).liger is None
    installed = liger_installed() if installed is None else installed
    if name == "liger":
        if unsupported:
            raise ParamsError(f"{key}: liger has no kernels for model type {family_of(family).model_type!r} "
                              f"(it runs for {', '.join(liger_families())}): set it to auto or none")
        if device_type != "cuda":
            raise ParamsError(f"{key}: liger needs a CUDA GPU (Triton kernels) and this run has none: set it to "
                              "auto or none")
        if not installed:
            raise ParamsError(f"{key}: liger needs liger-kernel: pip install -e '.[gpu]' (or set it to auto)")
        return "liger"
    if device_type != "cuda" or not installed or quantized or unsupported:
        return "none"
    if capability is None:
        capability = torch.cuda.get_device_capability()
    return "liger" if capability >= (8, 0) else "none"


def kernels_note(name: str, family) -> dict:
    """{"kernels_reason": why} where `kernels: auto` keeps the plain modules because Liger has no
    kernels for the model's family (prefbench.families), else {}: the metrics say why a GPU run
    of such a family has `kernels: none`."""
    fam = family_of(family)
    if name != "auto" or fam.liger is not None:
        return {}
    return {"kernels_reason": f"liger-kernel has no kernels for model type {fam.model_type!r} "
                              f"(prefbench runs them for {', '.join(liger_families())})"}


def apply_kernels(model, kernels: str):
    """Swap in Liger's fused RMSNorm, RoPE and gated-MLP kernels on this model instance
    (`kernels` resolved: liger | none), through the function prefbench.families names for the
    model's family. Never fused_linear_cross_entropy nor cross_entropy: they replace a causal LM's
    loss and forward, and this is a classifier. Returns the model."""
    if kernels == "none":
        return model
    fam = family_of(model.config)
    if fam.liger is None:
        raise ParamsError(f"models.<model>.kernels: liger has no kernels here for model type {fam.model_type!r} "
                          f"(supported: {', '.join(liger_families())}); set it to none")
    liger = importlib.import_module("liger_kernel.transformers")

    pin_liger_rope()
    getattr(liger, fam.liger)(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False,
                              model=model, **{fam.liger_mlp: True})
    return model


# Liger's own variables for choosing a kernel implementation (liger_kernel.backends.dispatch reads them
# at every call): per op, then for all ops.
LIGER_IMPL_VARS = ("LIGER_KERNEL_IMPL_ROPE", "LIGER_KERNEL_BACKEND_ROPE", "LIGER_KERNEL_IMPL", "LIGER_KERNEL_BACKEND")


def pin_liger_rope(environ=os.environ) -> None:
    """Liger's RoPE on its Triton kernel, unless the user chose an implementation (LIGER_IMPL_VARS).

    Why: with the CUTLASS DSL installed (flash-attn-4 brings it) liger-kernel 0.8.5 routes RoPE with
    gradients and at least 131072 query head-rows (Llama3: 4096 tokens a forward, Gemma2: 8192)
    to a CuTe DSL kernel compiled once per sequence length, about 0.4 s per compile, forward and
    backward. Packed training meets a new length at nearly every step: on one H100 that made
    Llama3's steps of 8192 tokens 2x slower on new batches than on batches seen before
    (benchmarks/results/profile-train-h100.json at commit 29c075c). The Triton kernel takes the length at run time;
    inference (no gradients) runs it already."""
    if not any(environ.get(k) for k in LIGER_IMPL_VARS):
        environ["LIGER_KERNEL_IMPL_ROPE"] = "nvidia-triton"


def has_weights(pretrained: str) -> bool:
    """False only for a local folder holding a config and no weight files (random-init)."""
    path = Path(pretrained)
    if not path.is_dir():
        return True  # a hub id: from_pretrained downloads (or finds cached) weights
    return any(any(path.glob(g)) for g in WEIGHT_GLOBS)


def load_tokenizer(pretrained: str):
    """The model's own tokenizer, with a pad token the classifier can pool on.

    Llama3 and Mistral have no pad token (prefbench.families: `pad: eos`); Gemma2 and Qwen2 have
    their own. Without one we pad with EOS: sequences never contain EOS (we do not append it,
    and user text cannot inject it, see tokenize.encode_rows), so the last non-pad token the
    classification head pools on is always the last real token.
    """
    tok = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=False)
    if tok.pad_token_id is None:
        if tok.eos_token is None:  # nothing the classifier could tell from a real token's end
            raise ParamsError(f"{pretrained}: the tokenizer has neither a pad nor an EOS token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def label_config_kwargs() -> dict:
    return {
        "num_labels": len(LABEL_NAMES),
        "id2label": dict(enumerate(LABEL_NAMES)),
        "label2id": {n: i for i, n in enumerate(LABEL_NAMES)},
    }


FP8_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


def quantization_config(cfg: ModelParams, dtype: torch.dtype, device: torch.device):
    """bitsandbytes' config for a 4bit / 8bit base, else None (fp8 is applied after the adapter is
    merged: `prepare_for_inference`)."""
    if not cfg.quantized_base:
        return None
    key = f"models.{cfg.name}.quantization"
    if device.type != "cuda":
        raise ParamsError(
            f"{key}: {cfg.quantization} needs a CUDA GPU (bitsandbytes) and this "
            f"machine has none: set it to none (dvc exp run -S {key}=none)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ParamsError(f"{key}: {cfg.quantization} needs bitsandbytes: pip install -e '.[gpu]'") from None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def check_fp8(cfg: ModelParams, device: torch.device, dtype: torch.dtype,
              capability: tuple[int, int] | None = None, installed: bool | None = None) -> None:
    """`quantization: fp8` runs where it can: a GPU with FP8 matmuls (compute capability >= 8.9),
    bf16 activations (the row-wise scaled FP8 matmul writes bf16) and torchao installed. Fails
    naming the params key otherwise."""
    key = f"models.{cfg.name}.quantization"
    if device.type != "cuda":
        raise ParamsError(f"{key}: fp8 needs a GPU with FP8 matmuls (compute capability >= 8.9: Ada, Hopper "
                          f"or newer) and this run has none: set it to none (dvc exp run -S {key}=none)")
    capability = capability or torch.cuda.get_device_capability(device)
    if tuple(capability) < FP8_CAPABILITY:
        raise ParamsError(f"{key}: fp8 needs FP8 matmuls (compute capability >= 8.9: Ada, Hopper or newer); "
                          f"{device} is {capability[0]}.{capability[1]}: set it to none, or 4bit / 8bit "
                          "to save memory")
    if dtype != torch.bfloat16:
        raise ParamsError(f"{key}: fp8 computes with bf16 activations; models.{cfg.name}.dtype resolves to "
                          f"{str(dtype).removeprefix('torch.')}: set it to auto or bfloat16")
    if installed is None:
        from importlib.util import find_spec
        installed = find_spec("torchao") is not None
    if not installed:
        raise ParamsError(f"{key}: fp8 needs torchao: pip install -e '.[gpu]'")


def quantize_fp8_(model, compile_linears: bool = True):
    """Every decoder nn.Linear to FP8 (e4m3) in place, through torchao: weights scaled per output
    channel once, activations per token at each call (dynamic), matmuls by torch's row-wise scaled
    FP8 matmul, output bf16. The 3-class score head stays bf16: FP8 matmuls need dimensions that
    are multiples of 16, and it is < 0.01% of the FLOPs. Returns the model.

    `compile_linears`: each FP8 linear's forward goes through one torch.compile'd function (dynamic
    token count), which fuses the activation's scaling and cast into a kernel or two. Why: run
    eagerly, the per-token amax, divide, clamp and cast over every linear's input took as much
    device time as the FP8 matmuls saved, and FP8 came out 1.3x slower than bf16 (benchmarks,
    inference part, `fp8_eager`). Only the linear layers compile: attention kernels and packing
    stay as they are, and the model needs no `compile: true`."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def decoder_linear(module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not fqn.endswith("score")

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=decoder_linear)
    return compile_fp8_linears(model) if compile_linears else model


def compile_fp8_linears(model):
    """Route each FP8 linear (quantize_fp8_) through `_fp8_linear`'s compiled function. Returns the model."""
    from torchao.quantization import Float8Tensor

    # one compiled graph per weight shape (5-7 per model), all sharing one function: room for them
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, Float8Tensor):
            module.forward = functools.partial(_fp8_linear, module)
    return model


def _linear(x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


@functools.cache
def _fp8_linear_compiled():
    # made at first use: importing torch._dynamo costs every stage a second otherwise
    return torch.compile(_linear, dynamic=True)


def _fp8_linear(module, x):
    return _fp8_linear_compiled()(x, module.weight, module.bias)


@functools.cache
def classifier_class(config_class: type):
    """transformers' *ForSequenceClassification for this config, told which keys loading a causal-LM
    checkpoint into it always gives: no `score` head (ours, initialised here and trained) and an
    `lm_head` a classifier does not use (Llama3; Gemma2 ties it to the embedding). Without this,
    every load logs a LOAD REPORT about them; any other missing or unexpected key is still reported."""
    base = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[config_class]
    return type(base.__name__, (base,), {
        "__module__": base.__module__,
        "_keys_to_ignore_on_load_missing": [*(base._keys_to_ignore_on_load_missing or []), r"^score\.weight$"],
        "_keys_to_ignore_on_load_unexpected": [*(base._keys_to_ignore_on_load_unexpected or []),
                                               r"^lm_head\.weight$"],
    })


def load_model(cfg: ModelParams, pad_token_id: int, device: torch.device, seed: int = 0):
    """Base classifier on `device` in the resolved dtype. Returns (model, dtype, weights)."""
    dtype = resolve_dtype(cfg.dtype, device.type)
    if cfg.quantization == "fp8":  # training too (it stays bf16): fail before training, not after it
        check_fp8(cfg, device, dtype)
    quant = quantization_config(cfg, dtype, device)
    config = AutoConfig.from_pretrained(cfg.pretrained, trust_remote_code=False, **label_config_kwargs())
    config.pad_token_id = pad_token_id
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    attn = resolve_attention(cfg.attn_implementation, config, device.type, capability)
    kernels = resolve_kernels(cfg.kernels, device.type, capability, quantized=cfg.quantized_base,
                              key=f"models.{cfg.name}.kernels", family=config)
    common = {"dtype": dtype, "attn_implementation": attn}
    # Seeded for both branches: a checkpoint without the 3-class score head gets it initialised
    # afresh, and every copy of a sharded run must hold the same one.
    torch.manual_seed(seed)
    if not is_terminal():
        hf_logging.disable_progress_bar()  # "Loading weights": a bar redrawn with '\r', noise in a log
    if has_weights(cfg.pretrained):
        model = classifier_class(type(config)).from_pretrained(
            cfg.pretrained, config=config, quantization_config=quant, trust_remote_code=False,
            device_map={"": device} if device.type == "cuda" else None, **common,
        )
        weights = "pretrained"
    else:
        # Initialise directly on the target device: 9B fp32 parameters on a CPU take minutes.
        with torch.device(device):
            model = AutoModelForSequenceClassification.from_config(config, **common)
        if cfg.quantization == "4bit":
            quantize_nf4_(model, dtype)
        elif cfg.quantization == "8bit":
            quantize_int8_(model)
        weights = "random-init"
    if quant is None:
        model.to(device)
    apply_kernels(model, kernels)
    return model, dtype, weights


def quantize_nf4_(model, compute_dtype: torch.dtype):
    """Swap every decoder nn.Linear for a bitsandbytes NF4 Linear4bit, in place (the score head
    stays in full precision, as transformers leaves it). Used for random-init weights, which
    have no checkpoint for from_pretrained(quantization_config=...) to quantise while loading."""
    import bitsandbytes as bnb

    for path, parent in list(model.named_modules()):
        if "lora_" in path:  # a LoRA adapter's own A/B matrices stay in full precision
            continue
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "score" or name.startswith("lora_"):
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                  device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                         quant_type="nf4")
            if child.bias is not None:
                q.bias = child.bias
            setattr(parent, name, q.to(child.weight.device))  # .to(cuda) quantises
    model.is_loaded_in_4bit = True  # what peft checks to wrap Linear4bit layers with LoRA
    return model


def quantize_int8_(model):
    """Swap every decoder nn.Linear for a bitsandbytes LLM.int8 Linear8bitLt, in place (the score
    head stays in full precision): what from_pretrained(load_in_8bit=True) gives a checkpoint, for
    random-init weights. Row-wise int8 weights; activation columns over the outlier threshold (6.0,
    bitsandbytes' default) run in fp16."""
    import bitsandbytes as bnb

    for path, parent in list(model.named_modules()):
        if "lora_" in path:
            continue
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear) or name == "score" or name.startswith("lora_"):
                continue
            q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                    has_fp16_weights=False, threshold=6.0, device="meta")
            # from the CPU: Int8Params quantises when moved from the CPU to a GPU (bitsandbytes 0.50), not
            # when already there
            q.weight = bnb.nn.Int8Params(child.weight.data.to("cpu", torch.float16), requires_grad=False,
                                         has_fp16_weights=False)
            if child.bias is not None:
                q.bias = child.bias
            setattr(parent, name, q.to(child.weight.device))  # .to(cuda) quantises
    model.is_loaded_in_8bit = True  # what peft checks to wrap Linear8bitLt layers with LoRA
    return model


def count_parameters(model) -> dict[str, int]:
    """Total, embedding (input token embeddings; tied output counted once), non-embedding, trainable.

    Counted over unique tensors, so the tied Gemma2 embedding is not counted twice and a 4-bit
    base is counted by elements of the original matrices, not packed bytes.
    """
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _numel(p)
        total += n
        trainable += n if p.requires_grad else 0
    emb = _numel(model.get_input_embeddings().weight)
    return {"params_total": total, "params_embedding": emb, "params_non_embedding": total - emb,
            "params_trainable": trainable}


def _numel(p) -> int:
    # bitsandbytes Params4bit keeps the original shape in quant_state; numel() is the packed size.
    state = getattr(p, "quant_state", None)
    return int(state.shape.numel()) if state is not None else p.numel()


def load_with_adapter(cfg: ModelParams, adapter: str, pad_token_id: int, device: torch.device, seed: int = 0):
    """Base classifier + trained LoRA adapter and score head, ready for inference
    (`prepare_for_inference`: LoRA merged unless 4-bit, compiled if `cfg.compile`).

    Returns (model, info): info holds dtype, attn_implementation, kernels, weights, parameter
    counts (params_trainable is what the adapter adds: LoRA matrices and the score head copy) and
    lora_merged."""
    from peft import PeftModel

    base, dtype, weights = load_model(cfg, pad_token_id, device, seed=seed)
    counts = count_parameters(base)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    info = {"dtype": str(dtype).removeprefix("torch."), "attn_implementation": base.config._attn_implementation,
            "kernels": resolve_kernels(cfg.kernels, device.type, capability, quantized=cfg.quantized_base,
                                       family=base.config),
            **kernels_note(cfg.kernels, base.config), "weights": weights, **counts}
    model = PeftModel.from_pretrained(base, adapter).to(device)
    info["params_trainable"] = count_parameters(model)["params_total"] - counts["params_total"]
    info["lora_merged"] = not cfg.quantized_base
    return prepare_for_inference(model, cfg), info


def adapter_seed(adapter: str | Path) -> int:
    """The seed the adapter's training run built its base with (resolved_params.json, written by
    the train stage). A random-init base is only the base the adapter was trained on when it is
    built from this seed, so evaluate and predict take it from the adapter, not from params."""
    path = Path(adapter) / "resolved_params.json"
    try:
        return int(json.loads(path.read_text())["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ParamsError(f"{path}: no train.seed in the adapter's resolved params ({err}); "
                          "re-run the train stage") from None


def load_copies(cfg: ModelParams, adapter: str, pad_token_id: int, devices: list[torch.device], seed: int = 0):
    """One base + adapter copy per device, for inference (prefbench.infer.predict_sharded), merged
    and compiled as `prepare_for_inference` says. Returns (models, info) with info of the first copy;
    every copy starts from the same seed, so random-init bases are identical too."""
    models, info = [], {}
    for device in devices:
        model, info_k = load_with_adapter(cfg, adapter, pad_token_id, device, seed=seed)
        info = info or info_k
        models.append(model)
    info["compiled"] = cfg.compile
    return models, info


def prepare_for_inference(model, cfg: ModelParams, backend: str = "inductor"):
    """The one inference path of evaluate, predict and the benchmark's `default` cells: LoRA merged
    into the base weights (one matmul per linear layer instead of three, and no adapter dropout or
    scaling work; a 4-bit / 8-bit base cannot take merged weights, so it keeps the adapter), the
    merged linear layers to FP8 if `quantization: fp8` (`quantize_fp8_`), then torch.compile with
    dynamic shapes if `cfg.compile` (`backend`: torch.compile's)."""
    if not cfg.quantized_base and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if cfg.quantization == "fp8":
        quantize_fp8_(model)
    return torch.compile(model, dynamic=True, backend=backend) if cfg.compile else model
