"""Read and validate competition-format CSVs; build labels; split train/val.

The Kaggle `train.csv` stores prompt and responses as JSON lists of strings, one per turn.
Entries may be null or empty, text may hold surrogate-pair escapes (emoji) and, in scraped
copies, lone surrogates that cannot be written as UTF-8. A row is either kept (with every repair
counted) or dropped and counted by reason: nothing is lost silently.

A row whose two responses are both null or empty is not malformed: the real train.csv has them
(1 of the 999 rows of the shared sample, labelled) and so does the hidden test set. It is kept,
trained and evaluated on like any other (the model learns what to predict for it, as it must on
test), and counted under `flagged`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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
    flagged: Counter = field(default_factory=Counter)  # kept rows worth knowing about: reason -> rows
    examples: dict = field(default_factory=dict)  # drop or flag reason -> first few "row N (id X), column C"

    def as_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": sum(self.dropped.values()),
            "dropped": dict(sorted(self.dropped.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "flagged": dict(sorted(self.flagged.items())),
        }

    def note(self, reason: str, where: str) -> None:
        """Keep the first 5 places of each reason, for the stage to print."""
        places = self.examples.setdefault(reason, [])
        if len(places) < 5:
            places.append(where)


def read_csv(path: str | Path, max_rows: int = 0) -> pd.DataFrame:
    """Read a competition CSV as text; extra columns (a pandas index, say) are tolerated.

    A UTF-8 BOM and Windows line endings are accepted. A file without the label columns (the
    shape of the competition's test.csv) is refused with a message that says so.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        # keep_default_na=False: a cell reading "null" or "NA" is text, not a missing value.
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, nrows=max_rows or None, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV: {one_line(e)}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing and set(missing) == set(LABEL_COLUMNS):
        raise DataError(f"{path}: no label columns ({', '.join(LABEL_COLUMNS)}): this looks like the "
                        "competition's test.csv; training and evaluation need train.csv")
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; have {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: header only, no data rows")
    return df


def one_line(error: Exception) -> str:
    """An error's text on one line (pandas' parser messages end with a newline)."""
    return " ".join(str(error).split())


def shown(value: str) -> str:
    """A cell as a message shows it: as it is, or JSON-quoted when it holds a newline or another
    character that does not print (an id "1\\n2" would break the one-line message)."""
    return value if value.isprintable() else json.dumps(value)


class RowProblem(ValueError):
    """Why one row cannot be used: a drop reason (counted in the metrics) and the column."""

    def __init__(self, reason: str, column: str, detail: str):
        super().__init__(detail)
        self.reason, self.column = reason, column


def parse_turns(cell: str) -> list[str | None]:
    """One JSON-list cell -> list of turns (str or None). Raises ValueError if not a list of str/null."""
    # strict=False: raw control characters (a NUL byte, a bare tab) inside strings are accepted
    # here and repaired in clean_turn, instead of losing the row.
    value = json.loads(cell, strict=False)
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise ValueError("not a JSON list of strings")
    return value


def clean_turn(turn: str | None, repaired: Counter) -> str:
    """Repairs, each counted: null -> ""; NUL characters removed; lone surrogates (which cannot be
    written as UTF-8: half an emoji from a truncated scrape) -> U+FFFD."""
    if turn is None:
        repaired["null_turn_as_empty"] += 1
        return ""
    if "\x00" in turn:
        repaired["nul_removed"] += 1
        turn = turn.replace("\x00", "")
    try:
        turn.encode("utf-8")
    except UnicodeEncodeError:
        repaired["lone_surrogate_replaced"] += 1
        turn = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in turn)
    return turn


def parse_label(row: pd.Series) -> int:
    """One-hot winner columns -> class index."""
    try:
        values = [float(row[c]) for c in LABEL_COLUMNS]
    except ValueError:
        raise RowProblem("bad_label", ",".join(LABEL_COLUMNS),
                         f"labels {[row[c] for c in LABEL_COLUMNS]} are not numbers") from None
    if sorted(values) != [0.0, 0.0, 1.0]:
        raise RowProblem("bad_label", ",".join(LABEL_COLUMNS), f"labels {values} are not one-hot")
    return values.index(1.0)


def parse_row(row: pd.Series, repaired: Counter, flagged: Counter) -> dict:
    """One CSV row -> {prompt, response_a, response_b: list of turns, label}; RowProblem if malformed."""
    turns = {}
    for col in TEXT_COLUMNS:
        try:
            turns[col] = parse_turns(row[col])
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise RowProblem(f"bad_json_{col}", col, f"not a JSON list of strings ({e})") from None
    counts = {c: len(t) for c, t in turns.items()}
    if len(set(counts.values())) != 1:
        raise RowProblem("turn_count_mismatch", ",".join(TEXT_COLUMNS), f"turns per column differ: {counts}")
    label = parse_label(row)
    texts = {c: [clean_turn(t, repaired) for t in turns[c]] for c in TEXT_COLUMNS}
    if not any(texts["response_a"]) and not any(texts["response_b"]):
        flagged["both_responses_empty"] += 1  # valid and kept: see the module docstring
    return {**texts, "label": label}


def parse_frame(df: pd.DataFrame, source: str, strict: bool = False) -> tuple[pd.DataFrame, ParseReport]:
    """Validate every row; return the kept rows (turn lists + label) and the report.

    strict=False: a malformed row is dropped and counted by reason (the first ids of each reason
    are kept in report.examples). strict=True: the first malformed row raises DataError naming
    the file, the row (1-based data row and its id) and the column. Rows that are only repaired
    or flagged (both responses empty) are kept in either mode.
    """
    report = ParseReport(rows_read=len(df))
    seen: set[str] = set()
    rows = []
    for number, (_, row) in enumerate(df.iterrows(), start=1):
        rid = row["id"]
        try:
            if rid in seen:
                raise RowProblem("duplicate_id", "id", f"id {shown(rid)} appeared earlier in the file")
            seen.add(rid)
            repaired, flagged = Counter(), Counter()
            parsed = parse_row(row, repaired, flagged)
        except RowProblem as problem:
            if strict:
                raise DataError(f"{source}: row {number} (id {shown(rid)}), column {problem.column}: {problem} "
                                "(data.strict is true; set it to false to drop and count such rows)") from None
            report.dropped[problem.reason] += 1
            report.note(problem.reason, f"row {number} (id {shown(rid)}), column {problem.column}")
            continue
        report.repaired.update(repaired)
        report.flagged.update(flagged)
        for reason in flagged:
            report.note(reason, f"row {number} (id {shown(rid)})")
        rows.append({"id": rid, **parsed, "prompt_key": json.dumps(parsed["prompt"])})
    report.rows_kept = len(rows)
    if not rows:
        raise DataError(f"{source}: no usable rows; dropped {dict(report.dropped)}, e.g. {report.examples}")
    return pd.DataFrame(rows), report


TEST_COLUMNS = ("id", *TEXT_COLUMNS)


def read_test_csv(path: str | Path) -> tuple[pd.DataFrame, ParseReport]:
    """The competition's test.csv: id, prompt, response_a, response_b. Every row must get a
    prediction, so nothing is dropped: a cell that is not a JSON list is used as one turn of raw
    text, and each repair is counted. Label columns, if present (a train.csv), are ignored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:  # as read_csv
        raise DataError(f"{path}: not a readable UTF-8 CSV: {one_line(e)}") from None
    missing = [c for c in TEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)}; have {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: header only, no data rows")
    if df["id"].duplicated().any():
        raise DataError(f"{path}: duplicate id(s) {df.loc[df['id'].duplicated(), 'id'].head(5).tolist()}: "
                        "a submission needs one row per id")
    report = ParseReport(rows_read=len(df), rows_kept=len(df))
    out = {"id": df["id"].tolist()}
    for col in TEXT_COLUMNS:
        cells = []
        for cell in df[col]:
            try:
                turns = parse_turns(cell)
            except ValueError:
                report.repaired[f"raw_text_{col}"] += 1
                turns = [cell]
            cells.append([clean_turn(t, report.repaired) for t in turns])
        out[col] = cells
    return pd.DataFrame(out), report


def split_by_prompt(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: stratified by label, grouped so a prompt never straddles.

    StratifiedGroupKFold with round(1/val_fraction) folds; the first fold is validation, so
    the realised share is close to, not exactly, val_fraction (it is reported in the metrics).
    """
    from sklearn.model_selection import StratifiedGroupKFold  # here: every stage imports this module

    n_splits = max(2, round(1.0 / val_fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(folds.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val_idx] = True
    return mask


def deal_round_robin(lengths: np.ndarray, n: int) -> list[np.ndarray]:
    """Row indices sorted by length (longest first) and dealt to `n` workers in turn: each worker
    gets the same mix of long and short rows, so all finish at about the same time (the Kaggle
    2xT4 pattern: one model per GPU)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i::n] for i in range(n)]


def label_balance(labels: pd.Series) -> dict[str, float]:
    counts = labels.value_counts(normalize=True)
    return {name: round(float(counts.get(i, 0.0)), 4) for i, name in enumerate(LABEL_NAMES)}
