"""LoRA fine-tuning of a sequence classifier: peft adapters on the chosen linear layers plus the
score head, AdamW with linear warm-up and cosine decay, gradient accumulation."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from prefbench.config import ModelParams, TrainParams
from prefbench.infer import collate, shuffled_batches, synchronize, to_device
from prefbench.models import resolve_dtype


def add_lora(model, cfg: ModelParams):
    """Wrap the base classifier with LoRA adapters; the score head is trained in full.

    TaskType.SEQ_CLS makes peft keep the score head trainable and save it with the adapter.
    """
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules),
    )
    return get_peft_model(model, lora)


def optimizer_steps(n_rows: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    batches_per_epoch = math.ceil(n_rows / batch_size)
    return max(1, math.ceil(batches_per_epoch * epochs / grad_accum))


def train(model, sequences: list[np.ndarray], labels: np.ndarray, cfg: ModelParams, tp: TrainParams,
          pad_token_id: int, device: torch.device, log=None) -> dict:
    """Train in place. `log(step, metrics)` is called every `tp.log_every` optimizer steps."""
    rng = np.random.default_rng(tp.seed)
    lengths = np.array([len(s) for s in sequences])
    total_steps = optimizer_steps(len(sequences), cfg.train_batch_size, tp.grad_accum_steps, tp.epochs)
    micro_batches = total_steps * tp.grad_accum_steps
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=tp.learning_rate, weight_decay=tp.weight_decay)
    sched = get_cosine_schedule_with_warmup(optim, int(tp.warmup_ratio * total_steps), total_steps)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    # Autocast on GPUs: a 4-bit base trains with fp32 norms and embeddings (peft's k-bit
    # preparation), and the fp32 LoRA matrices meet bf16/fp16 activations; autocast keeps the
    # matmuls in the half-precision dtype, as HF Trainer's bf16/fp16 flags do.
    dtype = resolve_dtype(cfg.dtype, device.type)
    amp = dict(device_type=device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32)

    model.train()
    batches: list[np.ndarray] = []
    step, seen, tokens, loss_sum, loss_n, final_loss = 0, 0, 0, 0.0, 0, float("nan")
    synchronize(device)
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", unit="step")
    for micro in range(micro_batches):
        if not batches:  # next epoch: a fresh shuffle
            batches = shuffled_batches(lengths, cfg.train_batch_size, rng)
        idx = batches.pop()
        batch = to_device(collate([sequences[i] for i in idx], pad_token_id), device)
        with torch.autocast(**amp):
            out = model(**batch, labels=labels_t[idx].to(device))
        (out.loss / tp.grad_accum_steps).backward()
        loss_sum += out.loss.item()
        loss_n += 1
        seen += len(idx)
        tokens += int(lengths[idx].sum())
        if (micro + 1) % tp.grad_accum_steps:
            continue
        torch.nn.utils.clip_grad_norm_(params, tp.max_grad_norm)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % tp.log_every == 0 or step == total_steps:
            final_loss = loss_sum / loss_n
            if log is not None:
                log(step, {"loss": final_loss, "learning_rate": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{final_loss:.4f}")
            loss_sum, loss_n = 0.0, 0
    bar.close()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"final_loss": final_loss, "train_seconds": round(seconds, 3), "steps": step, "samples": seen, "tokens": tokens,
            "seconds_per_sample": seconds / max(seen, 1), "tokens_per_second": tokens / seconds}
