"""Stage `predict`: a Kaggle submission from a test.csv, timed, with optional swap augmentation.

Usage: python -m stages.predict --params params.yaml --test-csv data/sample/test.csv \
           --adapter models/adapter --out data/submission.csv --metrics metrics/predict.json
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization, max_length,
eval_batch_size, compile, kernels}, tokenize.prompt_share (test rows are tokenised as the tokenize
stage tokenised the training rows), predict.{swap_tta, kaggle_rows, kaggle_hours, warmup_batches,
warmup_shapes, devices} (predict.test_csv arrives as --test-csv); the random-init seed comes from
the adapter (`kind: tfidf`: models.<model>.eval_batch_size; prefbench.tfidf, the same submission
and metrics).
Writes `id, winner_model_a, winner_model_b, winner_tie` in the input's row order (probabilities
sum to 1) and prints the projected hours for the hidden test set against the Kaggle limit.
Swap test-time augmentation predicts each row a second time with responses A and B exchanged
and averages (the swapped prediction's a/b columns exchanged back): twice the time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import transformers

from prefbench import tfidf
from prefbench.cli import run
from prefbench.config import Params, by_kind, load_params
from prefbench.data import LABEL_COLUMNS, read_test_csv
from prefbench.infer import (BatchOutOfMemoryError, NonFiniteLogitsError, check_finite, predict_sharded, softmax,
                             synchronize)
from prefbench.metrics import device_name, peak_memory_gb, round_floats, write_json
from prefbench.models import adapter_seed, load_copies, load_tokenizer, pick_devices
from prefbench.tokenize import encode_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--test-csv", required=True, help="competition-format test.csv")
    parser.add_argument("--adapter", required=True, help="adapter folder (stage train)")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--metrics", required=True, help="timing metrics JSON")
    args = parser.parse_args()
    params = load_params(args.params)
    pp = params.predict

    df, report = read_test_csv(args.test_csv)
    prob, timing = by_kind(params.selected, llm=predict_llm, tfidf=tfidf.predict)(params, df, args.adapter)
    write_submission(args.out, df["id"].tolist(), prob)

    n, seconds = len(df), timing["seconds"]
    per_sample = seconds / n
    hours = per_sample * pp.kaggle_rows / 3600
    load_seconds, warmup_seconds = timing["load_seconds"], timing["warmup_seconds"]
    metrics = {
        "model": params.model, "n_samples": n, "swap_tta": pp.swap_tta, "seconds_per_sample": per_sample,
        "tokens_per_second": timing["tokens"] / seconds, "load_seconds": load_seconds, "warmup_seconds": warmup_seconds,
        "kaggle_rows": pp.kaggle_rows, "projected_hours": hours, "kaggle_hours": pp.kaggle_hours,
        "fits_kaggle_limit": hours + (load_seconds + warmup_seconds) / 3600 < pp.kaggle_hours,
        "peak_memory_gb": timing["peak_memory_gb"], "device": timing["device"], "devices": timing["devices"],
        "repaired": dict(report.repaired),
        **{k: timing[k] for k in ("dtype", "attn_implementation", "kernels", "lora_merged", "weights", "compiled")
           if k in timing},
        **{k: timing[k] for k in ("featurise_seconds",) if k in timing},  # tfidf: featurising (untimed above)
    }
    write_json(args.metrics, round_floats(metrics))
    print(f"predict: {n} rows -> {args.out} ({'with' if pp.swap_tta else 'no'} swap TTA), "
          f"{per_sample:.5f} s/sample on {metrics['device']}; {pp.kaggle_rows:,} rows would take "
          f"{hours:.2f} h here (Kaggle limit {pp.kaggle_hours} h: {'fits' if metrics['fits_kaggle_limit'] else 'does NOT fit'})")


def predict_llm(params: Params, df: pd.DataFrame, adapter: str) -> tuple[np.ndarray, dict]:
    """Base + adapter on the parsed test rows (twice with swap TTA): (probabilities, timing)."""
    cfg, pp = params.selected, params.predict
    seed = adapter_seed(adapter)
    transformers.set_seed(seed)
    devices = pick_devices(pp.devices, "predict.devices")
    device = devices[0]
    tok = load_tokenizer(cfg.pretrained)
    start = time.perf_counter()
    models, info = load_copies(cfg, adapter, tok.pad_token_id, devices, seed=seed)
    synchronize(*devices)
    load_seconds = time.perf_counter() - start

    views = [("response_a", "response_b")] + ([("response_b", "response_a")] if pp.swap_tta else [])
    probs, seconds, tokens, warmup_seconds = [], 0.0, 0, 0.0
    for first, second in views:
        seqs, _ = encode_rows(tok, df["prompt"].tolist(), df[first].tolist(), df[second].tolist(),
                              cfg.max_length, params.tokenize.prompt_share)
        try:
            result = predict_sharded(models, devices, [np.asarray(s) for s in seqs], cfg.eval_batch_size,
                                     tok.pad_token_id, warmup_batches=pp.warmup_batches,
                                     warmup_shapes=pp.warmup_shapes,
                                     pad_multiple=64 if device.type == "cuda" else 1, cfg=cfg, name=params.model)
            check_finite(result["logits"], info["dtype"], params.model)
        except (BatchOutOfMemoryError, NonFiniteLogitsError) as err:
            sys.exit(f"predict: error: {err}")
        p = softmax(result["logits"])
        probs.append(p if first == "response_a" else p[:, [1, 0, 2]])  # swapped: a<->b back
        seconds += result["seconds"]
        warmup_seconds += result["warmup_seconds"]  # torch.compile compiles here: it counts against the limit
        tokens += result["tokens"]
    timing = {"seconds": seconds, "tokens": tokens, "load_seconds": load_seconds, "warmup_seconds": warmup_seconds,
              "peak_memory_gb": peak_memory_gb(*devices), "device": device_name(device), "devices": len(devices),
              **{k: info[k] for k in ("dtype", "attn_implementation", "kernels", "lora_merged", "weights", "compiled")}}
    return np.mean(probs, axis=0), timing


def write_submission(path: str, ids: list[str], prob: np.ndarray) -> None:
    prob = prob / prob.sum(axis=1, keepdims=True)
    sub = pd.DataFrame({"id": ids, **{c: prob[:, k] for k, c in enumerate(LABEL_COLUMNS)}})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sub.to_csv(path, index=False, float_format="%.6f")


if __name__ == "__main__":
    run(main)
