"""A run's inputs: what a cell's training reads, and how one setting trains on it.

The labeled target and target val are decoded into the run's memory (few labels); the
candidates too when they fit `finetune.in_memory_mb`, else streamed through Ray Data every
epoch in a seeded order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dtl_ray.data import readers
from dtl_ray.data.samples import SAMPLE_ID, side
from dtl_ray.method import design, target_fit
from dtl_ray.stages.finetune.specs import CellInputs, TrialSpec

__all__ = ["streams", "cell_inputs", "fit_cell"]


def streams(n_rows: int, image_size, in_memory_mb: float) -> bool:
    """Whether a set of `n_rows` images is streamed rather than held in memory."""
    return n_rows * side(image_size) ** 2 * 3 > in_memory_mb * 2**20


def _held_or_streamed(rows: pd.DataFrame, spec: TrialSpec, streamed):
    """(images, y, w) decoded here, or `streamed(rows)`, or (None, None) for no rows."""
    if not len(rows):
        return None, None
    if streams(len(rows), spec.image_size, spec.in_memory_mb):
        return None, streamed(rows)
    c = readers.decode_here(rows, spec.image_size, spec.reading, ["image", "y", "w"])
    return (c["image"], np.asarray(c["y"], np.int64), np.asarray(c["w"], float)), None


def cell_inputs(members: pd.DataFrame, rows: pd.DataFrame, spec: TrialSpec) -> CellInputs:
    """A cell's inputs from its members (ids, y, w, labeled) and the manifest's rows."""
    m = members.merge(rows, on=SAMPLE_ID, how="inner")
    lab = readers.decode_here(m[m["labeled"]], spec.image_size, spec.reading, ["image", "y"])
    cand_rows = m[~m["labeled"]]
    cand, cand_ds = _held_or_streamed(cand_rows, spec, lambda r: readers.training_dataset(
        r, spec.image_size, spec.cache, ["image", "y", "w"], spec.seed, spec.reading))
    sv, sv_ds = _held_or_streamed(spec.source_val_rows, spec, lambda r: readers.good_rows(
        r, spec.image_size, spec.reading, ["image", "y", "w"]))
    return CellInputs(lab["image"], np.asarray(lab["y"], np.int64), int(len(cand_rows)),
                      cand, cand_ds, sv, sv_ds)


def _batches_of(inputs: CellInputs, settings: target_fit.Settings, shard, buffer: int):
    """The `batches(epoch, rng)` function of a cell (`target_fit`), its candidates in memory
    or from `shard` (a dataset or a Train worker's shard), passes seeded by (seed, epoch, k)."""
    lab_images, lab_y = inputs.lab_images, inputs.lab_y
    if inputs.cand is not None or shard is None:
        images, y, w = inputs.cand or (lab_images[:0], lab_y[:0], np.zeros(0))
        members = pd.DataFrame({"y": np.concatenate([lab_y, y]),
                                "w": np.concatenate([np.ones(len(lab_y)), w]),
                                "labeled": np.arange(len(lab_y) + len(y)) < len(lab_y)})
        return target_fit.memory_batches(np.concatenate([lab_images, images]),
                                         design.as_train_set(members), settings)
    bs = settings.batch_size

    def passes(epoch: int, k: int):  # the local shuffle buffer's seed: (seed, epoch, k)
        return readers.epoch_batches(shard, bs, epoch * 1_009 + k, settings.seed, buffer)

    return target_fit.stream_batches(lab_images, lab_y, inputs.n_candidates, passes, settings)


def _source_val_of(inputs: CellInputs, shard=None, batch_size: int = 256):
    """The `source_val()` function of `target_fit.train`, or None."""
    if inputs.source_val is not None:
        images, y, w = inputs.source_val
        if not len(y):
            return None
        return lambda: ((images[i:i + batch_size], y[i:i + batch_size], w[i:i + batch_size])
                        for i in range(0, len(y), batch_size))
    ds = shard if shard is not None else inputs.source_val_ds
    if ds is None:
        return None
    return lambda: ((b["image"], b["y"], b["w"]) for b in ds.iter_batches(
        batch_size=batch_size, batch_format="numpy"))


def fit_cell(spec: TrialSpec, inputs: CellInputs, device, resume=None, cand_shard=None,
             sv_shard=None, prepare=None):
    """Trains one cell with one setting (`spec.settings`); yields (metrics, state) per
    epoch (`target_fit.train`)."""
    model = target_fit.target_model(spec.pretrain_model, spec.num_classes, spec.settings.seed)
    batches = _batches_of(inputs, spec.settings, cand_shard if cand_shard is not None
                          else inputs.cand_ds, spec.shuffle_buffer)
    return target_fit.train(model, batches, spec.val_images, spec.val_labels,
                            spec.settings, spec.augment, device, resume,
                            _source_val_of(inputs, sv_shard), spec.label_free, prepare)
