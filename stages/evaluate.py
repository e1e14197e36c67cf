"""Stage `evaluate`: timed inference of base + adapter on the validation split.

Usage: python -m stages.evaluate --params params.yaml --tokens data/tokens --adapter models/adapter \
           --metrics metrics/eval.json --predictions metrics/predictions.csv \
           --calibration metrics/calibration.csv --speed-accuracy metrics/speed_accuracy.json
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization,
eval_batch_size, compile, kernels}, evaluate.{warmup_batches, warmup_shapes, devices}; the
random-init seed comes from the adapter (the base it was trained on)
(`kind: tfidf`: models.<model>.eval_batch_size; prefbench.tfidf, same outputs and metrics keys).
Batches are length-sorted and dynamically padded; LoRA is merged into the base (unless 4-bit);
only the predict loop is timed (model load is timed on its own, the device is synchronised,
warm-up batches, one per padded shape with evaluate.warmup_shapes, are excluded).
Non-finite logits (or running out of device memory) stop the stage with a message and exit
status 1, and no metrics are written; the outputs appear complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import transformers

from prefbench import tfidf
from prefbench.cli import run
from prefbench.config import Params, by_kind, load_params
from prefbench.data import LABEL_NAMES
from prefbench.infer import (BatchOutOfMemoryError, NonFiniteLogitsError, check_finite, predict_sharded, softmax,
                             synchronize)
from prefbench.metrics import (accuracy, calibration_rows, device_name, log_loss, peak_memory_gb, prior_log_loss,
                               round_floats, write_json)
from prefbench.models import adapter_seed, load_copies, load_tokenizer, pick_devices
from prefbench.tokenize import read_tokens
from prefbench.files import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", required=True, help="token cache folder (stage tokenize)")
    parser.add_argument("--adapter", required=True, help="adapter folder (stage train)")
    parser.add_argument("--metrics", required=True, help="evaluation metrics JSON")
    parser.add_argument("--predictions", required=True, help="per-row predictions CSV (dvc plots)")
    parser.add_argument("--calibration", required=True, help="reliability-curve CSV (dvc plots)")
    parser.add_argument("--speed-accuracy", required=True,
                        help="one-record JSON list (dvc plots diff: one speed-vs-log-loss point per revision)")
    args = parser.parse_args()
    params = load_params(args.params)
    ids, labels, probs, metrics = by_kind(params.selected, llm=evaluate_llm, tfidf=tfidf.evaluate)(
        params, args.tokens, args.adapter)
    calibration = pd.DataFrame(calibration_rows(labels, probs))
    with atomic_path(args.predictions) as path:
        write_predictions(path, ids, labels, probs)
    with atomic_path(args.calibration) as path:
        calibration.to_csv(path, index=False)
    with atomic_path(args.speed_accuracy) as path:  # DVC plots need a list of records, not eval.json's object
        write_json(path, [round_floats({k: metrics[k] for k in SPEED_ACCURACY})])
    with atomic_path(args.metrics) as path:  # last: its presence says the evaluation completed
        write_json(path, round_floats(metrics))
    print(f"evaluate: {params.model} ({metrics['weights']}) log_loss {metrics['log_loss']:.4f} "
          f"(prior {metrics['log_loss_prior']:.4f}), accuracy {metrics['accuracy']:.3f}, "
          f"{metrics['seconds_per_sample']:.5f} s/sample, {metrics['tokens_per_second']:.0f} tokens/s, "
          f"{metrics['n_samples']} rows on {metrics['device']}")


def evaluate_llm(params: Params, tokens: str, adapter: str) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Base + adapter on the cached validation tokens: (ids, labels, probabilities, metrics)."""
    cfg = params.selected

    seed = adapter_seed(adapter)
    transformers.set_seed(seed)
    devices = pick_devices(params.evaluate.devices, "evaluate.devices")
    device = devices[0]
    tok = load_tokenizer(cfg.pretrained)
    ids, labels, seqs = read_tokens(tokens, "val")
    _, train_labels, _ = read_tokens(tokens, "train")

    synchronize(device)
    start = time.perf_counter()
    models, info = load_copies(cfg, adapter, tok.pad_token_id, devices, seed=seed)
    synchronize(*devices)
    load_seconds = time.perf_counter() - start

    try:
        result = predict_sharded(models, devices, seqs, cfg.eval_batch_size, tok.pad_token_id,
                                 warmup_batches=params.evaluate.warmup_batches,
                                 warmup_shapes=params.evaluate.warmup_shapes,
                                 pad_multiple=64 if device.type == "cuda" else 1, cfg=cfg, name=params.model)
        check_finite(result["logits"], info["dtype"], params.model)
    except (BatchOutOfMemoryError, NonFiniteLogitsError) as err:
        sys.exit(f"evaluate: error: {err}")
    probs = softmax(result["logits"])
    n = len(seqs)
    metrics = {
        "model": params.model,
        "log_loss": log_loss(labels, probs),
        "log_loss_prior": prior_log_loss(train_labels, labels),
        "accuracy": accuracy(labels, probs),
        "seconds_per_sample": result["seconds"] / n,  # wall time over all rows, whatever the devices
        "device_seconds_per_sample": result["seconds"] * len(devices) / n,  # what a sample costs in GPU time
        "samples_per_second": n / result["seconds"],
        "tokens_per_second": result["tokens"] / result["seconds"],
        "padding_share": 1 - result["tokens"] / result["padded_tokens"],
        "predict_seconds": result["seconds"],
        "load_seconds": load_seconds,
        "warmup_seconds": result["warmup_seconds"],  # torch.compile's compile happens here
        "batch_shapes": result["batch_shapes"],  # distinct padded (rows, width) shapes, each warmed untimed
        "peak_memory_gb": peak_memory_gb(*devices),
        **{k: info[k] for k in ("params_total", "params_embedding", "params_non_embedding", "params_trainable")},
        "n_samples": n,
        "batch_size": cfg.eval_batch_size,
        "max_length": cfg.max_length,
        "device": device_name(device),
        "devices": len(devices),
        "dtype": info["dtype"],
        "attn_implementation": info["attn_implementation"],  # `auto` resolved
        "kernels": info["kernels"],  # `auto` resolved: liger | none
        "lora_merged": info["lora_merged"],
        "compiled": info["compiled"],
        "quantization": cfg.quantization,
        "weights": info["weights"],
    }
    return ids, labels, probs, metrics


SPEED_ACCURACY = ("model", "seconds_per_sample", "log_loss", "accuracy", "weights", "device", "devices", "dtype",
                  "attn_implementation", "quantization", "max_length")


def write_predictions(path: str, ids: list[str], labels: np.ndarray, probs: np.ndarray) -> None:
    df = pd.DataFrame({"id": ids, "actual": [LABEL_NAMES[i] for i in labels],
                       "predicted": [LABEL_NAMES[i] for i in probs.argmax(axis=1)]})
    for k, name in enumerate(LABEL_NAMES):
        df[f"p_{name}"] = probs[:, k].round(6)
    df.to_csv(path, index=False)


if __name__ == "__main__":
    run(main)
