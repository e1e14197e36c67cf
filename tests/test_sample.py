"""Tests for the synthetic arena sample (prefbench.sample)."""

import json

import numpy as np
import pandas as pd
import pytest

from prefbench.sample import COLUMNS, generate_arena_sample

N = 2000
LABELS = ["winner_model_a", "winner_model_b", "winner_tie"]


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return generate_arena_sample(N, seed=0)


def _turns(cell: str) -> list:
    return json.loads(cell)


def _chars(cell: str) -> int:
    return sum(len(t or "") for t in json.loads(cell))


def test_deterministic_and_seeded(tmp_path):
    a = generate_arena_sample(300, seed=7)
    b = generate_arena_sample(300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    c = generate_arena_sample(300, seed=8)
    assert not a.equals(c)


def test_columns_and_ids(df):
    assert list(df.columns) == COLUMNS
    assert len(df) == N
    assert df["id"].is_unique
    assert df["id"].between(1_000_000, 9_999_999).all()
    assert not df["id"].is_monotonic_increasing  # shuffled, not a row counter
    assert (df["model_a"] != df["model_b"]).all()
    assert df["model_a"].nunique() >= 5


def test_labels_one_hot_and_balanced(df):
    lab = df[LABELS]
    assert set(np.unique(lab.to_numpy())) <= {0, 1}
    assert (lab.sum(axis=1) == 1).all()
    share = lab.mean()
    assert abs(share["winner_model_a"] - 0.35) <= 0.04, share
    assert abs(share["winner_model_b"] - 0.35) <= 0.04, share
    assert abs(share["winner_tie"] - 0.30) <= 0.04, share


def test_turn_lists(df):
    n_multi = 0
    for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"]):
        tp, ta, tb = _turns(p), _turns(a), _turns(b)
        assert isinstance(tp, list) and isinstance(ta, list) and isinstance(tb, list)
        assert len(tp) == len(ta) == len(tb) >= 1
        assert isinstance(tp[0], str) and tp[0]  # first prompt turn never blank
        assert all(t is None or len(t) < 1200 for t in ta + tb)
        n_multi += len(tp) > 1
    assert 0.08 <= n_multi / len(df) <= 0.18


def test_raw_csv_quirks(df, tmp_path):
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    text = path.read_text(encoding="utf-8")
    assert text.isascii()  # ensure_ascii=True, like the real file
    assert "\\ud83" in text  # emoji as surrogate-pair escapes
    assert "\\u00e9" in text or "\\u00f1" in text  # accented Latin
    responses = [t for col in ("response_a", "response_b") for c in df[col] for t in _turns(c)]
    n_null = sum(t is None for t in responses)
    n_empty = sum(t == "" for t in responses)
    assert 0.003 <= n_null / len(responses) <= 0.03
    assert 0.003 <= n_empty / len(responses) <= 0.03
    assert "null" in text and '""' in text
    back = pd.read_csv(path)
    assert list(back.columns) == COLUMNS
    assert back["prompt"].tolist() == df["prompt"].tolist()


def test_signal_length_predicts_winner(df):
    # A trivial feature (longer response wins) must beat chance on decisive rows,
    # otherwise a trained model has nothing to learn beyond the label prior.
    decisive = df[df["winner_tie"] == 0]
    diff = decisive["response_a"].map(_chars) - decisive["response_b"].map(_chars)
    keep = diff != 0
    acc = ((diff[keep] > 0) == (decisive["winner_model_a"][keep] == 1)).mean()
    assert acc > 0.65, acc


def test_signal_refusal_loses(df):
    refused_a = df["response_a"].str.contains("I'm sorry|I apologize|As an AI|Sorry, I", regex=True)
    assert refused_a.mean() > 0.05
    assert df.loc[refused_a, "winner_model_a"].mean() < 0.2


def test_same_style_ties_more(df):
    # Length is a proxy for style: near-equal lengths should tie more often.
    diff = (df["response_a"].map(_chars) - df["response_b"].map(_chars)).abs()
    close = diff < diff.quantile(0.2)
    far = diff > diff.quantile(0.8)
    assert df.loc[close, "winner_tie"].mean() > df.loc[far, "winner_tie"].mean() + 0.1
