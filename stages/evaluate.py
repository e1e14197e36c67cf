"""Stage `evaluate`: timed inference of base + adapter on the validation split.

Usage: python -m stages.evaluate --params params.yaml --tokens data/tokens --adapter models/adapter \
           --metrics metrics/eval.json --predictions metrics/predictions.csv \
           --calibration metrics/calibration.csv --speed-accuracy metrics/speed_accuracy.json
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization,
eval_batch_size, compile, kernels}, evaluate.{warmup_batches, warmup_shapes, devices}; the
random-init seed comes from the adapter (the base it was trained on)
(`kind: tfidf`: models.<model>.eval_batch_size; prefbench.tfidf, same outputs and metrics keys).
prefbench.infer.run_inference does the work: batches are length-sorted and dynamically padded;
LoRA is merged into the base (unless 4-bit); only the predict loop is timed (model load is timed
on its own, the device is synchronised, warm-up batches, one per padded shape with
evaluate.warmup_shapes, are excluded).
Non-finite logits (or running out of device memory) stop the stage with a message and exit
status 1, and no metrics are written; the outputs appear complete or not at all.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from prefbench.cli import run
from prefbench.config import load_params
from prefbench.data import LABEL_NAMES
from prefbench.device_errors import BatchOutOfMemoryError, NonFiniteLogitsError
from prefbench.files import atomic_path
from prefbench.infer import SPEED_ACCURACY, evaluate_split
from prefbench.metrics import calibration_rows, round_floats, write_json


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
    try:
        result, metrics = evaluate_split(params, args.tokens, args.adapter)
    except (BatchOutOfMemoryError, NonFiniteLogitsError) as err:
        sys.exit(f"evaluate: error: {err}")

    predictions = pd.DataFrame({"id": result.ids, "actual": [LABEL_NAMES[i] for i in result.labels],
                                "predicted": [LABEL_NAMES[i] for i in result.probs.argmax(axis=1)]})
    for k, name in enumerate(LABEL_NAMES):
        predictions[f"p_{name}"] = result.probs[:, k].round(6)
    with atomic_path(args.predictions) as path:
        predictions.to_csv(path, index=False)
    with atomic_path(args.calibration) as path:
        pd.DataFrame(calibration_rows(result.labels, result.probs)).to_csv(path, index=False)
    with atomic_path(args.speed_accuracy) as path:  # DVC plots need a list of records, not eval.json's object
        write_json(path, [round_floats({k: metrics[k] for k in SPEED_ACCURACY})])
    with atomic_path(args.metrics) as path:  # last: its presence says the evaluation completed
        write_json(path, round_floats(metrics))
    print(f"evaluate: {params.model} ({metrics['weights']}) log_loss {metrics['log_loss']:.4f} "
          f"(prior {metrics['log_loss_prior']:.4f}), accuracy {metrics['accuracy']:.3f}, "
          f"{metrics['seconds_per_sample']:.5f} s/sample, {metrics['tokens_per_second']:.0f} tokens/s, "
          f"{metrics['n_samples']} rows on {metrics['device']}")


if __name__ == "__main__":
    run(main)
