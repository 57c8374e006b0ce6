"""Stage 4: the candidates manifest from both pools of docs/method.md.

Source candidates: target-like source samples (highest weight) with their true labels, in the
target's classes only. Target candidates: confident, source-like unlabeled target samples with
the source model's prediction as pseudo-label (fine-tuning re-labels them with a target model).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.config import SelectConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import SelectResult
from dtl_ray.data import manifests
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.method import weighting
from dtl_ray.storage import parquet

__all__ = ["run"]


def _kinds(layout: RunLayout, source_train: pd.DataFrame, top: pd.DataFrame,
           src: pd.DataFrame, examples: int = 6) -> list[dict]:
    """Per kind of source image (`discriminate.clusters`): its size, its share in D's top
    fraction and among the source candidates, its mean p_target, and a few of its images
    (the most and the least target-like first)."""
    kinds = parquet.read_df(layout.source_clusters).merge(
        source_train[["sample_id", "p_target", "weight", "logit_target"]], on="sample_id")
    in_top, chosen = set(top["sample_id"]), set(src["sample_id"])
    out = []
    for k, g in kinds.groupby("cluster", sort=True):
        g = weighting.ranked(g)
        picks = list(g["sample_id"].iloc[np.unique(np.linspace(0, len(g) - 1, examples)
                                                   .round().astype(int))])
        out.append({"cluster": int(k), "images": int(len(g)),
                    "in_top_fraction": float(g["sample_id"].isin(in_top).mean()),
                    "selected": float(g["sample_id"].isin(chosen).mean()),
                    "mean_p_target": float(g["p_target"].mean()), "examples": picks})
    return out


def run(layout: RunLayout, select: SelectConfig) -> SelectResult:
    """Writes the candidates table; returns sizes and per-class kept fractions."""
    t0 = time.time()
    s = select
    manifest = manifests.load(layout)
    scores = read_scores(layout)
    classes = manifest.target_classes
    src = weighting.select_source(scores, classes, s.rule, s.fraction, s.threshold, s.per_class,
                                  s.balance_classes)
    unlabeled = scores[(scores["domain"] == "target") & (scores["split"] == "unlabeled")]
    n_target = int(round(s.target_fraction * len(unlabeled)))
    tgt = weighting.select_target(unlabeled, "discriminator", n_target, s.confidence_floor)
    cand = weighting.candidates(src, tgt)
    parquet.write_df(cand, layout.candidates)
    source_train = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    totals = source_train.groupby("label").size()
    kept = src.groupby("label").size().reindex(totals.index, fill_value=0)
    # the discriminator's own preference, before classes the target lacks are dropped: each
    # class's share kept in the top `fraction` of all source train by weight
    top = weighting.ranked(source_train).head(int(round(s.fraction * len(source_train))))
    top_kept = top.groupby("label").size().reindex(totals.index, fill_value=0)
    kinds = _kinds(layout, source_train, top, src) if storage.exists(
        layout.source_clusters) else None
    shared = [c for c in totals.index if int(c) in classes]
    absent = [c for c in totals.index if int(c) not in classes]
    return SelectResult(
        n_candidates=int(len(cand)), n_source=int(len(src)), n_target=int(len(tgt)),
        strategy="discriminator", rule=s.rule, fraction=s.fraction,
        target_fraction=s.target_fraction,
        kept_fraction_per_class={manifest.classes[int(c)]: float(kept[c] / totals[c])
                                 for c in totals.index},
        dropped_classes=[manifest.classes[int(c)] for c in absent],
        ranked_fraction_per_class={manifest.classes[int(c)]: float(top_kept[c] / totals[c])
                                   for c in totals.index},
        ranked_fraction_shared=float(top_kept[shared].sum() / max(totals[shared].sum(), 1)),
        ranked_fraction_absent=(float(top_kept[absent].sum() / totals[absent].sum())
                                if absent else None),
        source_clusters=kinds,
        seconds=round(time.time() - t0, 2))
