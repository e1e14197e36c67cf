"""LoRA adapters (peft) on a sequence classifier: wrapping the base model for training and writing
the trained adapter."""

from __future__ import annotations

import types
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

from prefbench.config import ModelParams


def add_lora(model, cfg: ModelParams):
    """Wrap the base classifier with LoRA adapters; the score head is trained in full.

    TaskType.SEQ_CLS makes peft keep the score head trainable and save it with the adapter.
    On a float16 base the trainable weights are made float32: accelerate's fp16 mixed precision
    scales the loss (GradScaler), and the scaler refuses to unscale float16 gradients; float32
    master weights are also what keeps small updates from rounding away (fp16 has 11 bits).
    """
    if cfg.quantized_base:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules),
    )
    model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.float16:
            p.data = p.data.float()
    return model


def save_adapter(model, out: str | Path) -> None:
    """adapter_model.safetensors (LoRA weights and the score head) and adapter_config.json, the same
    bytes for the same weights: peft keeps target_modules as a set, written in hash order."""
    for lora in model.peft_config.values():
        if isinstance(lora.target_modules, set):
            lora.target_modules = sorted(lora.target_modules)
    model.save_pretrained(out)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's LoRA Linear forward, `base(x) + B(A(dropout(x))) * scaling`, with the scaling and the
    sum done inside B's matmul: torch.addmm(base(x), A(x), B^T, alpha=scaling), one GEMM that reads
    base(x) in its epilogue, where peft runs a matmul, a multiply and an add over the (tokens x
    out_features) output. Falls back to peft's forward in every case but the plain one (one active
    vanilla adapter, not merged, no per-row adapter names)."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    if (self.disable_adapters or self.merged or len(active) != 1 or active[0] in self.lora_variant
            or kwargs.get("adapter_names") is not None):
        return type(self).forward(self, x, *args, **kwargs)
    a = active[0]
    result = self.base_layer(x, *args, **kwargs)
    h = self.lora_A[a](self.lora_dropout[a](x))
    b = self.lora_B[a].weight
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=self.scaling[a])
    return out.view(result.shape).to(result.dtype)


@contextmanager
def fused_lora_add(model, active: bool = True):
    """Every plain LoRA Linear of `model` runs `_fused_forward` inside the block (peft's own forward
    after it). Same function: on CPU in fp64 it agrees with peft's to rounding (tests/test_numerics.py).
    Why: under bf16 autocast on a GPU, peft's multiply and add each read and write the whole
    (tokens x out_features) output of every adapted layer (7 per block, packed steps of 8192
    tokens): memory-bound passes among the costliest kernels of a step (benchmarks' train profile,
    top kernels). Training turns it on where it runs under mixed precision."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = [m for m in model.modules() if type(m) is LoraLinear] if active else []
    for m in patched:
        m.forward = types.MethodType(_fused_forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # the instance attribute: the class's forward again
