"""Model FLOPs of a decoder classifier, for MFU (model FLOPs / time / measured peak).

Forward, per sequence of n real tokens (padding is not counted: padded work is waste):
  matmuls    2 * N_non_embedding * n        (each weight multiplies each token once; 2 = mul + add;
                                             the embedding is a lookup, no FLOPs)
  attention  sum over layers of 4 * n_heads * head_dim * sum_{i<n} min(i + 1, window)
             (QK^T and PV, 2 FLOPs each per query-key pair; causal, so query i sees i + 1 keys,
             or `window` keys on a sliding-window layer)
LoRA training step, per sequence: 4 * N_non_embedding * n (forward + gradient w.r.t. activations;
frozen base weights get no weight gradient; the adapters' own FLOPs are < 1% and left out) plus
3 x the forward attention (backward of attention is ~2x its forward). Recomputation under
gradient checkpointing is not model FLOPs: it lowers MFU, as it should.
"""

from __future__ import annotations

import numpy as np


def attention_pairs(n: int, window: int | None) -> int:
    """Causal query-key pairs in one layer for a sequence of n tokens."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def layer_windows(config) -> list[int | None]:
    """Per-layer attention window: None for full attention, the window for sliding layers.

    Gemma2 and Qwen2 configs list each layer's kind (`layer_types`; Qwen2's are all full unless
    `use_sliding_window`). Llama and Mistral configs list none: Mistral's attention takes
    `sliding_window` on every layer where it is set (v0.1: 4096; v0.3: null), Llama has none."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or (
        ["sliding_attention" if window else "full_attention"] * config.num_hidden_layers)
    return [window if t == "sliding_attention" else None for t in types]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def forward_flops(config, non_embedding_params: int, lengths) -> float:
    """Forward model FLOPs for sequences of the given real lengths."""
    per_pair = 4 * config.num_attention_heads * head_dim(config)
    windows = layer_windows(config)
    total = 0.0
    for n in np.asarray(lengths, dtype=np.int64).tolist():
        total += 2.0 * non_embedding_params * n + per_pair * sum(attention_pairs(n, w) for w in windows)
    return total


def lora_train_flops(config, non_embedding_params: int, lengths) -> float:
    """Model FLOPs of LoRA training steps over sequences of the given real lengths."""
    matmul = 2.0 * non_embedding_params * float(np.sum(lengths))
    attention = forward_flops(config, non_embedding_params, lengths) - matmul
    return 2 * matmul + 3 * attention


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    return flops / seconds / peak_flops_per_s
