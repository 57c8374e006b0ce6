"""Pure functions: discriminator probabilities -> importance weights; selection rules.

No Ray, no torch: numpy and pandas on the scores table (columns `sample_id`, `domain`, `split`,
`label`, `p_target`, `weight`, `pred`, `confidence`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["WEIGHTINGS", "density_ratio", "iwan", "iwc", "importance_weights", "normalise",
           "ranked", "iwcv_risk", "dev_risk", "select_source", "random_source", "select_target",
           "class_quotas", "sample_source",
           "candidates"]


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


def iwan(p: np.ndarray, clip: float = 0.01) -> np.ndarray:
    """IWAN weights (Zhang et al. 2018) before normalisation: 1 - D(x), where D(x) is the
    discriminator's P(source | x) = 1 - p. Normalise them to mean 1 over the source with
    `normalise`.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    return 1.0 - (1.0 - p)


def iwc(p: np.ndarray, clip: float = 0.01, cap: float = 20.0) -> tuple[np.ndarray, int]:
    """The instance-based classifier weighting of ADAPT's IWC: w = 1/P(source | x) - 1, with
    P(source | x) = 1 - p, clipped and capped. No domain-size factor: with a class-balanced
    discriminator it equals `density_ratio`; with an unbalanced one it keeps the prior ratio.

    Returns (weights, number capped).
    """
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    w = 1.0 / (1.0 - p) - 1.0
    capped = int((w > cap).sum())
    return np.minimum(w, cap), capped


def normalise(w: np.ndarray, mean: float | None = None) -> np.ndarray:
    """Weights divided by their mean (or by a given `mean`, e.g. over the whole source)."""
    w = np.asarray(w, dtype=np.float64)
    m = float(np.mean(w)) if mean is None else float(mean)
    if not m > 0:
        raise ValueError("weights must have a positive mean to be normalised")
    return w / m


WEIGHTINGS = ("density_ratio", "iwan", "iwc")


def importance_weights(method: str, p: np.ndarray, n_source: int = 1, n_target: int = 1,
                       clip: float = 0.01, cap: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample weights of `method` (one of WEIGHTINGS) and a capped mask.

    `iwan` weights come out unnormalised (mean over the source applied by the score stage).
    """
    p = np.asarray(p, dtype=np.float64)
    if method == "density_ratio":
        pc = np.clip(p, clip, 1 - clip)
        raw = pc / (1 - pc) * (n_source / n_target)
        w, _ = density_ratio(p, n_source, n_target, clip, cap)
        return w, raw > cap
    if method == "iwc":
        pc = np.clip(p, clip, 1 - clip)
        raw = 1.0 / (1.0 - pc) - 1.0
        w, _ = iwc(p, clip, cap)
        return w, raw > cap
    if method == "iwan":
        return iwan(p, clip), np.zeros(len(p), dtype=bool)
    raise ValueError(f"unknown weighting {method!r}: choose from {list(WEIGHTINGS)}")


def iwcv_risk(losses: np.ndarray, w: np.ndarray) -> float:
    """Importance-weighted validation risk (Sugiyama et al. 2007): mean of w_i * loss_i over
    labeled source validation samples, an estimate of the target risk without target labels."""
    losses, w = np.asarray(losses, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if len(losses) == 0:
        return float("nan")
    return float(np.mean(w * losses))


def dev_risk(losses: np.ndarray, w: np.ndarray) -> float:
    """Deep Embedded Validation (You et al., ICML 2019): IWCV with the weights as a control
    variate (their expectation is 1), which lowers the estimate's variance.

    With L = w * loss: risk = mean(L) + eta * mean(w) - eta, eta = -Cov(L, w) / Var(w).
    """
    losses, w = np.asarray(losses, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if len(losses) < 2:
        return iwcv_risk(losses, w)
    weighted = w * losses
    var = float(np.var(w, ddof=1))
    if not var > 0:
        return float(np.mean(weighted))
    eta = -float(np.cov(weighted, w, ddof=1)[0, 1]) / var
    return float(np.mean(weighted) + eta * np.mean(w) - eta)


def _eligible_source(scores: pd.DataFrame, target_classes: list[int]) -> pd.DataFrame:
    """Source train rows whose class the target has (partial domain adaptation)."""
    s = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    return s[s["label"].isin(target_classes)]


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows by importance weight, highest first; ties (weights capped, or p clipped at the
    floor) broken by the calibrated logit `logit_target` (it does not saturate as p does), then
    sample_id. The one ranking of source samples (selection, the report, the stats)."""
    key = "logit_target" if "logit_target" in rows else "p_target"
    return rows.sort_values(["weight", key, "sample_id"], ascending=[False, False, True],
                            kind="mergesort")


def select_source(scores: pd.DataFrame, target_classes: list[int], rule: str = "top_fraction",
                  fraction: float = 0.25, threshold: float = 1.0,
                  per_class: int = 100, balanced: bool = False) -> pd.DataFrame:
    """Source candidates by importance weight (the order of `ranked`).

    Rules: `top_fraction` of the eligible pool, weight >= `threshold`, or the `per_class` highest
    per target class. Source classes the target lacks are never selected.
    balanced: `top_fraction` takes the top `fraction` of each class instead of the pool's (the
    same number of samples, the source's class mix kept): a discriminator that finds some
    classes more target-like than others must not starve the rest.
    """
    pool = ranked(_eligible_source(scores, target_classes))
    if rule == "top_fraction" and balanced:
        sizes = pool.groupby("label").size()
        take = {c: int(round(fraction * n)) for c, n in sizes.items()}
        rank_in_class = pool.groupby("label").cumcount()
        return pool[rank_in_class.to_numpy() < pool["label"].map(take).to_numpy()]
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


def sample_source(pool: pd.DataFrame, alpha: float, n: int, seed: int) -> pd.DataFrame:
    """`n` draws from `pool` with replacement in proportion to `weight ** alpha` (seeded): the
    rows drawn at least once, sorted by `sample_id`, with their number of draws in `copies`.

    Importance *sampling*, not a weighted loss: with near-perfect discriminators the weights
    span three orders of magnitude, and a uniform pass with weighted losses spends most steps
    on images that weigh nothing and lets one heavy image dominate a batch (on the demo pair
    the weighted loss over the whole source reached 0.83-0.85 target val, below the unweighted
    all-source 0.95). alpha 0 draws uniformly (a bootstrap of the whole source)."""
    if not len(pool) or n <= 0:
        return pool.iloc[:0].assign(copies=np.zeros(0, np.int64))
    ordered = pool.sort_values("sample_id")
    p = np.power(np.maximum(ordered["weight"].to_numpy(np.float64), 0.0), alpha)
    p = p / p.sum() if p.sum() > 0 else np.full(len(ordered), 1.0 / len(ordered))
    counts = np.random.default_rng([seed, 29]).multinomial(n, p)
    return ordered[counts > 0].assign(copies=counts[counts > 0].astype(np.int64))


def select_target(unlabeled: pd.DataFrame, strategy: str, n: int, confidence_floor: float,
                  seed: int = 0) -> pd.DataFrame:
    """Target candidates from the unlabeled pool, pseudo-labeled by column `pred`.

    Strategies:
        discriminator: confident (>= floor) samples chosen for what they teach: the same
            number from each class the model predicts (water-filled when a class has too
            few), spread evenly over each class's confidence ranks rather than its most
            confident (those teach the model what it already knows: on the digits pair random
            picks beat the most confident and source-like ones on 3 of 3 seeds). The
            discriminator's view is a loss weight, not a filter: column `loss_weight`, mean 1,
            from 0.5 (the most target-like) to 1.5 (the most source-like, where a model with
            source knowledge is most trustworthy), by percentile rank of 1 - p_target.
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
    if strategy == "confidence":
        order = np.argsort(-confident["confidence"].to_numpy(), kind="mergesort")
        return confident.iloc[order[:n]]
    if strategy != "discriminator":
        raise ValueError(f"unknown target strategy {strategy!r}")
    picks = _balanced_spread(confident, n)
    if not len(picks):
        return picks
    w = 0.5 + (1 - picks["p_target"]).rank(pct=True, method="average").to_numpy()
    return picks.assign(loss_weight=normalise(w))


def class_quotas(sizes: dict, n: int) -> dict:
    """How many of `n` picks each class gets: equal shares, a class with fewer rows than its
    share gives the rest to the others (water-filling); `sizes`: class -> rows."""
    take = {c: 0 for c in sizes}
    left = min(n, sum(sizes.values()))
    while left > 0:
        open_ = sorted((c for c in sizes if take[c] < sizes[c]), key=lambda c: (take[c], c))
        share = max(1, left // len(open_))
        for c in open_:
            add = min(share, sizes[c] - take[c], left)
            take[c] += add
            left -= add
            if not left:
                break
    return take


def _balanced_spread(pool: pd.DataFrame, n: int) -> pd.DataFrame:
    """`class_quotas` of `n` by `pred`, each class's picks evenly spaced over its rows ranked
    by confidence (the most confident and the least, and between)."""
    groups = {c: g.sort_values(["confidence", "sample_id"], ascending=[False, True])
              for c, g in pool.groupby("pred", sort=True)}
    take = class_quotas({c: len(g) for c, g in groups.items()}, n)
    parts = [g.iloc[np.round(np.linspace(0, len(g) - 1, take[c])).astype(int)]
             for c, g in groups.items() if take[c]]
    return pd.concat(parts).sort_values("sample_id") if parts else pool.iloc[:0]


def candidates(source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """The candidates manifest: sample_id, pool, label (true or pseudo), weight, p_target."""
    src = pd.DataFrame({"sample_id": source["sample_id"], "pool": "source",
                        "label": source["label"].astype(int), "weight": source["weight"],
                        "p_target": source["p_target"]})
    tgt = pd.DataFrame({"sample_id": target["sample_id"], "pool": "target",
                        "label": target["pred"].astype(int), "weight": 1.0,
                        "p_target": target["p_target"]})
    return pd.concat([src, tgt], ignore_index=True)
