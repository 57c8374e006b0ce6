"""The fine-tune search's design, in pandas and numpy (no Ray, no torch): its cells, the
settings every cell trains with, each cell's members and the training sets built from them.

The stage (`stages/finetune.py`) only drives Tune over what is decided here, so every rule that
gives the baselines the method's budget is unit-tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dtl_ray.config import FinetuneConfig
from dtl_ray.data.samples import SAMPLE_ID
from dtl_ray.method import batches, weighting

__all__ = ["ARMS", "UNLABELED_ARMS", "Cell", "make_cells", "settings_grid", "members",
           "source_loss_weights", "members_table", "source_val_sample", "as_train_set", "train_set"]

ARMS = ["method", "random_subset", "target_only", "all_source", "self_training", "fixmatch",
        "adamatch"]
"""The fine-tuned arms: the method and the fine-tuned baselines (docs/method.md)."""
UNLABELED_ARMS = {"method", "random_subset", "self_training", "fixmatch", "adamatch"}
"""The arms that learn from the unlabeled target pool (with the consistency term, when on)."""
STRATEGY_ARM = {"discriminator": "method", "random": "random_subset"}


@dataclass(frozen=True)
class Cell:
    """One point of the data axes of the search."""

    arm: str
    strategy: str  # discriminator | weighted | random | confidence | none | all
    source_fraction: float
    target_fraction: float
    alpha: float | None = None
    """`weighted` cells: the whole source, drawn in proportion to `w ** alpha`."""
    consistency: bool = False
    """Trains with the consistency term on the unlabeled target pool."""


def make_cells(f: FinetuneConfig, default_target_fraction: float,
               has_unlabeled: bool = True) -> list[Cell]:
    """Every (strategy, source fraction, target fraction) the search covers.

    `target_only` (0, 0) and `all_source` (1, 0) always run; `self_training` runs at every
    positive target fraction (`default_target_fraction`, select's, when there is none). Each
    strategy also runs at source fraction 0 with every positive target fraction: transfer from
    the source may not help (docs/method.md), and the method must be able to take target
    candidates alone. The method's soft cells (`weighted`, source fraction 1) run at every
    alpha of `finetune.weight_alphas` and every target fraction: the whole source resampled
    by the discriminator's weights, so the method's space reaches the all-source end.

    With `finetune.consistency_weight` > 0 and an unlabeled pool, every cell of an arm that
    uses the pool (`UNLABELED_ARMS`) trains with the consistency term, and the practitioner's
    recipes run as their own arms on the same budget: `fixmatch` (labeled target + the
    term) and `adamatch` (labeled target and all source + the term).
    """
    cells = [Cell("target_only", "none", 0.0, 0.0), Cell("all_source", "all", 1.0, 0.0)]
    source_fractions = [0.0] + [s for s in f.source_fractions if s > 0]
    for strategy, sf, tf in itertools.product(f.strategies, source_fractions,
                                              f.target_fractions):
        if sf > 0 or tf > 0:
            cells.append(Cell(STRATEGY_ARM[strategy], strategy, sf, tf))
    cells += [Cell("method", "weighted", 1.0, tf, float(a))
              for a, tf in itertools.product(f.weight_alphas, f.target_fractions)]
    self_fracs = [t for t in f.target_fractions if t > 0] or [default_target_fraction]
    cells += [Cell("self_training", "confidence", 0.0, t) for t in self_fracs]
    if f.consistency_weight > 0 and has_unlabeled:
        cells += [Cell("fixmatch", "none", 0.0, 0.0), Cell("adamatch", "all", 1.0, 0.0)]
        cells = [dataclasses.replace(c, consistency=c.arm in UNLABELED_ARMS) for c in cells]
    return cells


def settings_grid(f: FinetuneConfig, seed: int) -> list[dict]:
    """`num_samples` settings drawn once (seeded) from lr x train_layers x candidate_weight;
    every cell trains with all of them (the same budget for every arm)."""
    grid = list(itertools.product(f.lr, f.train_layers, f.candidate_weight))
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(grid))[:f.num_samples] if f.num_samples < len(grid) else \
        np.resize(np.arange(len(grid)), f.num_samples)
    return [{"lr": grid[i][0], "train_layers": grid[i][1], "candidate_weight": grid[i][2]}
            for i in picks]


def members(cell: Cell, scores: pd.DataFrame, unlabeled: pd.DataFrame, classes: list[int],
            seed: int, confidence_floor: float,
            balanced: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(source candidates, target candidates) of a cell.

    scores: the score stage's table; unlabeled: pseudo-labeled unlabeled target rows
    (sample_id, pred, confidence, p_target). Random and confidence-only cells take exactly as
    many samples as the discriminator's choice at the same fractions. balanced: the source
    fraction is taken per class (`select.balance_classes`).
    """
    seed = seed + int(cell.source_fraction * 1000) + int(cell.target_fraction * 10)
    if cell.strategy == "all":
        src = weighting.select_source(scores, classes, "top_fraction", 1.0)
    elif cell.strategy == "weighted":
        pool = weighting.select_source(scores, classes, "top_fraction", 1.0)
        src = weighting.sample_source(pool, cell.alpha, len(pool),
                                      seed + int(cell.alpha * 100_003))
    elif cell.source_fraction > 0:
        src = weighting.select_source(scores, classes, "top_fraction", cell.source_fraction,
                                      balanced=balanced)
        if cell.strategy == "random":
            src = weighting.random_source(scores, classes, len(src), seed)
    else:
        src = scores.iloc[:0]
    tgt = unlabeled.iloc[:0]
    if cell.target_fraction > 0:
        n = int(round(cell.target_fraction * len(unlabeled)))
        tgt = weighting.select_target(unlabeled, "discriminator", n, confidence_floor)
        if cell.strategy in ("random", "confidence"):  # same size as the discriminator's
            tgt = weighting.select_target(unlabeled, cell.strategy, len(tgt), confidence_floor,
                                          seed)
    return src, tgt


def source_loss_weights(w: np.ndarray, weight_by_w: bool) -> np.ndarray:
    """The source candidates' loss weights: `w` normalised to mean 1 with `weight_by_w`, else
    1 each (a soft cell's weights are in how often each image was drawn)."""
    w = np.asarray(w, dtype=np.float64)
    if not len(w) or not weight_by_w or not w.mean() > 0:
        return np.ones(len(w))
    return weighting.normalise(w)


def _target_loss_weights(tgt: pd.DataFrame) -> np.ndarray:
    """The discriminator's weights of its target picks (`weighting.select_target`); 1 for
    the random and confidence picks."""
    if "loss_weight" in tgt:
        return tgt["loss_weight"].to_numpy(np.float64)
    return np.ones(len(tgt))


def members_table(labeled: pd.DataFrame, src: pd.DataFrame, tgt: pd.DataFrame, local: dict,
                  weight_by_w: bool) -> pd.DataFrame:
    """A cell's members, one row each: labeled target, then source candidates (true labels),
    then target candidates (pseudo-labels); `y` the label among the target's classes
    (`local`: global class id -> index), `w` the loss weight before `candidate_weight`
    (`source_loss_weights`; the target picks' `loss_weight`), `copies` (how often a soft
    cell drew it; 1 elsewhere), `labeled`."""
    w = source_loss_weights(src["weight"].to_numpy(float), weight_by_w)
    labels = list(labeled["label"]) + list(src["label"]) + list(tgt["pred"])
    n = len(labeled) + len(src) + len(tgt)
    return pd.DataFrame({
        SAMPLE_ID: list(labeled[SAMPLE_ID]) + list(src[SAMPLE_ID]) + list(tgt[SAMPLE_ID]),
        "y": np.array([local[int(v)] for v in labels], dtype=np.int64),
        "w": np.concatenate([np.ones(len(labeled)), w, _target_loss_weights(tgt)]),
        "copies": np.concatenate([np.ones(len(labeled), np.int64),
                                  src["copies"].to_numpy(np.int64) if "copies" in src
                                  else np.ones(len(src), np.int64),
                                  np.ones(len(tgt), np.int64)]),
        "labeled": np.arange(n) < len(labeled)})


def source_val_sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A fixed, seeded sample of `n` rows (all when `n` is 0 or covers them), stratified by
    `label`: each class keeps its share (largest remainders), at least one row each."""
    if n <= 0 or len(rows) <= n:
        return rows
    sizes = rows.groupby("label").size()
    quota = sizes / sizes.sum() * n
    take = np.maximum(1, np.floor(quota).astype(int))
    for c in (quota - np.floor(quota)).sort_values(ascending=False).index:
        if take.sum() >= n:
            break
        take[c] += 1
    rng = np.random.default_rng([seed, 17])
    order = rows.sort_values(SAMPLE_ID).assign(_r=lambda d: rng.permutation(len(d)))
    ranked = order.sort_values("_r")
    kept = ranked[ranked.groupby("label").cumcount().to_numpy()
                  < ranked["label"].map(take).to_numpy()]
    return kept.drop(columns="_r").sort_values(SAMPLE_ID)


def as_train_set(members: pd.DataFrame, pos: dict | None = None) -> batches.TrainSet:
    """A members table as a TrainSet (`pos`: sample_id -> row of an image array; default:
    the table's own row order), a row drawn k times (`copies`) k times in it."""
    index = (np.array([pos[i] for i in members[SAMPLE_ID]], dtype=np.int64) if pos is not None
             else np.arange(len(members), dtype=np.int64))
    k = (members["copies"].to_numpy(np.int64) if "copies" in members
         else np.ones(len(members), np.int64))
    return batches.TrainSet(index=np.repeat(index, k),
                            label=np.repeat(members["y"].to_numpy(np.int64), k),
                            weight=np.repeat(members["w"].to_numpy(np.float64), k),
                            labeled=np.repeat(members["labeled"].to_numpy(bool), k))


def train_set(labeled: pd.DataFrame, src: pd.DataFrame, tgt: pd.DataFrame, pos: dict,
              local: dict, weight_by_w: bool) -> batches.TrainSet:
    """`members_table` as rows of an image array (`pos`: sample_id -> row)."""
    return as_train_set(members_table(labeled, src, tgt, local, weight_by_w), pos)
