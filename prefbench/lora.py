"""LoRA adapters (peft) on a sequence classifier: wrapping the base model for training and writing
the trained adapter."""

from __future__ import annotations

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
