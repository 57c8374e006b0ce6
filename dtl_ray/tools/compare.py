"""Comparisons a reader can trust (numpy only): the method against each baseline, paired by
seed and by test image.

- per seed: the difference of test accuracies (the same test images, the same split);
- over seeds: its mean, standard deviation and the seeds the method won;
- a paired bootstrap over test images: each seed's test images resampled with replacement
  (the same draw for both models), the mean over seeds of the difference recomputed, its 95%
  interval. An interval that holds 0 is "within noise": the test set cannot tell them apart.

Not a correction for choosing on val: that choice is in each seed's number, which is why
seeds are repeated.
"""

from __future__ import annotations

import statistics

import numpy as np

__all__ = ["mean_sd", "correct_bits", "paired_interval", "call", "differences"]

BOOTSTRAP = 2000
"""Bootstrap resamples."""


def mean_sd(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def correct_bits(pred: np.ndarray, label: np.ndarray) -> str:
    """Per test image, 1 where the prediction is right: a compact string for bench.json."""
    return "".join("1" if ok else "0" for ok in np.asarray(pred) == np.asarray(label))


def paired_interval(pairs: list[tuple[str, str]], seed: int = 0,
                    n: int = BOOTSTRAP) -> tuple[float, float]:
    """The 95% bootstrap interval of the mean over seeds of accuracy(a) - accuracy(b).

    pairs: per seed, the `correct_bits` of a and of b on the same test images.
    """
    rng = np.random.default_rng(seed)
    draws = np.zeros(n)
    for a, b in pairs:
        d = (np.frombuffer(a.encode(), np.uint8).astype(np.float64)
             - np.frombuffer(b.encode(), np.uint8))  # (images,) in {-1, 0, 1}
        idx = rng.integers(0, len(d), (n, len(d)))
        draws += d[idx].mean(1)
    draws /= max(len(pairs), 1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def call(lo: float, hi: float) -> str:
    """`better`, `worse`, or `within noise` (the interval holds 0)."""
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "within noise"


def differences(seeds: list[dict], rows: list[str]) -> dict:
    """Per row but the first (the method): mean and sd over seeds of (method - row) target
    test accuracy, the seeds the method won (strictly higher), and, where the seeds carry
    their test images' `correct` bits, the paired bootstrap interval and its call."""
    out = {}
    for r in rows[1:]:
        have = [s for s in seeds if s["accuracy"].get(r) is not None
                and s["accuracy"].get("method") is not None]
        d = [s["accuracy"]["method"] - s["accuracy"][r] for s in have]
        if not d:
            continue
        out[r] = {**mean_sd(d), "wins": sum(x > 0 for x in d), "per_seed": d}
        bits = [(s["correct"]["method"], s["correct"][r]) for s in have
                if r in s.get("correct", {}) and "method" in s.get("correct", {})]
        if bits and len(bits) == len(have):
            lo, hi = paired_interval(bits)
            out[r].update(interval=[lo, hi], call=call(lo, hi))
    return out
