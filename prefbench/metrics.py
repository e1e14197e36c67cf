"""Scores and small helpers for the metrics files.

torch and scikit-learn are imported where used: the data stages write their metrics with this
module and need neither (about 5 s of imports per stage process on a CPU machine).
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prefbench.data import LABEL_NAMES

if TYPE_CHECKING:
    import torch

# Kaggle's log-loss clips probabilities to [eps, 1 - eps] and renormalises each row.
EPS = 1e-15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, row by row (the row's max subtracted first: no overflow)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import log_loss as sk_log_loss

    probs = np.clip(probs, EPS, 1 - EPS)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(sk_log_loss(labels, probs, labels=list(range(len(LABEL_NAMES)))))


def prior_log_loss(train_labels: np.ndarray, val_labels: np.ndarray) -> float:
    """Log-loss of always predicting the training label frequencies: the bar to beat."""
    prior = np.bincount(train_labels, minlength=len(LABEL_NAMES)) / len(train_labels)
    return log_loss(val_labels, np.tile(prior, (len(val_labels), 1)))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, probs.argmax(axis=1)))


def calibration_rows(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """One-vs-rest reliability points per class, for `dvc plots` (x: predicted, y: observed)."""
    from sklearn.calibration import calibration_curve

    rows = []
    for k, name in enumerate(LABEL_NAMES):
        observed, predicted = calibration_curve(labels == k, probs[:, k], n_bins=bins, strategy="quantile")
        rows += [{"class": name, "predicted": round(float(p), 4), "observed": round(float(o), 4)}
                 for p, o in zip(predicted, observed)]
    return rows


def peak_memory_gb(*devices: torch.device) -> float:
    """Peak GPU memory allocated by torch (the largest over `devices`), or on CPU the peak resident
    set of this process."""
    gpus = [d for d in devices if d.type == "cuda"]
    if gpus:
        import torch

        return round(max(torch.cuda.max_memory_allocated(d) for d in gpus) / 1e9, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)  # Linux: KiB


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(device)


def round_floats(d: dict, digits: int = 6) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


def write_json(path: str | Path, data: dict | list) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
