"""Padding-free (packed) forward passes, for inference and training: rows laid end to end in one sequence.

Why: a padded batch computes its pad tokens too. On the real arena rows at max_length 1024,
length-sorted batches of 16 padded to a multiple of 64 still compute pad tokens
(`padding_share` in benchmarks/results), and each forward's size follows the batch's lengths. A
packed forward computes real tokens only, about `token_budget` of them each time.

How (transformers 5.x): one row of shape (1, T) holding several sequences back to back,
`position_ids` restarting at 0 for each sequence, no attention mask, no cache:
- flash_attention_2 / 3 / 4: the varlen kernel, each sequence attending to itself only. We pass
  its `cu_seq_lens_q/k` and `max_length_q/k` (transformers' FlashAttentionKwargs) rather than let
  every layer infer them from `position_ids`: that inference reads values back from the GPU (a
  host sync per layer). A sliding window no packed sequence can reach is turned off for the
  forward (`unreachable_window_off`), so the kernel is the padded path's causal one.
- sdpa, eager: transformers' masking_utils detects the restarts in `position_ids`
  (`find_packed_sequence_indices`) and builds a block-diagonal causal mask, sliding window per
  sequence on Gemma2's local layers. That mask is T x T: correct (the CPU tests run it), not fast.
Pooling: the stock `*ForSequenceClassification` (transformers' GenericForSequenceClassification)
pools one token per row, the rightmost that is not the pad token, after the score head. Here the
base model (`model.model`) gives the hidden states and the score head runs on each sequence's
pooled token only. Gemma2's `final_logit_softcapping` belongs to its causal-LM head; the
classifier does not apply it, so neither do we (its attention softcap runs inside the attention
layers, packed or not).

Training packs too (prefbench.train, `models.<model>.packing`): each process's share of a batch is
one packed row through `PackedClassifier`, the module that accelerate wraps (DDP, autocast) in the
peft model's place, with gradients.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from prefbench.batching import synchronize
from prefbench.config import ParamsError
from prefbench.device_errors import BatchOutOfMemoryError
from prefbench.progress import progress

# attn_implementation values whose kernel takes cu_seqlens (varlen): packing pays only with these.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


class PackOutOfMemoryError(BatchOutOfMemoryError):
    """The device ran out of memory on one pack; the message says which setting to lower. A
    BatchOutOfMemoryError: the stages end on it with that message, not a traceback."""


def resolve_packing(name: str, attn_implementation: str, key: str = "models.<model>.packing") -> bool:
    """`auto`: pack where the attention is a varlen kernel (flash_attention_*), else pad. `packed`
    packs with any attention (sdpa and eager build a T x T block-diagonal mask: correct, quadratic
    in memory), `padded` never packs. (Not yes/no or on/off: YAML would read those as booleans.)"""
    if name == "auto":
        return attn_implementation in VARLEN_ATTENTION
    if name in ("packed", "padded"):
        return name == "packed"
    raise ParamsError(f"{key} must be one of auto, packed, padded; got {name!r}")


def pack_rows(lengths, token_budget: int) -> list[np.ndarray]:
    """Row indices per pack: rows sorted by length, longest first, each pack filled in that order
    until the next row would take it past `token_budget` tokens (next-fit decreasing). Packs hold
    rows of similar length; a pack wastes less than one row of its budget, so at most
    max_length / token_budget of it. A row longer than the budget gets a pack of its own."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return next_fit(np.argsort(-lengths, kind="stable"), lengths, token_budget)


def next_fit(order, lengths, token_budget: int) -> list[np.ndarray]:
    """Row indices cut into groups in the given `order`: each group takes rows until the next would
    take it past `token_budget` tokens; a row longer than the budget is a group of its own. Packs
    (`pack_rows`: longest first) and token-budget training batches (prefbench.train_batches: shuffled)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if isinstance(token_budget, bool) or not isinstance(token_budget, (int, np.integer)) or token_budget < 1:
        raise ValueError(f"token_budget must be a positive number of tokens, got {token_budget!r}")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"row {int(np.argmin(lengths))} has no tokens: nothing to pool on")
    groups, current, used = [], [], 0
    for i in np.asarray(order, dtype=np.int64).tolist():
        n = int(lengths[i])
        if current and used + n > token_budget:
            groups.append(np.array(current))
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(np.array(current))
    return groups


def pooled_index(seq: np.ndarray, pad_token_id: int | None) -> int:
    """The token the stock classifier pools on: the rightmost that is not the pad token (0 if all are)."""
    if pad_token_id is None:
        return len(seq) - 1
    real = np.flatnonzero(np.asarray(seq) != pad_token_id)
    return int(real[-1]) if len(real) else 0


def collate_packed(sequences: list[np.ndarray], pad_token_id: int | None) -> dict:
    """One packed row: input_ids and position_ids (1, T), the flat index of each sequence's pooled
    token, and the varlen-attention kwargs (cu_seq_lens: int32 offsets, n + 1 of them;
    max_length: the longest sequence, a Python int so the kernel call needs no host sync)."""
    lens = [len(s) for s in sequences]
    starts = np.concatenate([[0], np.cumsum(lens)])
    ids = torch.as_tensor(np.concatenate(sequences), dtype=torch.long)[None]
    pos = torch.as_tensor(np.concatenate([np.arange(n) for n in lens]), dtype=torch.long)[None]
    pooled = torch.as_tensor([starts[k] + pooled_index(s, pad_token_id) for k, s in enumerate(sequences)],
                             dtype=torch.long)
    cu = torch.as_tensor(starts, dtype=torch.int32)
    return {"input_ids": ids, "position_ids": pos, "pooled": pooled, "cu_seq_lens": cu, "max_length": max(lens)}


def split_classifier(model):
    """(base model, score head) of a `*ForSequenceClassification`, also inside a peft wrapper (an
    unmerged adapter: LoRA layers live in the base model, the trained head copy in `score`)."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise ValueError("packing runs an uncompiled model (its pooling bypasses the compiled forward): "
                         "set models.<model>.compile: false or models.<model>.packing: false")
    clf = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(clf, "base_model_prefix", "model")
    if not hasattr(clf, "score") or not hasattr(clf, prefix):
        raise ValueError(f"packing needs a *ForSequenceClassification with a base model and a `score` head, "
                         f"got {type(clf).__name__}")
    return getattr(clf, prefix), clf.score


@contextmanager
def unreachable_window_off(body, longest: int):
    """Sliding-window attention layers (Gemma2's, window 4096) without their window while no packed
    sequence is longer than it (`longest` <= window: no query has more keys than the window, so it
    cannot bind and this is exact).

    Why: transformers hands flash-attention the window when the packed row (T tokens) is longer than
    it, though each sequence attends only to itself. flash-attn-4 then runs its local kernel instead
    of the causal one the padded path runs: on Gemma2-9B, bf16, its logits differed from the padded
    path's by 2.2% (relative L2, 256 rows) and from fp32 eager by 2.8% against 2.5% (16 rows); with
    the window off, 0.2% and 2.5%, same speed (measured on one H100: benchmarks/results/packed-h100.json at commit 29c075c)."""
    saved = [(m, m.sliding_window) for m in body.modules() if type(m).__name__.endswith("Attention")
             and isinstance(getattr(m, "sliding_window", None), int) and m.sliding_window >= longest]
    for m, _ in saved:
        m.sliding_window = None
    try:
        yield
    finally:
        for m, window in saved:
            m.sliding_window = window


def forward_packed(body, head, pack: dict, device: torch.device, varlen: bool, window_off: bool = True) -> torch.Tensor:
    """Score-head logits (n, labels) of one packed row's sequences. `window_off`: the sliding window
    off for this forward where no sequence of the pack reaches it (`unreachable_window_off`; training
    turns it off for the whole run instead: a checkpointed layer recomputes its forward in backward)."""
    kwargs = {}
    if varlen:
        cu = pack["cu_seq_lens"].to(device, non_blocking=True)
        kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": pack["max_length"],
                  "max_length_k": pack["max_length"]}
    # use_cache=False: with a cache, transformers skips the packed-sequence detection (sdpa, eager).
    with unreachable_window_off(body, pack["max_length"]) if varlen and window_off else nullcontext():
        hidden = body(input_ids=pack["input_ids"].to(device, non_blocking=True),
                      position_ids=pack["position_ids"].to(device, non_blocking=True),
                      attention_mask=None, use_cache=False, **kwargs).last_hidden_state
    return head(hidden[0, pack["pooled"].to(device, non_blocking=True)])


class PackedClassifier(torch.nn.Module):
    """A `*ForSequenceClassification` (or its peft wrapper) on packed rows, with gradients: what
    packed training hands accelerate in the model's place. DDP syncs gradients only for forwards
    through the module it wraps, and accelerate's autocast wraps that module's forward, so this
    forward, not the peft model's, is the one they must see. The model is a submodule: its
    parameters are this module's (optimizer, DDP), trained in place.

    forward(**collate_packed(rows), labels=...) -> SequenceClassifierOutput: the pooled tokens'
    logits (n, labels), and with labels their mean cross-entropy, as the stock classifier's loss."""

    def __init__(self, model):
        super().__init__()
        split_classifier(model)  # fails now, not at the first step, on a model packing cannot run
        self.classifier = model
        self.varlen = model.config._attn_implementation in VARLEN_ATTENTION
        # What accelerate's prepare reads to leave a bitsandbytes base where it was loaded (no .to())
        for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "hf_device_map"):
            if getattr(model, attr, None):
                setattr(self, attr, getattr(model, attr))

    def forward(self, input_ids, position_ids, pooled, cu_seq_lens, max_length: int, labels=None):
        body, head = split_classifier(self.classifier)
        pack = {"input_ids": input_ids, "position_ids": position_ids, "pooled": pooled, "cu_seq_lens": cu_seq_lens,
                "max_length": max_length}
        logits = forward_packed(body, head, pack, input_ids.device, self.varlen, window_off=False)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def warmup_packs(totals: list[int]) -> list[int]:
    """Indices of the untimed packs: the largest and the smallest, and one with a token count
    divisible by 16 and one not (Triton, hence Liger's kernels, specialises integer arguments such
    as the sequence length on divisibility by 16: a kernel per class). The rest of the pack sizes
    reuse those kernels: cuBLAS and flash-attn-4 take the length at run time."""
    if not totals:
        return []
    picks = [int(np.argmax(totals)), int(np.argmin(totals))]
    for divisible in (True, False):
        picks += [next((k for k, t in enumerate(totals) if (t % 16 == 0) == divisible), picks[0])]
    return list(dict.fromkeys(picks))


def deal_packs(totals: list[int], n: int) -> list[list[int]]:
    """Pack indices per device: the largest pack first, each to the device with the fewest tokens
    so far (ties: the lowest device), so n devices finish within about one pack of each other; each
    device's packs in ascending order."""
    loads, shares = [0] * n, [[] for _ in range(n)]
    for k in sorted(range(len(totals)), key=lambda k: (-totals[k], k)):
        d = loads.index(min(loads))
        loads[d] += totals[k]
        shares[d].append(k)
    return [sorted(share) for share in shares]


def predict_packed(models, sequences: list[np.ndarray], token_budget: int, pad_token_id: int | None,
                   devices, warmup: bool = True, name: str = "<model>") -> dict:
    """Logits for every sequence (input order; float32, float64 from a float64 model) from packed
    forwards of about `token_budget` tokens. `models` / `devices`: one model and its device, or a
    list of copies, one per device: the packs are dealt to them (`deal_packs`), each copy a thread
    on its device (CUDA kernels release the GIL, so GPUs run side by side). A pack's logits do not
    depend on which copy ran it.

    Timed like prefbench.infer.predict_sharded: each copy's `warmup_packs` untimed first, one copy
    after the other (their rows are predicted again in the timed loop), then the loop over all
    packs (host-to-device copies included), the devices synchronised at both ends: `seconds` is
    wall time. Counts: `tokens` real tokens (all that is computed: no padding), `packs` forward
    passes, `pack_shapes` distinct packed lengths, `rows_over_budget` rows longer than the budget
    (each packed alone), `fill` tokens / (packs x budget)."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    devices = list(devices) if isinstance(devices, (list, tuple)) else [devices]
    if len(models) != len(devices):
        raise ValueError(f"{len(models)} model copies for {len(devices)} devices")
    varlen = models[0].config._attn_implementation in VARLEN_ATTENTION
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    plan = pack_rows(lengths, token_budget)
    packs = [collate_packed([sequences[i] for i in idx], pad_token_id) for idx in plan]
    totals = [int(lengths[idx].sum()) for idx in plan]
    shares = deal_packs(totals, len(models))
    # float32 as prefbench.infer.predict returns; float64 from a float64 model (the CPU default), whose
    # digits past float32 are what the tests compare. Decided before the threads write into it.
    wide = any(p.dtype == torch.float64 for p in models[0].parameters())
    logits = np.zeros((len(sequences), models[0].config.num_labels), dtype=np.float64 if wide else np.float32)

    def run(d: int, order: list[int], bar=None) -> None:
        device = devices[d]
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # this thread's current device (streams, allocator)
        models[d].eval()
        body, head = split_classifier(models[d])
        with torch.inference_mode():  # thread-local: set inside the worker
            for k in order:
                try:
                    out = forward_packed(body, head, packs[k], device, varlen)
                except torch.OutOfMemoryError as err:
                    raise PackOutOfMemoryError(
                        f"out of memory on a pack of {len(plan[k])} rows, {totals[k]} tokens (token_budget "
                        f"{token_budget}, longest row {int(lengths[plan[k]].max())}): lower "
                        f"models.{name}.token_budget or models.{name}.max_length") from err
                logits[plan[k]] = out.to(torch.float64 if wide else torch.float32).cpu().numpy()
                if bar is not None:
                    bar.update(1)

    start = time.perf_counter()
    if warmup:
        for d, share in enumerate(shares):  # one copy at a time, as predict_sharded warms up
            run(d, [share[i] for i in warmup_packs([totals[k] for k in share])])
    synchronize(*devices)
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with progress(total=len(packs), desc="predict", unit="pack") as bar:
        if len(models) == 1:
            run(0, shares[0], bar)
        else:
            with ThreadPoolExecutor(len(models)) as pool:
                list(pool.map(lambda d: run(d, shares[d], bar), range(len(models))))
        synchronize(*devices)
    seconds = time.perf_counter() - start
    return {"logits": logits, "seconds": seconds, "warmup_seconds": warmup_seconds,
            "tokens": int(lengths.sum()), "padded_tokens": int(lengths.sum()), "packs": len(packs),
            "pack_shapes": len(set(totals)), "rows_over_budget": int((lengths > token_budget).sum()),
            "token_budget": token_budget, "devices": len(models),
            "fill": float(lengths.sum() / (len(packs) * token_budget)) if packs else 0.0}
