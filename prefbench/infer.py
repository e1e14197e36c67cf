"""Inference: the timed predict loop, and the one entry point of the evaluate and predict stages.

`run_inference` is what the evaluate and predict stages run, for either kind of model (through
`prefbench.config.by_kind`: the LLMs here, `LLMRunner`; the scikit-learn baseline in
`prefbench.tfidf.Runner`): load the model (timed on its own), encode each view of the rows
(untimed, as tokenising is a stage of its own), then the timed predict loop (`predict_sharded`
on length-sorted, dynamically padded batches from prefbench.batching, or prefbench.packing's
packed loop). `evaluate_split` and `predict_rows` turn its result into metrics/eval.json and
metrics/predict.json.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import transformers

from prefbench import timing
from prefbench.batching import (collate, length_sorted_batches, masks_padding, pad_multiple_for, padded_shape,
                                synchronize, to_device)
from prefbench.config import ModelParams, Params, ParamsError, by_kind
from prefbench.data import deal_round_robin
from prefbench.device_errors import check_finite, oom_guard
from prefbench.metrics import accuracy, device_name, log_loss, peak_memory_gb, prior_log_loss, softmax
from prefbench.models import adapter_seed, load_copies, load_tokenizer, pick_devices
from prefbench.packing import predict_packed, resolve_packing
from prefbench.progress import progress
from prefbench.tokenize import encode_rows, read_tokens


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
        mask_padding = masks_padding(model)  # once per worker, not per batch
        with torch.inference_mode():  # thread-local: set inside the worker
            for idx in batches:
                batch = collate([sequences[i] for i in idx], pad_token_id, pad_to, pad_multiple, mask_padding)
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

    # CPU: a fixed thread count and the median of several timed passes (prefbench.timing)
    passes = timing.passes_for(devices)
    with timing.fixed_threads(devices) as threads:
        start = time.perf_counter()
        for k in range(len(models)):  # one copy at a time: the first batches compile (torch.compile, flex)
            work(k, warmup_plan(plans[k], lengths, warmup_batches, warmup_shapes, pad_to, pad_multiple))
        synchronize(*devices)
        warmup_seconds = time.perf_counter() - start
        with progress(total=passes * sum(len(p) for p in plans), desc="predict", unit="batch") as bar:
            def one_pass() -> int:
                padded = run_all(bar)
                synchronize(*devices)
                return padded
            padded_tokens, seconds, noise = timing.timed_passes(one_pass, passes)
    return {"logits": logits, "seconds": seconds, "tokens": int(lengths.sum()), "padded_tokens": padded_tokens,
            "devices": len(models), "warmup_seconds": warmup_seconds,
            "threads": threads, "timing_passes": passes, "timing_noise": noise,
            "batch_shapes": len({padded_shape(lengths[b], pad_to, pad_multiple) for p in plans for b in p})}


# ---------------------------------------------------------------- the entry point of evaluate and predict

# What the rows to predict are: parsed test rows (a DataFrame in the competition's columns, encoded
# after the model loads, since encoding needs its tokenizer or featuriser), or one split of the
# tokenize stage's cache, as (cache folder, split name).
Rows = pd.DataFrame | tuple[Path, str]
SWAP_BACK = [1, 0, 2]  # a swapped view's columns (b, a, tie) back to (a, b, tie)


class Encoded(NamedTuple):
    """One view of the rows, ready for a runner's predict (a runner's encode returns these fields)."""
    ids: list[str]
    labels: np.ndarray | None  # the cache's labels; None for test rows
    x: object  # token-id arrays (LLMs) or a CSR feature matrix (tfidf)
    tokens: int  # tokens in all rows (tfidf: words), for tokens_per_second


@dataclass
class Inference:
    """What run_inference returns: probabilities in input order and what they cost."""
    ids: list[str]
    labels: np.ndarray | None
    probs: np.ndarray  # (rows, 3); with swap TTA the mean of both views
    seconds: float  # the timed predict loops (all devices, wall time), summed over views
    tokens: int  # summed over views
    padded_tokens: int  # tokens computed, padding included, summed over views
    warmup_seconds: float  # untimed warm-up batches; torch.compile compiles here
    load_seconds: float  # loading the model (all copies), on its own
    batch_shapes: int  # distinct padded (rows, width) batch shapes (the most of any view)
    peak_memory_gb: float
    # dtype, attn_implementation, kernels, lora_merged, compiled, quantization, weights, params_*,
    # max_length, device (its name) and devices (how many)
    info: dict
    featurise_seconds: float | None = None  # tfidf on test rows: featurising them (untimed above)
    # threads (torch's; fixed on the CPU), timing_passes (median taken), timing_noise: prefbench.timing
    timing: dict = field(default_factory=dict)


class LLMRunner:
    """run_inference's LLMs: one base + adapter copy per device (`<stage>.devices`), batches
    length-sorted, dealt to the devices and padded as `pad_multiple_for` says."""

    reports_featurising = False  # tokenising is a stage of its own, untimed as in evaluate

    def __init__(self, params: Params, stage: str, adapter: str | Path):
        self.params, self.cfg, self.section, self.adapter = params, params.selected, getattr(params, stage), adapter
        # A random-init base is the one the adapter was trained on only when built from its seed.
        self.seed = adapter_seed(adapter)
        transformers.set_seed(self.seed)
        self.devices = pick_devices(self.section.devices, f"{stage}.devices")
        self.tok = load_tokenizer(self.cfg.pretrained)

    def load(self) -> None:
        self.models, info = load_copies(self.cfg, self.adapter, self.tok.pad_token_id, self.devices, seed=self.seed)
        self.packed = packs(self.cfg, info["attn_implementation"], self.params.model)
        self.info = {**info, "quantization": self.cfg.quantization, "max_length": self.cfg.max_length,
                     "device": device_name(self.devices[0]), "devices": len(self.devices), "packed": self.packed}

    def encode(self, rows: Rows, swap: bool) -> tuple:
        """Encoded's fields: ids, labels (None for test rows), token-id arrays, tokens."""
        if isinstance(rows, pd.DataFrame):
            first, second = ("response_b", "response_a") if swap else ("response_a", "response_b")
            seqs, _ = encode_rows(self.tok, rows["prompt"].tolist(), rows[first].tolist(), rows[second].tolist(),
                                  self.cfg.max_length, self.params.tokenize.prompt_share,
                                  key=f"models.{self.params.model}.max_length")
            seqs = [np.asarray(s) for s in seqs]
            return rows["id"].tolist(), None, seqs, sum(len(s) for s in seqs)
        if swap:
            raise ValueError("swap TTA needs the rows' text: pass a DataFrame, not the token cache")
        ids, labels, seqs = read_tokens(*rows)
        return ids, labels, seqs, sum(len(s) for s in seqs)

    def predict(self, enc: Encoded) -> dict:
        if self.packed:
            result = predict_packed(self.models, enc.x, self.cfg.token_budget, self.tok.pad_token_id,
                                    self.devices, warmup=self.section.warmup_batches > 0 or self.section.warmup_shapes,
                                    name=self.params.model)
            return {**result, "batch_shapes": result["pack_shapes"]}
        return predict_sharded(self.models, self.devices, enc.x, self.cfg.eval_batch_size, self.tok.pad_token_id,
                               warmup_batches=self.section.warmup_batches, warmup_shapes=self.section.warmup_shapes,
                               pad_multiple=pad_multiple_for(self.devices[0]), cfg=self.cfg, name=self.params.model)


def packs(cfg: ModelParams, attn_implementation: str, name: str) -> bool:
    """Whether evaluate/predict pack rows (prefbench.packing; one copy per device, packs dealt to
    them) or pad batches: `models.<name>.packing` resolved for the attention that loaded. Packed
    forwards run uncompiled: `auto` pads a compiled model, `packed` says what to change."""
    key = f"models.{name}.packing"
    packed = resolve_packing(cfg.packing, attn_implementation, key)
    if cfg.packing == "auto":
        return packed and not cfg.compile
    if packed and cfg.compile:
        raise ParamsError(f"{key}: packed inference runs uncompiled; set models.{name}.compile to false, "
                          f"or {key} to padded")
    return packed


def tfidf_runner(params: Params, stage: str, adapter: str | Path):
    from prefbench import tfidf  # here, not at the top: LLM runs never import scikit-learn
    return tfidf.Runner(params, stage, adapter)


def run_inference(params: Params, stage: str, adapter: str | Path, rows: Rows, swap_tta: bool = False) -> Inference:
    """Probabilities for `rows` from the selected model (`params.model`, either kind) and the
    adapter (tfidf: the fitted classifier), with the warm-up and devices of params section `stage`
    ("evaluate" or "predict"). swap_tta: also predict with responses A and B exchanged and average
    (test rows only; twice the time).

    Timed apart: loading (the devices synchronised at both ends), encoding each view (tfidf's
    featurising reported as featurise_seconds), and the predict loop proper (see predict_sharded).
    Non-finite logits raise NonFiniteLogitsError, running out of device memory BatchOutOfMemoryError."""
    runner = by_kind(params.selected, llm=LLMRunner, tfidf=tfidf_runner)(params, stage, adapter)
    synchronize(*runner.devices)
    start = time.perf_counter()
    runner.load()
    synchronize(*runner.devices)
    load_seconds = time.perf_counter() - start
    probs, first, seconds, tokens, padded, warmup, shapes, featurise = [], None, 0.0, 0, 0, 0.0, 0, 0.0
    for swap in (False, True) if swap_tta else (False,):
        start = time.perf_counter()
        enc = Encoded(*runner.encode(rows, swap))
        featurise += time.perf_counter() - start
        first = enc if first is None else first
        result = runner.predict(enc)
        check_finite(result["logits"], runner.info["dtype"], params.model)
        p = softmax(result["logits"])
        probs.append(p[:, SWAP_BACK] if swap else p)
        seconds += result["seconds"]
        warmup += result["warmup_seconds"]
        tokens += result["tokens"]
        padded += result["padded_tokens"]
        shapes = max(shapes, result["batch_shapes"])
        timing_info = {k: result.get(k, default) for k, default in timing.defaults().items()}
    return Inference(first.ids, first.labels, probs[0] if len(probs) == 1 else np.mean(probs, axis=0), seconds,
                     tokens, padded, warmup, load_seconds, shapes, peak_memory_gb(*runner.devices), runner.info,
                     featurise if runner.reports_featurising and isinstance(rows, pd.DataFrame) else None,
                     timing_info)


PARAM_COUNTS = ("params_total", "params_embedding", "params_non_embedding", "params_trainable")
# The model's description, as eval.json ends
DESCRIPTION = ("device", "devices", "dtype", "attn_implementation", "kernels", "lora_merged", "compiled",
               "packed", "quantization", "weights")
# Keys eval.json and predict.json carry only where they apply: why `kernels: auto` kept the plain
# modules for a family Liger has no kernels for (prefbench.models.kernels_note)
OPTIONAL = ("kernels_reason",)
# metrics/speed_accuracy.json's fields (a DVC plot: one point per revision)
SPEED_ACCURACY = ("model", "seconds_per_sample", "log_loss", "accuracy", "weights", "device", "devices", "dtype",
                  "attn_implementation", "quantization", "max_length")


def split_labels(params: Params, tokens: str | Path, split: str) -> np.ndarray:
    """The labels of one split of the token cache (either kind's)."""
    def tfidf_labels():
        from prefbench import tfidf  # here, not at the top: LLM runs never import scikit-learn
        return tfidf.read_features(Path(tokens) / f"{split}.safetensors")[1]
    return by_kind(params.selected, llm=lambda: read_tokens(tokens, split)[1], tfidf=tfidf_labels)()


def evaluate_split(params: Params, tokens: str | Path, adapter: str | Path) -> tuple[Inference, dict]:
    """The evaluate stage: the validation split of the token cache, timed; (result, eval.json's metrics)."""
    inf = run_inference(params, "evaluate", adapter, (Path(tokens), "val"))
    return inf, evaluation_metrics(params, inf, split_labels(params, tokens, "train"))


def evaluation_metrics(params: Params, inf: Inference, train_labels: np.ndarray) -> dict:
    """metrics/eval.json: scores against the labels, speed, and what ran (either kind, the same keys)."""
    n, seconds, info = len(inf.ids), inf.seconds, inf.info
    return {
        "model": params.model,
        "log_loss": log_loss(inf.labels, inf.probs),
        "log_loss_prior": prior_log_loss(train_labels, inf.labels),
        "accuracy": accuracy(inf.labels, inf.probs),
        "seconds_per_sample": seconds / n,  # wall time over all rows, whatever the devices
        "device_seconds_per_sample": seconds * info["devices"] / n,  # what a sample costs in GPU time
        "samples_per_second": n / seconds,
        "tokens_per_second": inf.tokens / seconds,  # tfidf: words
        "padding_share": 1 - inf.tokens / inf.padded_tokens if inf.padded_tokens else 0.0,
        "predict_seconds": seconds,
        "load_seconds": inf.load_seconds,
        "warmup_seconds": inf.warmup_seconds,  # torch.compile's compile happens here
        "batch_shapes": inf.batch_shapes,  # distinct padded (rows, width) shapes, each warmed untimed
        "peak_memory_gb": inf.peak_memory_gb,
        **inf.timing,  # threads, timing_passes, timing_noise
        **{k: info[k] for k in PARAM_COUNTS},
        "n_samples": n,
        "batch_size": params.selected.eval_batch_size,
        "max_length": info["max_length"],
        **{k: info[k] for k in DESCRIPTION},  # attn_implementation and kernels: `auto` resolved
        **{k: info[k] for k in OPTIONAL if k in info},
    }


def predict_rows(params: Params, df: pd.DataFrame, adapter: str | Path, repaired: dict) -> tuple[Inference, dict]:
    """The predict stage: parsed test rows (with predict.swap_tta), timed; (result, predict.json's
    metrics). `repaired`: what read_test_csv repaired, by kind of repair."""
    inf = run_inference(params, "predict", adapter, df, swap_tta=params.predict.swap_tta)
    return inf, prediction_metrics(params, inf, repaired)


def prediction_metrics(params: Params, inf: Inference, repaired: dict) -> dict:
    """metrics/predict.json: speed, the projected hours for the hidden test set against the Kaggle
    limit (loading and warm-up count against it), and what ran."""
    pp, n, info = params.predict, len(inf.ids), inf.info
    per_sample = inf.seconds / n
    hours = per_sample * pp.kaggle_rows / 3600
    return {
        "model": params.model, "n_samples": n, "swap_tta": pp.swap_tta, "seconds_per_sample": per_sample,
        "tokens_per_second": inf.tokens / inf.seconds, "load_seconds": inf.load_seconds,
        "warmup_seconds": inf.warmup_seconds, "kaggle_rows": pp.kaggle_rows, "projected_hours": hours,
        "kaggle_hours": pp.kaggle_hours,
        "fits_kaggle_limit": hours + (inf.load_seconds + inf.warmup_seconds) / 3600 < pp.kaggle_hours,
        "peak_memory_gb": inf.peak_memory_gb, "device": info["device"], "devices": info["devices"],
        **inf.timing, "repaired": dict(repaired),
        **{k: info[k] for k in ("dtype", "attn_implementation", "kernels", "lora_merged", "weights", "compiled",
                                "packed")},
        **{k: info[k] for k in OPTIONAL if k in info},
        **({"featurise_seconds": inf.featurise_seconds} if inf.featurise_seconds is not None else {}),
    }
