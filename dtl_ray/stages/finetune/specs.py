"""What crosses into a fine-tuning trial, typed: a typo is an error at the driver, not a
`KeyError` minutes into a trial.

- `SearchSetup`: the search's fixed inputs, built once by the stage (`inputs.setup`) and
  handed to every trial through `tune.with_parameters`.
- `TrialSpec`: one training run (a trial, or the teacher): the setup narrowed to one cell and
  one setting, plus where it saves its progress.
- `CellInputs`: what that run reads: the labeled target decoded, the candidates decoded or as
  a lazy Ray dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dtl_ray.config import FinetuneConfig, ScalingConfig
from dtl_ray.data.readers import Reading
from dtl_ray.data.samples import Size
from dtl_ray.method import target_fit

__all__ = ["SearchSetup", "TrialSpec", "CellInputs"]


@dataclass(frozen=True)
class SearchSetup:
    """The fixed inputs of the teacher and of every trial."""

    finetune: FinetuneConfig
    scaling: ScalingConfig
    augment: Any
    """The training augmentation (`builders.augment`)."""
    seed: int
    pretrain_model: Any
    """The backbone every run starts from (the pretrained or the adapted one)."""
    classes: list[int]
    """The target's class ids; a run's label y is an index into this list."""
    image_size: Size
    reading: Reading
    cache: str
    shuffle_buffer: int
    val_images: np.ndarray
    val_labels: np.ndarray
    """Target val, decoded once in the driver (few labels), local class indices."""
    source_val_rows: pd.DataFrame
    """The source val sample (`finetune.source_val_samples`) with `y` and weight `w`: the
    label-free choice's risk."""
    progress: str
    """`RunLayout.progress`: one weights-only file per trial."""
    train_uri: str
    """The stage's folder, where Ray Train and Tune keep their run folders."""
    backend: str | None
    """The TorchTrainer's backend, asked outside any trial (None: no run uses Train)."""
    settings: list[dict] = field(default_factory=list)
    """The search's settings (lr, layers, candidate weight), the same in every cell."""
    epoch_samples: list[int] = field(default_factory=list)
    """Samples per epoch of each cell (`batches.epoch_lengths`)."""
    streams: bool = False
    """Whether any cell streams its candidates (the search then leaves CPUs for reading)."""
    cells: list = field(default_factory=list)
    """The search's cells (`design.Cell`), by index."""
    consistency: Any = None
    """The consistency term (`builders.consistency`) of the cells that use it, or None."""


@dataclass(frozen=True)
class TrialSpec:
    """One training run: one cell, one setting."""

    settings: target_fit.Settings
    pretrain_model: Any
    num_classes: int
    val_images: np.ndarray
    val_labels: np.ndarray
    augment: Any
    label_free: str
    image_size: Size
    reading: Reading
    in_memory_mb: float
    cache: str
    seed: int
    shuffle_buffer: int
    cpus: int
    source_val_rows: pd.DataFrame
    cell: int
    """The cell's index (-1: the teacher)."""
    setting: int
    backend: str | None
    progress_uri: str | None = None
    """Where its state and history are saved after each epoch (None: not saved)."""
    history: list[dict] = field(default_factory=list)
    """The metrics of the epochs run so far (a resumed trial starts with its first life's)."""
    resumed: tuple[int, ...] = ()
    """The epochs it continued after, one per resumption."""
    report_extra: dict = field(default_factory=dict)
    """Added to every report: the trial's key, node and start time."""
    keep_state: str | None = None
    """Where the best state is saved after each epoch (the teacher's), or None."""


@dataclass(frozen=True)
class CellInputs:
    """A run's images: labeled target and the source val sample in memory (`source_val`:
    images, labels, weights); candidates in memory (`cand`) or streamed (`cand_ds`: a Ray
    dataset of `image`, `y`, `w`)."""

    lab_images: np.ndarray
    lab_y: np.ndarray
    n_candidates: int
    cand: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    """Held candidates: images, labels, weights, and how often a soft cell drew each."""
    cand_ds: Any = None
    source_val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    unl: np.ndarray | None = None
    """The unlabeled target pool's images, held (the consistency term), or None."""
    unl_ds: Any = None
    """The same, streamed: a Ray dataset of `image`."""

    def datasets(self) -> dict:
        """The streamed sets, by the names a Train worker asks its shards for."""
        sets = {"candidates": self.cand_ds, "unlabeled": self.unl_ds}
        return {k: v for k, v in sets.items() if v is not None}

    def held(self) -> CellInputs:
        """These inputs without the datasets (they reach Train workers as shards)."""
        return dataclasses.replace(self, cand_ds=None, unl_ds=None)

    @property
    def uses_unlabeled(self) -> bool:
        return self.unl is not None or self.unl_ds is not None
