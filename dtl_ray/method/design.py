"""The fine-tune search's design, in pandas and numpy (no Ray, no torch): its cells, the
settings every cell trains with, each cell's members and the training sets built from them.

The stage (`stages/finetune.py`) only drives Tune over what is decided here, so every rule that
gives the baselines the method's budget is unit-tested without a cluster.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dtl_ray.config import FinetuneConfig
from dtl_ray.data.samples import SAMPLE_ID
from dtl_ray.method import target_fit, weighting

__all__ = ["ARMS", "Cell", "make_cells", "settings_grid", "members", "members_table",
           "as_train_set", "train_set"]

ARMS = ["method", "random_subset", "target_only", "all_source", "self_training"]
"""The fine-tuned arms: the method and the fine-tuned baselines (docs/method.md)."""
STRATEGY_ARM = {"discriminator": "method", "random": "random_subset"}


@dataclass(frozen=True)
class Cell:
    """One point of the data axes of the search."""

    arm: str
    strategy: str  # discriminator | random | confidence | none | all
    source_fraction: float
    target_fraction: float


def make_cells(f: FinetuneConfig, default_target_fraction: float) -> list[Cell]:
    """Every (strategy, source fraction, target fraction) the search covers.

    `target_only` (0, 0) and `all_source` (1, 0) always run; `self_training` runs at every
    positive target fraction (`default_target_fraction`, select's, when there is none). Each
    strategy also runs at source fraction 0 with every positive target fraction: transfer from
    the source may not help (docs/method.md), and the method must be able to take target
    candidates alone.
    """
    cells = [Cell("target_only", "none", 0.0, 0.0), Cell("all_source", "all", 1.0, 0.0)]
    source_fractions = [0.0] + [s for s in f.source_fractions if s > 0]
    for strategy, sf, tf in itertools.product(f.strategies, source_fractions,
                                              f.target_fractions):
        if sf > 0 or tf > 0:
            cells.append(Cell(STRATEGY_ARM[strategy], strategy, sf, tf))
    self_fracs = [t for t in f.target_fractions if t > 0] or [default_target_fraction]
    cells += [Cell("self_training", "confidence", 0.0, t) for t in self_fracs]
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


def members_table(labeled: pd.DataFrame, src: pd.DataFrame, tgt: pd.DataFrame, local: dict,
                  weight_by_w: bool) -> pd.DataFrame:
    """A cell's members, one row each: labeled target, then source candidates (true labels),
    then target candidates (pseudo-labels); `y` the label among the target's classes
    (`local`: global class id -> index), `w` the loss weight before `candidate_weight` (1, or
    with weight_by_w the source candidates' mean-normalised importance weight), `labeled`."""
    w = src["weight"].to_numpy(float)
    w = w / w.mean() if weight_by_w and len(w) else np.ones(len(src))
    labels = list(labeled["label"]) + list(src["label"]) + list(tgt["pred"])
    n = len(labeled) + len(src) + len(tgt)
    return pd.DataFrame({
        SAMPLE_ID: list(labeled[SAMPLE_ID]) + list(src[SAMPLE_ID]) + list(tgt[SAMPLE_ID]),
        "y": np.array([local[int(v)] for v in labels], dtype=np.int64),
        "w": np.concatenate([np.ones(len(labeled)), w, np.ones(len(tgt))]),
        "labeled": np.arange(n) < len(labeled)})


def as_train_set(members: pd.DataFrame, pos: dict | None = None) -> target_fit.TrainSet:
    """A members table as a TrainSet (`pos`: sample_id -> row of an image array; default:
    the table's own row order)."""
    index = (np.array([pos[i] for i in members[SAMPLE_ID]], dtype=np.int64) if pos is not None
             else np.arange(len(members), dtype=np.int64))
    return target_fit.TrainSet(index=index, label=members["y"].to_numpy(np.int64),
                               weight=members["w"].to_numpy(np.float64),
                               labeled=members["labeled"].to_numpy(bool))


def train_set(labeled: pd.DataFrame, src: pd.DataFrame, tgt: pd.DataFrame, pos: dict,
              local: dict, weight_by_w: bool) -> target_fit.TrainSet:
    """`members_table` as rows of an image array (`pos`: sample_id -> row)."""
    return as_train_set(members_table(labeled, src, tgt, local, weight_by_w), pos)
