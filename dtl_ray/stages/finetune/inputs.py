"""A run's inputs: what a cell's training reads, and how one setting trains on it.

The labeled target, target val and the source val sample are decoded into the run's memory
(few labels, a bounded sample); the candidates too when they fit `finetune.in_memory_mb`,
else streamed through Ray Data every epoch in a seeded order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dtl_ray.data import readers
from dtl_ray.data.samples import SAMPLE_ID, side
from dtl_ray.method import batches, design, target_fit
from dtl_ray.stages.finetune.specs import CellInputs, TrialSpec

__all__ = ["streams", "cell_inputs", "fit_cell"]


def streams(n_rows: int, image_size, in_memory_mb: float) -> bool:
    """Whether a set of `n_rows` images is streamed rather than held in memory."""
    return n_rows * side(image_size) ** 2 * 3 > in_memory_mb * 2**20


def _held_or_streamed(rows: pd.DataFrame, spec: TrialSpec):
    """The candidates (images, y, w, copies) decoded here, or a Ray dataset of `image`, `y`
    and `w` (a row drawn k times in a soft cell streams once, its loss weight times k: the
    same expectation, one decode per pass), or (None, None) for no rows."""
    if not len(rows):
        return None, None
    if streams(len(rows), spec.image_size, spec.in_memory_mb):
        rows = rows.assign(w=rows["w"] * rows["copies"])
        return None, readers.training_dataset(rows, spec.image_size, spec.cache,
                                              ["image", "y", "w"], spec.seed, spec.reading)
    c = readers.decode_here(rows, spec.image_size, spec.reading, ["image", "y", "w", "copies"])
    return (c["image"], np.asarray(c["y"], np.int64), np.asarray(c["w"], float),
            np.asarray(c["copies"], np.int64)), None


def _unlabeled(rows: pd.DataFrame | None, spec: TrialSpec):
    """The unlabeled pool for the consistency term: (images held, None), (None, a Ray
    dataset of `image` in a seeded order) when it is larger than `finetune.in_memory_mb`, or
    (None, None) without rows."""
    if rows is None or not len(rows):
        return None, None
    if streams(len(rows), spec.image_size, spec.in_memory_mb):
        return None, readers.training_dataset(rows, spec.image_size, spec.cache, ["image"],
                                              spec.seed + 1, spec.reading)
    return readers.decode_here(rows, spec.image_size, spec.reading, ["image"])["image"], None


def cell_inputs(members: pd.DataFrame, rows: pd.DataFrame, spec: TrialSpec,
                unlabeled: pd.DataFrame | None = None) -> CellInputs:
    """A cell's inputs from its members (ids, y, w, copies, labeled) and the manifest's
    rows; `unlabeled`: the manifest's rows of the unlabeled pool, for a run with the
    consistency term (`spec.settings.consistency`)."""
    m = members.merge(rows, on=SAMPLE_ID, how="inner")
    lab = readers.decode_here(m[m["labeled"]], spec.image_size, spec.reading, ["image", "y"])
    cand_rows = m[~m["labeled"]]
    cand, cand_ds = _held_or_streamed(cand_rows, spec)
    sv = None
    if len(spec.source_val_rows):  # a bounded sample (finetune.source_val_samples): held
        c = readers.decode_here(spec.source_val_rows, spec.image_size, spec.reading,
                                ["image", "y", "w"])
        sv = (c["image"], np.asarray(c["y"], np.int64), np.asarray(c["w"], float))
    unl, unl_ds = _unlabeled(unlabeled if spec.settings.consistency else None, spec)
    return CellInputs(lab["image"], np.asarray(lab["y"], np.int64), int(len(cand_rows)),
                      cand, cand_ds, sv, unl, unl_ds)


def _batches_of(inputs: CellInputs, settings: target_fit.Settings, shard, buffer: int):
    """The `batches(epoch, rng)` function of a cell (`target_fit`), its candidates in memory
    or from `shard` (a dataset or a Train worker's shard), passes seeded by (seed, epoch, k)."""
    lab_images, lab_y = inputs.lab_images, inputs.lab_y
    if inputs.cand is not None or shard is None:
        images, y, w, k = inputs.cand or (lab_images[:0], lab_y[:0], np.zeros(0),
                                          np.zeros(0, np.int64))
        members = pd.DataFrame({"y": np.concatenate([lab_y, y]),
                                "w": np.concatenate([np.ones(len(lab_y)), w]),
                                "copies": np.concatenate([np.ones(len(lab_y), np.int64), k]),
                                "labeled": np.arange(len(lab_y) + len(y)) < len(lab_y)})
        return batches.memory_batches(np.concatenate([lab_images, images]),
                                      design.as_train_set(members), settings)
    bs = settings.batch_size

    def passes(epoch: int, k: int):  # the local shuffle buffer's seed: (seed, epoch, k)
        return readers.epoch_batches(shard, bs, epoch * 1_009 + k, settings.seed, buffer)

    return batches.stream_batches(lab_images, lab_y, inputs.n_candidates, passes, settings)


def _unlabeled_of(inputs: CellInputs, settings: target_fit.Settings, shard, buffer: int):
    """The `unlabeled(epoch, rng)` function of a run with the consistency term, or None."""
    if settings.consistency is None or not inputs.uses_unlabeled:
        return None
    if inputs.unl is not None:
        return batches.memory_unlabeled(inputs.unl, settings)
    size = settings.consistency.unlabeled_ratio * settings.batch_size

    def passes(epoch: int, k: int):
        return readers.epoch_batches(shard, size, epoch * 1_009 + k, settings.seed + 1, buffer)

    return batches.stream_unlabeled(passes, settings)


def _source_val_of(inputs: CellInputs, batch_size: int = 256):
    """The `source_val()` function of `target_fit.train`, or None."""
    if inputs.source_val is None or not len(inputs.source_val[1]):
        return None
    images, y, w = inputs.source_val
    return lambda: ((images[i:i + batch_size], y[i:i + batch_size], w[i:i + batch_size])
                    for i in range(0, len(y), batch_size))


def fit_cell(spec: TrialSpec, inputs: CellInputs, device, resume=None, shards=None,
             prepare=None):
    """Trains one cell with one setting (`spec.settings`); yields (metrics, state) per
    epoch (`target_fit.train`). `shards`: a Train worker's dataset shards by name
    (`CellInputs.datasets`); default: the inputs' own datasets."""
    shards = shards or {}
    model = target_fit.target_model(spec.pretrain_model, spec.num_classes, spec.settings.seed)
    train_batches = _batches_of(inputs, spec.settings, shards.get("candidates", inputs.cand_ds),
                                spec.shuffle_buffer)
    unlabeled = _unlabeled_of(inputs, spec.settings, shards.get("unlabeled", inputs.unl_ds),
                              spec.shuffle_buffer)
    return target_fit.train(model, train_batches, spec.val_images, spec.val_labels,
                            spec.settings, spec.augment, device, resume,
                            _source_val_of(inputs), spec.label_free, prepare, unlabeled)
