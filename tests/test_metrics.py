import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from prefbench.metrics import accuracy, calibration_rows, log_loss, prior_log_loss


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    probs = rng.dirichlet([1, 1, 1], 500)
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-9)


def test_uniform_is_ln3_and_zero_probabilities_are_clipped():
    labels = np.array([0, 1, 2, 0])
    assert log_loss(labels, np.full((4, 3), 1 / 3)) == pytest.approx(1.0986, abs=1e-4)
    hard = np.eye(3)[[1, 1, 2, 0]]  # first row is confidently wrong
    value = log_loss(labels, hard)
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-15) / 4, rel=1e-3)


def test_prior_and_accuracy():
    train = np.array([0] * 35 + [1] * 35 + [2] * 30)
    val = np.array([0, 1, 2, 2])
    expected = -np.mean(np.log([0.35, 0.35, 0.30, 0.30]))
    assert prior_log_loss(train, val) == pytest.approx(expected)
    assert accuracy(val, np.eye(3)[[0, 1, 1, 2]]) == 0.75


def test_calibration_rows_cover_each_class():
    rng = np.random.default_rng(1)
    rows = calibration_rows(rng.integers(0, 3, 300), rng.dirichlet([1, 1, 1], 300), bins=5)
    assert {r["class"] for r in rows} == {"a", "b", "tie"}
    assert all(0 <= r["predicted"] <= 1 and 0 <= r["observed"] <= 1 for r in rows)
