"""Read and validate competition-format CSVs; build labels; split train/val.

The Kaggle `train.csv` stores prompt and responses as JSON lists of strings, one per turn.
Entries may be null or empty, text may hold surrogate-pair escapes (emoji) and, in scraped
copies, lone surrogates that cannot be written as UTF-8. A row is either kept (with every repair
counted) or dropped and counted by reason: nothing is lost silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
LABEL_NAMES = ("a", "b", "tie")  # class index 0, 1, 2
REQUIRED_COLUMNS = ("id", *TEXT_COLUMNS, *LABEL_COLUMNS)


class DataError(ValueError):
    """Bad input that cannot be repaired or dropped; names the file, row and column."""


@dataclass
class ParseReport:
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    repaired: Counter = field(default_factory=Counter)  # repair -> turns or rows

    def as_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": sum(self.dropped.values()),
            "dropped": dict(sorted(self.dropped.items())),
            "repaired": dict(sorted(self.repaired.items())),
        }


def read_csv(path: str | Path, max_rows: int = 0) -> pd.DataFrame:
    """Read a competition CSV as text; extra columns (a pandas index, say) are tolerated."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        # keep_default_na=False: a cell reading "null" or "NA" is text, not a missing value.
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, nrows=max_rows or None, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; have {list(df.columns)}")
    return df


def parse_turns(cell: str) -> list[str | None]:
    """One JSON-list cell -> list of turns (str or None). Raises ValueError if not a list of str/null."""
    value = json.loads(cell)
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise ValueError("not a JSON list of strings")
    return value


def clean_turn(turn: str | None, repaired: Counter) -> str:
    """null -> ""; lone surrogates (unencodable as UTF-8) -> U+FFFD. Counts each repair."""
    if turn is None:
        repaired["null_turn_as_empty"] += 1
        return ""
    try:
        turn.encode("utf-8")
    except UnicodeEncodeError:
        repaired["lone_surrogate_replaced"] += 1
        turn = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in turn)
    return turn


def parse_label(row: pd.Series) -> int:
    """One-hot winner columns -> class index; ValueError if not exactly one 1."""
    values = [int(float(row[c])) for c in LABEL_COLUMNS]
    if sorted(values) != [0, 0, 1]:
        raise ValueError(f"labels {values} are not one-hot")
    return values.index(1)


def parse_frame(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, ParseReport]:
    """Validate every row; return the kept rows (turn lists + label) and the report."""
    report = ParseReport(rows_read=len(df))
    seen: set[str] = set()
    rows = []
    for _, row in df.iterrows():
        rid = row["id"]
        if rid in seen:
            report.dropped["duplicate_id"] += 1
            continue
        seen.add(rid)
        turns, reason = {}, None
        for col in TEXT_COLUMNS:
            try:
                turns[col] = parse_turns(row[col])
            except ValueError:  # json.JSONDecodeError is a ValueError
                reason = f"bad_json_{col}"
                break
        if reason is None and len({len(t) for t in turns.values()}) != 1:
            reason = "turn_count_mismatch"
        if reason is None:
            try:
                label = parse_label(row)
            except ValueError:
                reason = "bad_label"
        if reason is None:
            texts = {c: [clean_turn(t, report.repaired) for t in turns[c]] for c in TEXT_COLUMNS}
            if not any(texts["response_a"]) and not any(texts["response_b"]):
                reason = "both_responses_empty"
        if reason is not None:
            report.dropped[reason] += 1
            continue
        rows.append({"id": rid, **texts, "label": label, "prompt_key": json.dumps(texts["prompt"])})
    report.rows_kept = len(rows)
    if not rows:
        raise DataError(f"{source}: no usable rows ({report.as_dict()['dropped']})")
    return pd.DataFrame(rows), report


def split_by_prompt(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: stratified by label, grouped so a prompt never straddles.

    StratifiedGroupKFold with round(1/val_fraction) folds; the first fold is validation, so
    the realised share is close to, not exactly, val_fraction (it is reported in the metrics).
    """
    n_splits = max(2, round(1.0 / val_fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val_idx] = True
    return mask


def label_balance(labels: pd.Series) -> dict[str, float]:
    counts = labels.value_counts(normalize=True)
    return {name: round(float(counts.get(i, 0.0)), 4) for i, name in enumerate(LABEL_NAMES)}
