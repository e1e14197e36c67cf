import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from prefbench.metrics import accuracy, calibration_rows, log_loss, prior_log_loss


def test_log_loss_is_sklearns_with_kaggles_1e15_clip():
    """sklearn where nothing needs clipping; a zero on the true class costs -ln(1e-15) = 34.54 nats
    (Kaggle's clip), not sklearn's own float-eps clip (-ln(2.2e-16) = 36.04)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    probs = rng.dirichlet([1, 1, 1], 500)
    assert log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-9)
    wrong = np.eye(3)[(labels[:20] + 1) % 3]  # 20 rows, certain and wrong
    all_labels, all_probs = np.concatenate([labels, labels[:20]]), np.vstack([probs, wrong])
    expected = (500 * sk_log_loss(labels, probs) + 20 * -np.log(1e-15)) / 520
    assert log_loss(all_labels, all_probs) == pytest.approx(expected, rel=1e-9)
    assert sk_log_loss(labels[:20], wrong, labels=[0, 1, 2]) > 35.5  # the clip is what makes the difference


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
    """Labels drawn from the predicted probabilities (calibrated by construction): every class gets
    its own `bins` points, each on the diagonal (observed frequency of that class = its mean
    predicted probability, within 0.05: ~3.5 binomial sigmas at 1200 rows a bin); a class scored
    against another class's column or labels would leave it."""
    rng = np.random.default_rng(1)
    n = 6000
    probs = rng.dirichlet([1, 1, 1], n)
    labels = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)  # label k with probability probs[:, k]
    rows = calibration_rows(labels, probs, bins=5)
    for name in ("a", "b", "tie"):
        points = [r for r in rows if r["class"] == name]
        assert len(points) == 5, name
        assert all(abs(r["observed"] - r["predicted"]) < 0.05 for r in points), (name, points)
        assert points[-1]["predicted"] > 0.5 > points[0]["predicted"]  # the bins span the probabilities
    assert len(rows) == 15
