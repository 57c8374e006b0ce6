"""Stage 5: fine-tune target models, searching the settings with Ray Tune (ASHA).

`run` goes through five named phases, each in its own module:

1. `_setup`: what every run reads (target val decoded, source val rows, the backbone), as a
   typed `specs.SearchSetup`;
2. `teacher.fit`: a teacher fitted on labeled target + the selected source candidates;
3. `teacher.pseudo_labels`: the unlabeled target pool labeled by the teacher;
4. `_cells` then `search.run`: one Tune search over cells (strategy x source fraction x target
   fraction) times the same `num_samples` settings (lr, layers, candidate weight) per cell, so
   every baseline gets the method's budget. Cells: `target_only` (0, 0), `all_source` (1, 0),
   `method` (discriminator: hard top fractions, and soft cells of the whole source drawn in
   proportion to `w ** alpha`), `random_subset` (random, same sizes as the hard cells),
   `self_training` (confidence only);
5. `choice`: trials chosen on target val; each arm's best model saved for evaluation.

Nothing in the driver grows with the images: it holds tables of ids, labels and weights (the
cells' members, `cells.parquet`). Each trial (and the teacher) reads its own cell (`inputs`):
the labeled target and the source val sample decoded into its memory, the candidates too
when they fit `finetune.in_memory_mb`, else streamed through Ray Data every epoch. With
`finetune.workers_per_trial` >= 1 a trial trains on a `TorchTrainer` of that many workers (the
candidates split between them); with 0 in its own process (`trial`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from dtl_ray import console, storage
from dtl_ray.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
    ScoreConfig,
    SelectConfig,
)
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import FinetuneResult
from dtl_ray.data import manifests, readers
from dtl_ray.data.samples import SAMPLE_ID
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.method import batches, builders, design
from dtl_ray.stages.finetune import choice, inputs, search, teacher
from dtl_ray.stages.finetune.specs import SearchSetup
from dtl_ray.storage import parquet

__all__ = ["run"]

STAGE = "finetune"


def _setup(layout: RunLayout, finetune: FinetuneConfig, model: ModelConfig,
           pretrain: PretrainConfig, scaling: ScalingConfig, data: DataConfig,
           manifest: manifests.Manifest, scores: pd.DataFrame, good: set, local: dict,
           seed: int) -> SearchSetup:
    """Phase 1: target val decoded (few labels), source val with its weights (the
    label-free choice), the backbone to start from, the TorchTrainer backend. `good`: the
    rows the score stage read; `local`: global class id -> the target model's index."""
    from dtl_ray.raykit import train

    classes = list(local)
    reading = readers.reading(layout, data.max_image_pixels, data.max_rejected_fraction, STAGE)
    val = readers.collect(readers.good_rows(manifest.rows("target", "val"), model.frame,
                                            reading, ["image", "label"]))
    src_val = manifest.rows("source", "val").query("label in @classes")
    src_val = design.source_val_sample(src_val[src_val[SAMPLE_ID].isin(good)],
                                       finetune.source_val_samples, seed).assign(
        y=lambda d: [local[int(v)] for v in d["label"]],
        w=lambda d: np.nan_to_num(scores.set_index(SAMPLE_ID)["weight"].reindex(
            d[SAMPLE_ID]).to_numpy(float), nan=0.0))
    uses_train = finetune.workers_per_trial > 0 or finetune.teacher_workers > 0
    return SearchSetup(
        finetune=finetune, scaling=scaling, augment=builders.augment(pretrain), seed=seed,
        pretrain_model=layout.backbone_model(adapted=finetune.init == "adapted"),
        classes=classes, image_size=model.frame, reading=reading, cache=data.cache,
        shuffle_buffer=data.shuffle_buffer, val_images=val["image"],
        val_labels=np.array([local[int(v)] for v in val["label"]], dtype=np.int64),
        source_val_rows=src_val, progress=layout.progress, train_uri=layout.stage(STAGE),
        consistency=builders.consistency(finetune),
        # asked here, outside any trial's placement group (the probe needs a GPU)
        backend=train.backend(scaling.use_gpu) if uses_train else None)


def _cells(setup: SearchSetup, select: SelectConfig, labeled: pd.DataFrame,
           scores: pd.DataFrame, unlabeled: pd.DataFrame, local: dict):
    """Phase 4a: the cells and their members (ids, labels, weights: all the driver holds)."""
    f = setup.finetune
    cells = design.make_cells(f, select.target_fraction, has_unlabeled=len(unlabeled) > 0)
    tables = []
    for i, cell in enumerate(cells):
        src, tgt = design.members(cell, scores, unlabeled, setup.classes, setup.seed,
                                  select.confidence_floor, select.balance_classes)
        tables.append(design.members_table(labeled, src, tgt, local, f.weight_by_w)
                      .assign(cell=i))
    return cells, tables


def _epoch_lengths(f: FinetuneConfig, cells: list, tables: list, pool: int) -> list[int]:
    """Phase 4b: each cell's samples per epoch (`batches.epoch_lengths`; a cell with the
    consistency term also counts its pass over the unlabeled pool)."""
    passes = [batches.one_pass(design.as_train_set(t), f.mix_ratio,
                               -(-pool // f.unlabeled_ratio) if c.consistency else 0)
              for c, t in zip(cells, tables)]
    return batches.epoch_lengths(passes, f.min_epoch_samples, f.max_epoch_samples)


def run(layout: RunLayout, finetune: FinetuneConfig, select: SelectConfig, model: ModelConfig,
        pretrain: PretrainConfig, scaling: ScalingConfig, data: DataConfig, score: ScoreConfig,
        seed: int) -> FinetuneResult:
    """Teacher, pseudo-labels, the search, and each arm's chosen model. `pretrain` gives the
    augmentation, `select` the target pool's defaults, `data` the reading (pixel limit, cache,
    shuffle buffer), `score` the pseudo-labelling pool's batch and actors."""
    t0, f = time.time(), finetune
    manifest = manifests.load(layout)
    scores = read_scores(layout)
    good = set(scores[SAMPLE_ID])  # the rows the score stage read (rejected ones are not)
    local = {c: i for i, c in enumerate(manifest.target_classes)}
    setup = _setup(layout, f, model, pretrain, scaling, data, manifest, scores, good, local,
                   seed)
    labeled = manifest.rows("target", "train")
    labeled = labeled[labeled[SAMPLE_ID].isin(good)]
    console.detail(f"[finetune] {len(labeled)} labeled target, {len(setup.val_labels)} target "
                   f"val, {len(setup.source_val_rows)} source val (label-free choice)")

    unl_rows = manifest.rows("target", "unlabeled")
    unl_rows = unl_rows[unl_rows[SAMPLE_ID].isin(good)]
    best_teacher = teacher.fit(setup, layout, model, manifest.table, labeled, scores, local,
                               unl_rows)
    unlabeled = teacher.pseudo_labels(setup, layout, unl_rows, scores, score,
                                      data.max_image_pixels)

    cells, tables = _cells(setup, select, labeled, scores, unlabeled, local)
    members = pd.concat(tables, ignore_index=True)
    parquet.write_df(members, storage.join(layout.stage(STAGE), "cells.parquet"))
    settings = design.settings_grid(f, seed)
    epochs = _epoch_lengths(f, cells, tables, len(unl_rows))
    uses_pool = any(c.consistency for c in cells)
    streams = any(inputs.streams(int((~t["labeled"]).sum()), model.frame, f.in_memory_mb)
                  for t in tables) or (uses_pool and inputs.streams(len(unl_rows), model.frame,
                                                                    f.in_memory_mb))
    setup = dataclasses.replace(setup, settings=settings, epoch_samples=epochs,
                                streams=streams, cells=cells)
    rows = manifest.table[manifest.table[SAMPLE_ID].isin(set(members[SAMPLE_ID]))]
    console.detail(f"[finetune] search: {len(cells)} cells x {len(settings)} settings = "
                   f"{len(cells) * len(settings)} trials, {min(epochs)} to {max(epochs)} "
                   "samples per epoch")
    grid = search.run(setup, layout, {"cells": members, "rows": rows,
                                      "unlabeled": unl_rows if uses_pool else None},
                      len(cells))
    trials, states, free_states = search.trial_table(grid, cells, settings, layout)
    if trials.empty:
        raise RuntimeError(f"every fine-tuning trial failed: see {layout.search}")
    n_cand = {i: int(t.loc[~t["labeled"], "copies"].sum()) for i, t in enumerate(tables)}
    trials["n_candidates"] = trials["cell"].map(n_cand)
    parquet.write_df(trials, layout.trials)

    classes, backbone = setup.classes, model.backbone
    chosen = choice.arms(trials, states, layout, backbone, classes)
    return FinetuneResult(
        by_cell=choice.by_cell(trials, states, cells, layout, backbone, classes),
        label_free=choice.label_free(trials, free_states, f.label_free, layout, backbone,
                                     classes, len(setup.source_val_rows)),
        trials=int(len(trials)), trials_failed=int(len(cells) * len(settings) - len(trials)),
        cells=len(cells), samples_per_epoch=[int(n) for n in epochs], settings=settings,
        best=chosen["chosen"], arms=chosen,
        teacher_val_accuracy=float(best_teacher["val_accuracy"]),
        pseudo_labeled=int(len(unlabeled)), seconds=round(time.time() - t0, 2),
        trials_resumed={r.key: [int(e) for e in r.resumed_after.split(",")]
                        for r in trials.itertuples() if r.resumed_after})
