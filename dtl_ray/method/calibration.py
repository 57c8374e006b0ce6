"""Out-of-fold discriminator scores and their calibration, in numpy (no Ray, no torch).

A discriminator scores the very source images it was trained on: with a flexible D those scores
are memorised, not estimated. Cross-fitting fixes that: the training rows are split into `k`
folds by a hash of their `sample_id`; D_j trains on every fold but j, and a training row of
fold j is scored by D_j only. Rows no D trained on (held out, val, test) get the mean of the
k calibrated logits.

Each D_j's logits are then calibrated on its own out-of-fold rows by Platt scaling
(p = sigmoid(a * z + b), Platt 1999, with his smoothed targets so that separable domains give a
finite slope): the folds' scores become comparable, and `p` a probability whose error can be
measured (`expected_calibration_error`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

__all__ = ["heldout_mask", "in_training", "fold_of", "HELD_OUT", "fit_platt", "apply_platt",
           "expected_calibration_error", "reliability", "roc_points", "sigmoid", "near_perfect",
           "effective_sample_size"]

HELD_OUT = -1
"""`fold_of` for a row no discriminator trained on."""


def _unit_hash(sample_ids: pd.Series | list[str], salt: str) -> np.ndarray:
    ids = list(sample_ids)
    return np.array([int(hashlib.md5((salt + s).encode()).hexdigest()[:8], 16) / 16**8
                     for s in ids], dtype=np.float64)


def heldout_mask(sample_ids, fraction: float) -> np.ndarray:
    """A stable held-out split: a sample is held out when the hash of its id says so."""
    return _unit_hash(sample_ids, "") < fraction


def in_training(domain, split, sample_ids, heldout_fraction: float) -> np.ndarray:
    """Whether each row is in D's training set: source train and target train + unlabeled,
    less the held-out part."""
    domain, split = np.asarray(domain), np.asarray(split)
    pool = (((domain == "source") & (split == "train"))
            | ((domain == "target") & ((split == "train") | (split == "unlabeled"))))
    out = np.zeros(len(pool), dtype=bool)
    if pool.any():
        ids = np.asarray(list(sample_ids), dtype=object)
        out[pool] = ~heldout_mask(ids[pool], heldout_fraction)
    return out


def fold_of(sample_ids, in_training: np.ndarray, k: int) -> np.ndarray:
    """The fold (0..k-1) of each row D's training set holds, `HELD_OUT` for the others.

    Stable: a hash of the id (salted apart from the held-out split's hash), so the score stage
    finds the same fold as the discriminate stage without being told.
    """
    in_training = np.asarray(in_training, dtype=bool)
    if k <= 1:
        return np.where(in_training, 0, HELD_OUT)
    folds = np.minimum((_unit_hash(sample_ids, "fold:") * k).astype(np.int64), k - 1)
    return np.where(in_training, folds, HELD_OUT)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """A sigmoid in float64 that neither overflows nor rounds small p to 0 early."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_platt(z: np.ndarray, y: np.ndarray, balanced: bool = True,
              iterations: int = 100) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a*z + b) fitted to labels `y` by Newton's method on the
    log-loss, with Platt's targets (N+ + 1)/(N+ + 2) and 1/(N- + 2).

    balanced: each class weighs half (as in D's own loss), so that p/(1-p) stays the density
    ratio with the domain sizes factored out.
    """
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    w = (np.where(y, 0.5 / n_pos, 0.5 / n_neg) if balanced
         else np.full(len(y), 1.0 / len(y)))
    def loss(a: float, b: float) -> float:
        zz = a * z + b  # log(1 + e^zz) - t*zz, stably
        return float(np.sum(w * (np.logaddexp(0, zz) - t * zz)))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = sigmoid(a * z + b)
        r = w * (p - t)  # gradient of the weighted log-loss by the logit
        s = w * p * (1 - p) + 1e-12
        grad = np.array([np.sum(r * z), np.sum(r)])
        hess = np.array([[np.sum(s * z * z), np.sum(s * z)], [np.sum(s * z), np.sum(s)]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        scale = 1.0  # backtracking: Newton's full step overshoots far from the optimum
        while scale > 1e-8 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        new = loss(a, b)
        if abs(current - new) < 1e-12 * max(1.0, abs(current)) or scale <= 1e-8:
            break
        current = new
    return float(a), float(b)


def apply_platt(z: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    """The calibrated logit a*z + b."""
    return ab[0] * np.asarray(z, dtype=np.float64) + ab[1]


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15,
                               balanced: bool = True) -> float:
    """ECE: over equal-width bins of p, the (weighted) mean |frequency of y - mean p|.

    balanced: rows weigh so that each class counts half (D's own prior), the prior under which
    a balanced D's p is meant to be calibrated.
    """
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    if len(p) == 0:
        return float("nan")
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    w = np.where(y, 0.5 / n_pos, 0.5 / n_neg) if balanced else np.full(len(p), 1 / len(p))
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += abs(np.sum(w[m] * y[m]) - np.sum(w[m] * p[m]))
    return float(ece / w.sum())


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[list[float]]:
    """The reliability diagram's points: per non-empty equal-width bin of p, [mean p, the
    share of target in it (domains weighing half each, as in the ECE), rows]."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    w = np.where(y, 0.5 / n_pos, 0.5 / n_neg)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append([round(float(p[m].mean()), 4),
                        round(float(np.sum(w[m] * y[m]) / np.sum(w[m])), 4), int(m.sum())])
    return out


def roc_points(p: np.ndarray, y: np.ndarray, points: int = 51) -> list[list[float]]:
    """The ROC curve at `points` thresholds (quantiles of p): [false positive rate, true
    positive rate] pairs from (0, 0) to (1, 1), target the positive class."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=bool)
    if not y.any() or y.all():
        return []
    cuts = np.unique(np.quantile(p, np.linspace(0, 1, points)))[::-1]
    curve = [[0.0, 0.0]]
    for c in cuts:
        hit = p >= c
        curve.append([round(float(hit[~y].mean()), 4), round(float(hit[y].mean()), 4)])
    return curve + ([[1.0, 1.0]] if curve[-1] != [1.0, 1.0] else [])


def near_perfect(auc: float, balanced_accuracy: float) -> bool:
    """Whether D separates the domains so well that p carries little beyond an order:
    held-out AUC at least 0.98 or balanced accuracy at least 0.95."""
    return bool(auc >= 0.98 or balanced_accuracy >= 0.95)


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size of weights, (sum w)^2 / sum w^2, as a fraction of len(w):
    1 when all weigh the same, 1/n when one carries everything."""
    w = np.asarray(w, dtype=np.float64)
    w = w[np.isfinite(w)]
    if len(w) == 0 or not (w ** 2).sum() > 0:
        return float("nan")
    return float(w.sum() ** 2 / (w ** 2).sum() / len(w))
