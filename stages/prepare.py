"""Stage `prepare`: parse and validate a competition CSV, build labels, split train/val.

Usage: python -m stages.prepare --params params.yaml --csv data/sample/train.csv \
           --out data/prepared --metrics metrics/data.json
Reads params: data.val_fraction, data.seed, data.max_rows, data.strict (data.train_csv arrives as --csv).
A malformed row is dropped and counted by reason (data.strict: false) or stops the stage with the
file, row, id and column named (data.strict: true). A row with both responses null or empty is
valid (the real train.csv and test.csv have them): kept in both modes and counted under `flagged`.
Writes train.parquet and val.parquet (id, prompt/response_a/response_b as lists of turns, label)
and metrics: rows read, kept, dropped by reason, repairs, flagged rows, label balance per split.
"""

from __future__ import annotations

import argparse

import pandas as pd

from prefbench.cli import run
from prefbench.config import DataParams, load_params
from prefbench.data import ParseReport, label_balance, parse_frame, read_csv, split_by_prompt
from prefbench.files import atomic_path
from prefbench.metrics import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--csv", required=True, help="competition-format train.csv")
    parser.add_argument("--out", required=True, help="folder for train.parquet and val.parquet")
    parser.add_argument("--metrics", required=True, help="data metrics JSON")
    args = parser.parse_args()
    dp = load_params(args.params).data
    raw = read_csv(args.csv, dp.max_rows)
    train, val, report = prepare(raw, dp, source=args.csv)
    with atomic_path(args.out) as out:  # the folder whole or absent (prefbench.files)
        out.mkdir()
        train.to_parquet(out / "train.parquet", index=False)
        val.to_parquet(out / "val.parquet", index=False)
    metrics = data_metrics(report, train, val)
    with atomic_path(args.metrics) as path:
        write_json(path, metrics)
    print(f"prepare: read {report.rows_read}, kept {report.rows_kept}, dropped {metrics['rows_dropped']} "
          f"{metrics['dropped']}, repaired {metrics['repaired']}, flagged {metrics['flagged']}; "
          f"train {len(train)}, val {len(val)}")
    for reason, where in report.examples.items():
        what, count = ("dropped", report.dropped[reason]) if reason in report.dropped else ("kept", report.flagged[reason])
        print(f"prepare: {what} ({reason}): {'; '.join(where)}{' ...' if count > len(where) else ''}")


def prepare(raw: pd.DataFrame, dp: DataParams, source: str) -> tuple[pd.DataFrame, pd.DataFrame, ParseReport]:
    rows, report = parse_frame(raw, source, strict=dp.strict)
    is_val = split_by_prompt(rows["label"].to_numpy(), rows["prompt_key"].to_numpy(), dp.val_fraction, dp.seed)
    rows = rows.drop(columns="prompt_key")
    return rows[~is_val].reset_index(drop=True), rows[is_val].reset_index(drop=True), report


def data_metrics(report: ParseReport, train: pd.DataFrame, val: pd.DataFrame) -> dict:
    return {
        **report.as_dict(),
        "train_rows": len(train),
        "val_rows": len(val),
        "val_share": round(len(val) / (len(train) + len(val)), 4),
        "label_balance_train": label_balance(train["label"]),
        "label_balance_val": label_balance(val["label"]),
    }


if __name__ == "__main__":
    run(main)
