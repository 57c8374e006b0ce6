"""Stage 4: the candidates manifest from both pools of docs/method.md.

Source candidates: target-like source samples (highest weight) with their true labels, in the
target's classes only. Target candidates: confident, source-like unlabeled target samples with
the source model's prediction as pseudo-label (fine-tuning re-labels them with a target model).
"""

from __future__ import annotations

import time

from dtl_ray.config import SelectConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import SelectResult
from dtl_ray.data import manifests
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.method import weighting
from dtl_ray.storage import parquet

__all__ = ["run"]


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
        seconds=round(time.time() - t0, 2))
