"""Batches for both loops, inference and training: which rows go together, padded how wide, on
which device.

Real arena rows range from a few dozen tokens to far past max_length. Padding every batch to
max_length wastes most of the compute on pad tokens, so batches are cut from rows sorted by
length and padded only to their own longest row (dynamic padding): `length_sorted_batches` for
inference, `shuffled_batches` (random, sorted within mega-batches) for training, `collate` for
both. On a GPU widths are rounded up to GPU_PAD_MULTIPLE.
"""

from __future__ import annotations

import numpy as np
import torch

# On a GPU, batch widths are rounded up to a multiple of 64 tokens: matmul shapes stay
# tensor-core friendly, and the per-shape work (cuDNN attention plans, flash-attn-4 / Triton JIT
# kernels, torch.compile graphs) sees at most max_length / 64 widths (16 at 1024). On a CPU
# padding only costs: rows are padded to the batch's longest.
GPU_PAD_MULTIPLE = 64


def pad_multiple_for(device: torch.device) -> int:
    """The multiple that batch widths are rounded up to on `device`: GPU_PAD_MULTIPLE on a GPU, else 1."""
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


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
            pad_multiple: int = 1, mask_padding: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence rounded up to `pad_multiple` (or to `pad_to`), with the mask
    (all ones with `mask_padding=False`: see `masks_padding`).

    run_inference passes `pad_multiple_for(device)`: GPU_PAD_MULTIPLE on a GPU (see there), 1 on a CPU.
    """
    width = pad_to or -(-max(len(s) for s in sequences) // pad_multiple) * pad_multiple
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long) if mask_padding else torch.ones_like(ids)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def masks_padding(model) -> bool:
    """False for eager attention with a sliding window (Gemma2 on a CPU or T4): there a pad position
    more than a window past its row's last token has no key left to attend to, its softmax is nan,
    and the next layer's 0 x nan carries it into the real tokens (seen: tiny Gemma2, rows 10 and
    130 tokens in one batch). With right padding and causal attention no real token attends to a
    later pad position, so leaving the pads unmasked gives the real tokens the same mask, bit for
    bit, and the pads something to attend to. Classifiers pool the last non-pad token by input id."""
    config = model.config
    return not (getattr(config, "sliding_window", None) and config._attn_implementation == "eager")


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on `device`; other values (a packed row's max_length, a Python int: no host
    sync) as they are. To a GPU through pinned memory: a copy from it is queued on the stream like a
    kernel and the host goes on launching; from pageable memory CUDA may stage the copy
    synchronously with the host (and a blocking `.to()` waits for the stream)."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) and v.device.type == "cpu"
                else v for k, v in batch.items()}
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def synchronize(*devices: torch.device) -> None:
    """Wait for every GPU among `devices` (each once) to finish its queued work."""
    for device in set(devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def padded_shape(lengths: np.ndarray, pad_to: int | None, pad_multiple: int) -> tuple[int, int]:
    """(rows, width) of the batch `collate` makes from rows of these lengths."""
    return len(lengths), pad_to or -(-int(lengths.max()) // pad_multiple) * pad_multiple
