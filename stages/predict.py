"""Stage `predict`: a Kaggle submission from a test.csv, timed, with optional swap augmentation.

Usage: python -m stages.predict --params params.yaml --test-csv data/sample/test.csv \
           --adapter models/adapter --out data/submission.csv --metrics metrics/predict.json
Reads params: model, models.<model>.{pretrained, dtype, attn_implementation, quantization, max_length,
eval_batch_size, compile, kernels}, tokenize.prompt_share (test rows are tokenised as the tokenize
stage tokenised the training rows), predict.{swap_tta, kaggle_rows, kaggle_hours, warmup_batches,
warmup_shapes, devices} (predict.test_csv arrives as --test-csv); the random-init seed comes from
the adapter (`kind: tfidf`: models.<model>.eval_batch_size; prefbench.tfidf, the same submission
and metrics). prefbench.infer.run_inference does the work, timed as in the evaluate stage.
Writes `id, winner_model_a, winner_model_b, winner_tie` in the input's row order (probabilities
sum to 1) and prints the projected hours for the hidden test set against the Kaggle limit.
Swap test-time augmentation predicts each row a second time with responses A and B exchanged
and averages (the swapped prediction's a/b columns exchanged back): twice the time.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from prefbench.cli import run
from prefbench.config import load_params
from prefbench.data import LABEL_COLUMNS, read_test_csv
from prefbench.device_errors import BatchOutOfMemoryError, NonFiniteLogitsError
from prefbench.files import atomic_path
from prefbench.infer import predict_rows
from prefbench.metrics import round_floats, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--test-csv", required=True, help="competition-format test.csv")
    parser.add_argument("--adapter", required=True, help="adapter folder (stage train)")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--metrics", required=True, help="timing metrics JSON")
    parser.add_argument("--no-projection", action="store_true",
                        help="leave the projected hours out of the printed line (a bundle's predict.py prints its own)")
    args = parser.parse_args()
    params = load_params(args.params)
    pp = params.predict

    df, report = read_test_csv(args.test_csv)
    try:
        result, metrics = predict_rows(params, df, args.adapter, report.repaired)
    except (BatchOutOfMemoryError, NonFiniteLogitsError) as err:
        sys.exit(f"predict: error: {err}")

    prob = result.probs / result.probs.sum(axis=1, keepdims=True)
    submission = pd.DataFrame({"id": result.ids, **{c: prob[:, k] for k, c in enumerate(LABEL_COLUMNS)}})
    with atomic_path(args.out) as path:  # whole or absent (prefbench.files)
        submission.to_csv(path, index=False, float_format="%.6f")
    with atomic_path(args.metrics) as path:
        write_json(path, round_floats(metrics))
    projected = "" if args.no_projection else (
        f"; {pp.kaggle_rows:,} rows would take {metrics['projected_hours']:.2f} h here (Kaggle limit "
        f"{pp.kaggle_hours} h: {'fits' if metrics['fits_kaggle_limit'] else 'does NOT fit'})")
    print(f"predict: {metrics['n_samples']} rows -> {args.out} ({'with' if pp.swap_tta else 'no'} swap TTA), "
          f"{metrics['seconds_per_sample']:.5f} s/sample on {metrics['device']}{projected}")


if __name__ == "__main__":
    run(main)
