"""Stage `sample`: write the embedded default data set, generated, in the competition's train.csv format.

Usage: python -m stages.sample --params params.yaml --out data/sample/train.csv --test-out data/sample/test.csv
Reads params: sample.rows, sample.test_rows, sample.seed.
The test file has the competition's test.csv columns (id, prompt, response_a, response_b), from
other rows of the same generator (seed + 1).
"""

from __future__ import annotations

import argparse

import pandas as pd

from prefbench.cli import run
from prefbench.config import load_params
from prefbench.data import LABEL_COLUMNS, TEST_COLUMNS, label_balance
from prefbench.files import atomic_path
from prefbench.sample import generate_arena_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="train.csv to write")
    parser.add_argument("--test-out", required=True, help="test.csv to write (no labels, no model names)")
    args = parser.parse_args()
    p = load_params(args.params).sample
    df = generate_arena_sample(p.rows, p.seed)
    with atomic_path(args.out) as path:  # each file whole or absent (prefbench.files)
        df.to_csv(path, index=False)
    test = generate_arena_sample(p.test_rows, p.seed + 1)[list(TEST_COLUMNS)]
    with atomic_path(args.test_out) as path:
        test.to_csv(path, index=False)
    balance = label_balance(pd.Series(df[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)))
    print(f"sample: {len(df)} rows -> {args.out}; label balance {balance}; {len(test)} test rows -> {args.test_out}")


if __name__ == "__main__":
    run(main)
