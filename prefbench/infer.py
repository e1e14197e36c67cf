"""Batching and the timed predict loop.

Real arena rows range from a few dozen tokens to far past max_length. Padding every batch to
max_length wastes most of the compute on pad tokens, so batches are cut from rows sorted by
length and padded only to their own longest row (dynamic padding).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from prefbench.cli import progress
from prefbench.config import ModelParams


class BatchOutOfMemoryError(RuntimeError):
    """The device ran out of memory on one batch; the message says which settings to lower."""


def oom_message(phase: str, rows: int, longest: int, cfg: ModelParams | None = None, name: str = "<model>",
                step: int | None = None) -> str:
    """What ran out of memory (`phase` is "train" or "evaluate"), on which batch, and what to lower.

    `rows` and `longest` describe the failing batch: its number of rows and its longest row in
    tokens (batches are padded to their longest row).
    """
    key = f"models.{name}"
    where = f"training (optimizer step {step})" if phase == "train" and step is not None else (
        "training" if phase == "train" else "evaluation")
    msg = f"out of memory in {where} on a batch of {rows} rows, the longest {longest} tokens"
    if cfg is not None:
        msg += f" (max_length {cfg.max_length})"
    if phase == "train":
        now = f" (now {cfg.train_batch_size})" if cfg is not None else ""
        fixes = [f"{key}.train_batch_size{now} (raise train.grad_accum_steps to keep the effective batch size)",
                 f"or {key}.max_length"]
        extra = [] if cfg is not None and cfg.gradient_checkpointing else [f"{key}.gradient_checkpointing: true"]
    else:
        now = f" (now {cfg.eval_batch_size})" if cfg is not None else ""
        fixes = [f"{key}.eval_batch_size{now}", f"or {key}.max_length"]
        extra = []
    if cfg is None or cfg.quantization == "none":
        extra.append(f"{key}.quantization: 4bit (CUDA, bitsandbytes)")
    msg += ". Lower " + " ".join(fixes)
    if extra:
        msg += ", or set " + " or ".join(extra)
    return msg + "."


@contextmanager
def oom_guard(phase: str, rows: int, longest: int, cfg: ModelParams | None = None, name: str = "<model>",
              step: int | None = None):
    """Turn torch.OutOfMemoryError inside the block into a BatchOutOfMemoryError naming the batch."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise BatchOutOfMemoryError(oom_message(phase, rows, longest, cfg, name, step)) from err


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length, longest first (an OOM shows up at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shuffled_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     mega: int = 16) -> list[np.ndarray]:
    """Training batches: random, but each drawn from a 'mega-batch' of `mega` batches sorted by
    length, so padding stays small while batch order and composition stay random."""
    perm = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(perm), batch_size * mega):
        chunk = perm[i:i + batch_size * mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def collate(sequences: list[np.ndarray], pad_token_id: int, pad_to: int | None = None,
            pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence rounded up to `pad_multiple` (or to `pad_to`), with the mask.

    On a GPU, pad_multiple=64 keeps matmul shapes tensor-core friendly and bounds the number of
    distinct shapes that compiled kernels (flex attention) see: 16 for max_length 1024.
    """
    width = pad_to or -(-max(len(s) for s in sequences) // pad_multiple) * pad_multiple
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def synchronize(*devices: torch.device) -> None:
    """Wait for every GPU among `devices` (each once) to finish its queued work."""
    for device in set(devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def deal_round_robin(lengths: np.ndarray, n: int) -> list[np.ndarray]:
    """Row indices sorted by length (longest first) and dealt to `n` workers in turn: each worker
    gets the same mix of long and short rows, so all finish at about the same time (the Kaggle
    2xT4 pattern: one model per GPU)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i::n] for i in range(n)]


def padded_shape(lengths: np.ndarray, pad_to: int | None, pad_multiple: int) -> tuple[int, int]:
    """(rows, width) of the batch `collate` makes from rows of these lengths."""
    return len(lengths), pad_to or -(-int(lengths.max()) // pad_multiple) * pad_multiple


def warmup_plan(batches: list[np.ndarray], lengths: np.ndarray, warmup_batches: int, warmup_shapes: bool,
                pad_to: int | None = None, pad_multiple: int = 1) -> list[np.ndarray]:
    """The untimed batches: the first `warmup_batches`, plus (warmup_shapes) the first batch of
    every padded shape not among them, so no shape is first seen inside the timed loop (cuDNN
    attention plans, flash-attn-4 / Triton JIT kernels and torch.compile graphs are built per shape)."""
    plan = list(batches[:warmup_batches])
    if warmup_shapes:
        seen = {padded_shape(lengths[b], pad_to, pad_multiple) for b in plan}
        for b in batches:
            shape = padded_shape(lengths[b], pad_to, pad_multiple)
            if shape not in seen:
                seen.add(shape)
                plan.append(b)
    return plan


def predict(model, sequences: list[np.ndarray], batch_size: int, pad_token_id: int,
            device: torch.device, warmup_batches: int = 1, pad_to: int | None = None,
            pad_multiple: int = 1, cfg: ModelParams | None = None, name: str = "<model>",
            warmup_shapes: bool = False) -> dict:
    """Logits for every sequence (input order) and the time of the predict loop, on one device.

    The timer covers only the loop over batches (host-to-device copies included), after
    `warmup_batches` untimed batches, with the device synchronised at both ends. Running out of
    device memory raises BatchOutOfMemoryError naming the batch and the settings (`cfg`, model
    `name`) to lower.
    """
    return predict_sharded([model], [device], sequences, batch_size, pad_token_id, warmup_batches, pad_to,
                           pad_multiple, cfg, name, warmup_shapes)


def predict_sharded(models: list, devices: list[torch.device], sequences: list[np.ndarray], batch_size: int,
                    pad_token_id: int, warmup_batches: int = 1, pad_to: int | None = None, pad_multiple: int = 1,
                    cfg: ModelParams | None = None, name: str = "<model>", warmup_shapes: bool = False) -> dict:
    """predict() over one model copy per device: rows dealt round-robin by length
    (`deal_round_robin`), each worker a thread running its copy on its device (CUDA kernels release
    the GIL, so GPUs run side by side). Every worker first runs its untimed batches (`warmup_plan`:
    `warmup_batches`, and with `warmup_shapes` one batch of each padded shape; one worker after the
    other; their time is `warmup_seconds`, their rows are predicted again in the timed loop);
    `seconds` is the wall time of the whole sharded loop, so seconds per sample stays comparable
    with one device."""
    lengths = np.array([len(s) for s in sequences])
    shards = deal_round_robin(lengths, len(models)) if len(models) > 1 else [np.arange(len(sequences))]
    plans = [[shard[b] for b in length_sorted_batches(lengths[shard], batch_size)] for shard in shards]
    logits = np.zeros((len(sequences), models[0].config.num_labels), dtype=np.float32)

    def work(k: int, batches: list[np.ndarray], bar=None) -> int:
        """Run worker k's batches; returns the padded tokens it computed."""
        model, device, padded = models[k], devices[k], 0
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # this thread's current device (streams, allocator)
        model.eval()
        with torch.inference_mode():  # thread-local: set inside the worker
            for idx in batches:
                batch = collate([sequences[i] for i in idx], pad_token_id, pad_to, pad_multiple)
                padded += batch["input_ids"].numel()
                with oom_guard("evaluate", len(idx), int(lengths[idx].max()), cfg, name):
                    out = model(**to_device(batch, device))
                    logits[idx] = out.logits.float().cpu().numpy()
                if bar is not None:
                    bar.update(1)
        return padded

    def run_all(bar) -> int:
        if len(models) == 1:
            return work(0, plans[0], bar)
        with ThreadPoolExecutor(len(models)) as pool:
            return sum(pool.map(lambda k: work(k, plans[k], bar), range(len(models))))

    start = time.perf_counter()
    for k in range(len(models)):  # one copy at a time: the first batches compile (torch.compile, flex)
        work(k, warmup_plan(plans[k], lengths, warmup_batches, warmup_shapes, pad_to, pad_multiple))
    synchronize(*devices)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with progress(total=sum(len(p) for p in plans), desc="predict", unit="batch") as bar:
        padded_tokens = run_all(bar)
        synchronize(*devices)
    seconds = time.perf_counter() - start
    return {"logits": logits, "seconds": seconds, "tokens": int(lengths.sum()), "padded_tokens": padded_tokens,
            "devices": len(models), "warmup_seconds": warmup_seconds,
            "batch_shapes": len({padded_shape(lengths[b], pad_to, pad_multiple) for p in plans for b in p})}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
