"""Blend experiments: class probabilities of several runs mixed with weights fitted on validation log-loss.

Usage: python -m prefbench.blend EXP EXP [EXP ...] [--average] [--metrics metrics/blend.json]
                                 [--out data/blend_submission.csv] [--folds 2] [--repo .]

EXP is what `dvc exp show` lists: an experiment's name (also a queued one's), a git revision
(HEAD, a branch, a commit) or `workspace`. Each member's validation predictions
(metrics/predictions.csv, the evaluate stage's) are read at its revision through DVC's API
(prefbench.revisions), and so are its test predictions (data/submission.csv, the predict stage's,
a DVC-cached output) where the local cache has them. The members must share their validation rows:
the same ids in the same order with the same labels (one data split), and the same columns;
otherwise the command stops naming the first mismatch (member, row id, column).

The weights are non-negative and sum to 1 (a convex combination): the fit minimises the blend's
validation log-loss (scipy's SLSQP from equal weights), and every member alone (a vertex of the
simplex) is a candidate too, so the blend's log-loss is never above the best member's on these
rows. --average takes equal weights instead (which can be worse than the best member). Weights
fitted on the rows they are scored on make that log-loss optimistic: `log_loss_cv` is the
honest number, each of --folds parts of the rows scored with weights fitted on the others.

Writes --metrics (JSON: each member's name, full commit, model, log-loss, accuracy and weight;
the blend's log-loss, cross-validated log-loss and accuracy; the rows) and, where every member has
test predictions for the same rows, --out: a Kaggle submission, the members' probabilities mixed
with the weights (each row renormalised). A Kaggle bundle of the blend: `python -m
prefbench.bundle --blend metrics/blend.json` (docs/experiments.md#blending-experiments).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefbench.data import LABEL_COLUMNS, LABEL_NAMES, DataError
from prefbench.metrics import accuracy, log_loss

VALIDATION = "metrics/predictions.csv"  # the evaluate stage's per-row validation predictions
TEST = "data/submission.csv"  # the predict stage's submission
EVAL = "metrics/eval.json"
PROB_COLUMNS = tuple(f"p_{name}" for name in LABEL_NAMES)
VALIDATION_COLUMNS = ("id", "actual", "predicted", *PROB_COLUMNS)
SUBMISSION_COLUMNS = ("id", *LABEL_COLUMNS)
# The files hold 6 decimals (the stages round them): a row may sum to 1 +- 3 x 5e-7; more is
# something else than these stages' probabilities.
SUM_TOLERANCE = 1e-4
OPTIMISTIC = ("log_loss is scored on the rows the weights were fitted on: optimistic; log_loss_cv scores "
              "each fold with weights fitted on the other folds")


class BlendError(DataError):
    """Members that cannot be blended; the message names the member, row id and column."""


@dataclass
class Member:
    """One run's predictions: validation (VALIDATION_COLUMNS) and, where present, test
    (SUBMISSION_COLUMNS), ids and labels read as strings."""
    name: str
    validation: pd.DataFrame
    test: pd.DataFrame | None = None
    rev: str = ""
    workspace: bool = False
    model: str | None = None
    test_missing: str = ""  # why `test` is None


def read_predictions(text: str, source: str) -> pd.DataFrame:
    """A predictions or submission CSV's text, ids and labels as strings."""
    from io import StringIO

    try:
        return pd.read_csv(StringIO(text), dtype={"id": str, "actual": str, "predicted": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BlendError(f"{source}: not a CSV ({err})") from None


def _check_columns(df: pd.DataFrame, expected: tuple[str, ...], where: str) -> None:
    got = list(df.columns)
    if got != list(expected):
        k = next(i for i in range(max(len(got), len(expected)))
                 if i >= len(got) or i >= len(expected) or got[i] != expected[i])
        found = repr(got[k]) if k < len(got) else "nothing"
        want = repr(expected[k]) if k < len(expected) else "no more columns"
        raise BlendError(f"{where}: column {k + 1} is {found}, expected {want} (columns {', '.join(expected)}: "
                         "the label order a, b, tie)")


def _check_probs(df: pd.DataFrame, columns: tuple[str, ...], where: str) -> np.ndarray:
    """The probability columns as an (n, 3) array, rows renormalised; one bad value stops it
    naming its row id and column."""
    values = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        i, k = map(int, np.argwhere(bad)[0])
        raise BlendError(f"{where}: row id {df['id'].iloc[i]}, column {columns[k]}: "
                         f"{df[columns[k]].iloc[i]!r} is not a probability")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise BlendError(f"{where}: row id {df['id'].iloc[i]}, columns {', '.join(columns)}: "
                         f"sum to {sums[i]:.6f}, not 1")
    return values / sums[:, None]


def _check_rows(ref: pd.DataFrame, df: pd.DataFrame, columns: tuple[str, ...], ref_where: str, where: str) -> None:
    """`df` has `ref`'s rows: the same values in `columns`, row by row; else the first difference."""
    for i in range(max(len(ref), len(df))):
        if i >= len(df):
            raise BlendError(f"{where}: {len(df)} rows, {ref_where} {len(ref)}: row id {ref['id'].iloc[i]} "
                             f"(row {i + 1}) is missing")
        if i >= len(ref):
            raise BlendError(f"{where}: {len(df)} rows, {ref_where} {len(ref)}: row id {df['id'].iloc[i]} "
                             f"(row {i + 1}) is extra")
        for column in columns:
            a, b = ref[column].iloc[i], df[column].iloc[i]
            if a != b:
                row = df["id"].iloc[i] if column != "id" else b
                raise BlendError(f"{where}: row id {row} (row {i + 1}), column {column}: {b!r} where {ref_where} "
                                 f"has {a!r}: blend runs of the same data split (data.* params)")


def validation_arrays(members: list[Member]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The shared labels and each member's validation probabilities; stops at the first member
    whose columns, rows (ids in order) or labels differ from the first member's, naming it."""
    if len(members) < 2:
        raise BlendError(f"a blend needs two or more members, got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise BlendError(f"member {next(n for n in names if names.count(n) > 1)} is named twice")
    first = members[0]
    probs = []
    for m in members:
        where = f"member {m.name}: {VALIDATION}"
        _check_columns(m.validation, VALIDATION_COLUMNS, where)
        dup = m.validation["id"].duplicated()
        if dup.any():
            raise BlendError(f"{where}: row id {m.validation['id'][dup].iloc[0]}, column id: appears twice")
        if m is not first:
            _check_rows(first.validation, m.validation, ("id", "actual"), f"member {first.name}", where)
        unknown = ~m.validation["actual"].isin(LABEL_NAMES)
        if unknown.any():
            i = int(np.argmax(unknown))
            raise BlendError(f"{where}: row id {m.validation['id'].iloc[i]}, column actual: "
                             f"{m.validation['actual'].iloc[i]!r} is not one of {', '.join(LABEL_NAMES)}")
        probs.append(_check_probs(m.validation, PROB_COLUMNS, where))
    labels = first.validation["actual"].map({n: i for i, n in enumerate(LABEL_NAMES)}).to_numpy()
    return labels, probs


def test_arrays(members: list[Member]) -> tuple[pd.Series, list[np.ndarray]]:
    """The shared test ids and each member's test probabilities (every member has them); stops at
    the first member whose columns or rows differ from the first member's."""
    first = members[0]
    probs = []
    for m in members:
        where = f"member {m.name}: {TEST}"
        _check_columns(m.test, SUBMISSION_COLUMNS, where)
        if m is not first:
            _check_rows(first.test, m.test, ("id",), f"member {first.name}", where)
        probs.append(_check_probs(m.test, LABEL_COLUMNS, where))
    return first.test["id"], probs


def mix(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted sum of the members' probabilities, each row renormalised (the weights sum to 1
    and the members' rows to 1, up to rounding)."""
    out = sum(w * p for w, p in zip(weights, probs))
    return out / out.sum(axis=1, keepdims=True)


def fit_weights(labels: np.ndarray, probs: list[np.ndarray], digits: int = 6) -> np.ndarray:
    """Weights on the simplex minimising the blend's log-loss on (labels, probs), rounded to
    `digits` (what metrics/blend.json and a bundle carry). Candidates: SLSQP's optimum from equal
    weights, and each member alone; the lowest log-loss wins, so the result is never worse than
    the best member on these rows (its vertex is a candidate, and a vertex's blend is that member's
    probabilities exactly)."""
    from scipy.optimize import minimize

    k = len(probs)
    p_true = np.stack([p[np.arange(len(labels)), labels] for p in probs], axis=1)  # (n, k)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        # the log-loss is convex in w (a log of a linear function): SLSQP finds the optimum
        q = np.maximum(p_true @ w, 1e-15)
        return float(-np.log(q).mean()), -(p_true / q[:, None]).mean(axis=0)

    res = minimize(loss, np.full(k, 1 / k), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(k)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    candidates = [_round_simplex(res.x, digits), *np.eye(k)]
    scores = [log_loss(labels, mix(probs, w)) for w in candidates]
    return candidates[int(np.argmin(scores))]


def _round_simplex(w: np.ndarray, digits: int) -> np.ndarray:
    """Clipped to >= 0, rounded, summing to 1 (the rounding's remainder on the largest weight)."""
    w = np.round(np.clip(w, 0, None) / np.clip(w, 0, None).sum(), digits)
    w[int(np.argmax(w))] += round(1 - w.sum(), digits)
    return w


def equal_weights(k: int) -> np.ndarray:
    return np.full(k, 1 / k)


def cross_validated_log_loss(labels: np.ndarray, probs: list[np.ndarray], folds: int, average: bool,
                             seed: int = 0) -> tuple[float, list[list[float]]]:
    """Log-loss of out-of-fold blends: the rows in `folds` random parts (seeded), each part mixed
    with weights fitted on the others; with `average` the equal weights (no fit to leak). Also
    each fold's weights."""
    n = len(labels)
    part = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros((n, len(LABEL_NAMES)))
    fold_weights = []
    for f in range(folds):
        held, fit = part == f, part != f
        w = equal_weights(len(probs)) if average else fit_weights(labels[fit], [p[fit] for p in probs])
        fold_weights.append([float(x) for x in w])
        out[held] = mix([p[held] for p in probs], w)
    return log_loss(labels, out), fold_weights


def blend_submission(ids: pd.Series, probs: list[np.ndarray], weights) -> pd.DataFrame:
    """The Kaggle submission of the mixed probabilities (the bundle's predict.py writes it too)."""
    mixed = mix(probs, np.asarray(weights, dtype=float))
    return pd.DataFrame({"id": ids.to_numpy(), **{c: mixed[:, k] for k, c in enumerate(LABEL_COLUMNS)}})


def write_submission(df: pd.DataFrame, path: Path) -> None:
    """As the predict stage writes its own: 6 decimals, whole or absent."""
    from prefbench.files import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")


def blend(members: list[Member], average: bool = False, folds: int = 2) -> tuple[dict, pd.DataFrame | None]:
    """metrics/blend.json's content and the blended submission (None where a member has no test
    predictions)."""
    labels, probs = validation_arrays(members)
    weights = equal_weights(len(members)) if average else fit_weights(labels, probs)
    mixed = mix(probs, weights)
    member_losses = [log_loss(labels, p) for p in probs]
    best = int(np.argmin(member_losses))
    cv, cv_weights = cross_validated_log_loss(labels, probs, folds, average) if folds >= 2 else (None, [])
    submission = None
    without = [m for m in members if m.test is None]
    if not without:
        ids, test_probs = test_arrays(members)
        submission = blend_submission(ids, test_probs, weights)
    result = {
        "method": "average" if average else "fit: minimum validation log-loss over convex weights",
        "rows": len(labels),
        "log_loss": log_loss(labels, mixed),
        "log_loss_cv": cv,
        "cv_folds": folds if cv is not None else None,
        "cv_weights": cv_weights,
        "accuracy": accuracy(labels, mixed),
        "best_member": members[best].name,
        "best_member_log_loss": member_losses[best],
        "note": OPTIMISTIC,
        "members": [{"name": m.name, "rev": m.rev, "workspace": m.workspace, "model": m.model,
                     "log_loss": loss, "accuracy": accuracy(labels, p), "weight": float(w),
                     "test_predictions": m.test is not None, **({"test_missing": m.test_missing} if m.test is None else {})}
                    for m, p, loss, w in zip(members, probs, member_losses, weights)],
        "test_rows": None if submission is None else len(submission),
    }
    return result, submission


def load_member(name: str, repo: str | Path = ".") -> Member:
    """A member's predictions at its revision (prefbench.revisions: experiments, git revisions,
    the workspace)."""
    from prefbench import revisions

    rev = revisions.resolve(name, repo)
    text = revisions.read_text(rev, VALIDATION, repo)
    if text is None:
        raise BlendError(f"member {name}: {revisions.missing_reason(rev, VALIDATION, repo)} "
                         "(the evaluate stage writes it)")
    validation = read_predictions(text, f"member {name}: {VALIDATION}")
    test_text = revisions.read_text(rev, TEST, repo)
    test = None if test_text is None else read_predictions(test_text, f"member {name}: {TEST}")
    eval_text = revisions.read_text(rev, EVAL, repo)
    model = json.loads(eval_text).get("model") if eval_text else None
    return Member(name, validation, test, rev.rev, rev.workspace, model,
                  "" if test is not None else revisions.missing_reason(rev, TEST, repo))


def _round(d):
    if isinstance(d, float):
        return round(d, 6)
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_round(v) for v in d]
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", metavar="EXP",
                        help="experiments, git revisions or `workspace`, as `dvc exp show` lists them")
    parser.add_argument("--average", action="store_true", help="equal weights instead of fitted ones")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/blend.json"))
    parser.add_argument("--out", type=Path, default=Path("data/blend_submission.csv"),
                        help="the blended submission (where every member has test predictions)")
    parser.add_argument("--folds", type=int, default=2,
                        help="folds of the cross-validated log-loss (0: none)")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    args = parser.parse_args()
    if args.folds == 1 or args.folds < 0:
        parser.error("--folds: 0 (none) or 2 and more")
    members = [load_member(name, args.repo) for name in args.members]
    result, submission = blend(members, args.average, args.folds)
    result = {"command": shlex.join(["python", "-m", "prefbench.blend", *sys.argv[1:]]), **result,
              "submission": None if submission is None else str(args.out)}
    if submission is not None:
        write_submission(submission, args.out)
    from prefbench.files import atomic_path
    from prefbench.metrics import write_json

    with atomic_path(args.metrics) as path:
        write_json(path, _round(result))
    print(report(result))
    print(f"blend: -> {args.metrics}")


def report(result: dict) -> str:
    lines = ["| member | model | rev | log-loss | accuracy | weight |", "|---|---|---|---|---|---|"]
    for m in result["members"]:
        rev = "workspace" if m["workspace"] else m["rev"][:7]
        lines.append(f"| {m['name']} | {m['model']} | {rev} | {m['log_loss']:.4f} | {m['accuracy']:.4f} | "
                     f"{m['weight']:.4f} |")
    cv = (f"; cross-validated ({result['cv_folds']} folds) {result['log_loss_cv']:.4f}"
          if result["log_loss_cv"] is not None else "")
    lines.append(f"\nblend ({'equal weights' if result['method'] == 'average' else 'fitted weights'}): "
                 f"log-loss {result['log_loss']:.4f} on the {result['rows']} validation rows{cv}; best member "
                 f"{result['best_member']} {result['best_member_log_loss']:.4f}")
    if result["method"] != "average":
        lines.append("The fitted log-loss is scored on the rows the weights were fitted on: optimistic; "
                     "the cross-validated one is not.")
    if result["submission"]:
        lines.append(f"submission: {result['test_rows']} rows -> {result['submission']}")
    else:
        lines += ["no submission: " + m["test_missing"] for m in result["members"] if not m["test_predictions"]]
    return "\n".join(lines)


if __name__ == "__main__":
    from prefbench.cli import run

    run(main)
