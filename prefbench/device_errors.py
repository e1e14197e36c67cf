"""What a run on a device stops with, each error's message saying what to change: out of memory on
a batch (`oom_guard`: the batch and the params keys to lower), non-finite logits in inference
(`check_finite`), a non-finite loss or gradient norm in training (`non_finite_message`).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from prefbench.config import ModelParams


class BatchOutOfMemoryError(RuntimeError):
    """The device ran out of memory on one batch; the message says which settings to lower."""


def oom_message(phase: str, rows: int, longest: int, cfg: ModelParams | None = None, name: str = "<model>",
                step: int | None = None, tokens: int | None = None) -> str:
    """What ran out of memory (`phase` is "train" or "evaluate"), on which batch, and what to lower.

    `rows` and `longest` describe the failing batch: its number of rows and its longest row in
    tokens (batches are padded to their longest row); `tokens`, this process's tokens of it. A
    training batch of `train_token_budget` tokens names that setting instead of train_batch_size.
    """
    key = f"models.{name}"
    where = f"training (optimizer step {step})" if phase == "train" and step is not None else (
        "training" if phase == "train" else "evaluation")
    on_process = f", {tokens} tokens on this process" if tokens is not None else ""
    msg = f"out of memory in {where} on a batch of {rows} rows{on_process}, the longest {longest} tokens"
    if cfg is not None:
        msg += f" (max_length {cfg.max_length})"
    if phase == "train":
        if cfg is not None and cfg.train_token_budget:
            fixes = [f"{key}.train_token_budget (now {cfg.train_token_budget}; raise train.grad_accum_steps to "
                     "keep the tokens per optimizer step)", f"or {key}.max_length"]
        else:
            now = f" (now {cfg.train_batch_size})" if cfg is not None else ""
            fixes = [f"{key}.train_batch_size{now} (raise train.grad_accum_steps to keep the effective batch size)",
                     f"or {key}.max_length"]
        extra = [] if cfg is not None and cfg.gradient_checkpointing else [f"{key}.gradient_checkpointing: true"]
    else:
        now = f" (now {cfg.eval_batch_size})" if cfg is not None else ""
        fixes = [f"{key}.eval_batch_size{now}", f"or {key}.max_length"]
        extra = []
    if cfg is None or not cfg.quantized_base:
        extra.append(f"{key}.quantization: 4bit or 8bit (CUDA, bitsandbytes)")
    msg += ". Lower " + " ".join(fixes)
    if extra:
        msg += ", or set " + " or ".join(extra)
    return msg + "."


@contextmanager
def oom_guard(phase: str, rows: int, longest: int, cfg: ModelParams | None = None, name: str = "<model>",
              step: int | None = None, tokens: int | None = None):
    """Turn torch.OutOfMemoryError inside the block into a BatchOutOfMemoryError naming the batch."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise BatchOutOfMemoryError(oom_message(phase, rows, longest, cfg, name, step, tokens)) from err


class NonFiniteLogitsError(RuntimeError):
    """Some rows got nan or inf logits; the message says how many."""


def check_finite(logits: np.ndarray, dtype_name: str = "?", name: str = "<model>") -> None:
    """Raise NonFiniteLogitsError if any row's logits are nan or inf: a log-loss from them would
    be nan or meaningless, so the stage writes no metrics at all."""
    bad = int((~np.isfinite(logits)).any(axis=1).sum())
    if bad:
        raise NonFiniteLogitsError(
            f"{bad} of {len(logits)} rows have non-finite logits (nan or inf), computing in "
            f"{dtype_name}; no metrics written. In float16 (overflow), set models.{name}.dtype: bfloat16 "
            "or float32; otherwise the adapter itself may hold nan weights (see the training loss).")


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient norm) became nan or inf; the message names the step."""


def non_finite_message(what: str, value: float, step: int, total_steps: int, dtype: torch.dtype,
                       learning_rate: float, name: str = "<model>") -> str:
    dt = str(dtype).removeprefix("torch.")
    fix = (f"set models.{name}.dtype: bfloat16 (GPUs of compute capability 8.0+) or float32, "
           f"or lower train.learning_rate (now {learning_rate:g})")
    if dtype == torch.float16:
        why = "float16 overflows (values past 65504) are a known Gemma2 failure"
    elif dtype == torch.bfloat16:
        why = "bfloat16 cannot overflow where float32 does not, so look first at the learning rate"
        fix = f"lower train.learning_rate (now {learning_rate:g}) or set models.{name}.dtype: float32"
    else:
        why = f"in {dt} this is no half-precision overflow but most likely diverging weights"
        fix = f"lower train.learning_rate (now {learning_rate:g}) or train.max_grad_norm"
    return (f"training {what} is {value} at optimizer step {step} of {total_steps}, computing in {dt}; "
            f"training stopped. {why}: {fix}.")
