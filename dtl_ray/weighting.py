"""Pure functions: discriminator probabilities -> importance weights; selection rules.

No Ray, no torch: numpy and pandas on the scores table (columns `sample_id`, `domain`, `split`,
`label`, `p_target`, `weight`, `pred`, `confidence`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["density_ratio", "select_source", "random_source", "select_target", "candidates"]


def density_ratio(p: np.ndarray, n_source: int, n_target: int, clip: float = 0.01,
                  cap: float = 20.0) -> tuple[np.ndarray, int]:
    """Importance weights w = p/(1-p) * N_s/N_t (Bickel et al. 2009), clipped and capped.

    Args:
        p: discriminator probabilities P(target | x).
        n_source, n_target: the domain sizes as the discriminator saw them. With a
            class-balanced loss both domains weigh the same: pass equal numbers.
        clip: p is clipped to [clip, 1 - clip] first.
        cap: weights above it are set to it.

    Returns:
        (weights, number of weights that were capped).
    """
    if n_source <= 0 or n_target <= 0:
        raise ValueError("n_source and n_target must be positive")
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    w = p / (1 - p) * (n_source / n_target)
    capped = int((w > cap).sum())
    return np.minimum(w, cap), capped


def _eligible_source(scores: pd.DataFrame, target_classes: list[int]) -> pd.DataFrame:
    """Source train rows whose class the target has (partial domain adaptation)."""
    s = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    return s[s["label"].isin(target_classes)]


def select_source(scores: pd.DataFrame, target_classes: list[int], rule: str = "top_fraction",
                  fraction: float = 0.25, threshold: float = 1.0,
                  per_class: int = 100) -> pd.DataFrame:
    """Source candidates by importance weight; ties (capped weights) are broken by p_target,
    then sample_id.

    Rules: `top_fraction` of the eligible pool, weight >= `threshold`, or the `per_class` highest
    per target class. Source classes the target lacks are never selected.
    """
    pool = _eligible_source(scores, target_classes)
    pool = pool.sort_values(["weight", "p_target", "sample_id"], ascending=[False, False, True],
                            kind="mergesort")
    if rule == "top_fraction":
        return pool.head(int(round(fraction * len(pool))))
    if rule == "threshold":
        return pool[pool["weight"] >= threshold]
    if rule == "per_class":
        return pool.groupby("label", sort=True, group_keys=False).head(per_class)
    raise ValueError(f"unknown selection rule {rule!r}")


def random_source(scores: pd.DataFrame, target_classes: list[int], n: int,
                  seed: int) -> pd.DataFrame:
    """`n` source candidates drawn uniformly from the eligible pool (the random control)."""
    pool = _eligible_source(scores, target_classes).sort_values("sample_id")
    n = min(n, len(pool))
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return pool.iloc[np.sort(idx)]


def select_target(unlabeled: pd.DataFrame, strategy: str, n: int, confidence_floor: float,
                  seed: int = 0) -> pd.DataFrame:
    """Target candidates from the unlabeled pool, pseudo-labeled by column `pred`.

    Strategies:
        discriminator: confident (>= floor) samples that look most source-like, ranked by
            confidence * (1 - p_target);
        confidence: the most confident samples (self-training; no discriminator);
        random: uniform draw (the random control).
    """
    if n <= 0 or len(unlabeled) == 0:
        return unlabeled.iloc[:0]
    pool = unlabeled.sort_values("sample_id")
    if strategy == "random":
        idx = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
        return pool.iloc[np.sort(idx)]
    confident = pool[pool["confidence"] >= confidence_floor]
    if strategy == "discriminator":
        rank = confident["confidence"] * (1 - confident["p_target"])
    elif strategy == "confidence":
        rank = confident["confidence"]
    else:
        raise ValueError(f"unknown target strategy {strategy!r}")
    order = np.argsort(-rank.to_numpy(), kind="mergesort")
    return confident.iloc[order[:n]]


def candidates(source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """The candidates manifest: sample_id, pool, label (true or pseudo), weight, p_target."""
    src = pd.DataFrame({"sample_id": source["sample_id"], "pool": "source",
                        "label": source["label"].astype(int), "weight": source["weight"],
                        "p_target": source["p_target"]})
    tgt = pd.DataFrame({"sample_id": target["sample_id"], "pool": "target",
                        "label": target["pred"].astype(int), "weight": 1.0,
                        "p_target": target["p_target"]})
    return pd.concat([src, tgt], ignore_index=True)
