"""What differs between the decoder families prefbench runs, in one table keyed by the model
config's `model_type` (what `config.json` says, whatever `pretrained` is): the code that loads,
times and counts a model looks its family up here instead of branching on a name.

Per family:
  attention  the attention `auto` takes where flash-attn-4 cannot run (a CPU, a T4, an A100, no
             flash-attn-4): eager where the model softcaps its attention logits (Gemma2's tanh at
             50: SDPA cannot apply it, transformers refuses the pairing), else SDPA (the same
             function as eager, fused; benchmarks/README.md, tests/test_flops.py)
  liger      liger_kernel.transformers' function that swaps in the family's fused RMSNorm, RoPE and
             gated MLP, and which gated MLP that is (SwiGLU for Llama, Qwen2 and Mistral; GeGLU for
             Gemma2); None where Liger has none, so `kernels: auto` keeps the plain modules
  pad        the family's own pad token (`own`: Gemma2's `<pad>`, Qwen2's `<|endoftext|>`) or none,
             padded with EOS (`eos`: Llama3, Mistral; prefbench.models.load_tokenizer)

A `model_type` outside the table runs on a generic rule (`family_of`): SDPA unless the config
softcaps its attention (then eager), no Liger kernels (`kernels: auto` says none, with the reason
in the metrics), EOS as pad where the tokenizer has none. `kernels: liger` for such a model fails
naming the params key and listing the families Liger runs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's `model_type`
    attention: Literal["sdpa", "eager"]  # `attn_implementation: auto` where flash-attn-4 cannot run
    liger: str | None  # liger_kernel.transformers.<this>(model=...); None: Liger has no kernels for it
    liger_mlp: Literal["swiglu", "geglu"] | None  # the gated-MLP keyword that function takes
    pad: Literal["own", "eos"]  # the tokenizer's own pad token, or none (padded with EOS)
    known: bool = True  # False: the generic rule for a model_type outside FAMILIES


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", attention="sdpa", liger="apply_liger_kernel_to_llama", liger_mlp="swiglu", pad="eos"),
    Family("gemma2", attention="eager", liger="apply_liger_kernel_to_gemma2", liger_mlp="geglu", pad="own"),
    Family("qwen2", attention="sdpa", liger="apply_liger_kernel_to_qwen2", liger_mlp="swiglu", pad="own"),
    Family("mistral", attention="sdpa", liger="apply_liger_kernel_to_mistral", liger_mlp="swiglu", pad="eos"),
)}


def softcaps_attention(config) -> bool:
    """Whether the model caps its attention logits (Gemma2's `attn_logit_softcapping`), which
    only eager attention and flash-attn-4 apply."""
    return bool(getattr(config, "attn_logit_softcapping", None))


def family_of(config) -> Family:
    """The family of a transformers config (or of a bare `model_type` string), or the generic rule
    for one outside FAMILIES: eager if it softcaps its attention, else SDPA; no Liger kernels."""
    model_type = config if isinstance(config, str) else config.model_type
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    softcap = not isinstance(config, str) and softcaps_attention(config)
    return Family(model_type, attention="eager" if softcap else "sdpa", liger=None, liger_mlp=None, pad="eos",
                  known=False)


def liger_families() -> list[str]:
    """The model types whose Liger kernels prefbench applies, for messages."""
    return [t for t, f in FAMILIES.items() if f.liger]
