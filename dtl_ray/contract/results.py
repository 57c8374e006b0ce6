"""What each stage returns: one dataclass per stage, the contract between a stage, the stages
after it, the pipeline and the report.

A result is stored in its stage's done-marker and shown in `report.json` under the stage's name
(`to_summary`); a later stage reads an earlier one's from that marker with the stage's
record (`registry.stage(name).read`), never by importing the stage. Nested tables (curves,
per-class figures, per-arm rows) stay plain JSON data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PretrainResult", "DiscriminateResult", "ScoreResult", "SelectResult",
           "FinetuneResult", "EvaluateResult", "to_summary"]


@dataclass(frozen=True)
class PretrainResult:
    source_val_accuracy: float
    """Best source val accuracy over the epochs (the kept model's)."""
    best_epoch: int
    """1-based epoch of the kept model."""
    epochs: int
    curve: list[dict]
    """Per epoch: epoch (0-based), train_loss, val_accuracy, val_loss, seconds."""
    resumed_from_epochs: list[int]
    """Epochs at which the run resumed from a checkpoint after a failure."""
    seconds: float


@dataclass(frozen=True)
class DiscriminateResult:
    mode: str
    """`standard` or `adversarial`."""
    heldout_accuracy: float
    heldout_balanced_accuracy: float
    heldout_auc: float
    proxy_a_distance: float
    """2(1 - 2 err) from the balanced held-out error of the scoring D."""
    layer: str
    n_source: int
    n_target: int
    heldout: int
    """Samples held out of both domains."""
    folds: int
    """Discriminators cross-fitted (each training row scored by the one that did not see it)."""
    out_of_fold_auc: float
    """AUC of the out-of-fold scores over D's training rows."""
    heldout_calibration_error_raw: float
    """Expected calibration error (15 bins, domains weighing half each) of p on the held-out
    part before Platt scaling ..."""
    heldout_calibration_error: float
    """... and after it."""
    platt: list
    """Per fold, (a, b) of the calibrated logit a*z + b."""
    near_perfect: bool
    """Held-out AUC >= 0.98 or balanced accuracy >= 0.95: p says little beyond an order."""
    seconds: float
    adversarial: dict | None = field(default=None, metadata={"omit_if_none": True})
    """With DANN: the gap before and after adaptation, DANN's curve and its model."""
    heldout_roc: list | None = field(default=None, metadata={"omit_if_none": True})
    """The scoring D's ROC curve on the held-out part: [false positive rate, true positive
    rate] at quantiles of p (the report's plot)."""
    heldout_reliability: list | None = field(default=None, metadata={"omit_if_none": True})
    """Its reliability diagram: per bin of p, [mean p, share of target, rows]."""


@dataclass(frozen=True)
class ScoreResult:
    rows_in: int
    rows_out: int
    rows_rejected: int
    """rows_in == rows_out + rows_rejected."""
    rejected_examples: list[dict]
    weights_capped: int
    weighting: str
    mean_weight: dict
    """Mean importance weight per domain/split."""
    source_at_clip_floor: float
    """Share of source train whose p_target is at or below `score.clip` (their weights tie)."""
    source_weight_ess: float
    """Kish's effective sample size of the source train weights, as a share of the rows."""
    seconds: float
    startup_seconds: float
    """Until the first file of scores was written (actor start-up, model loading, one file's
    rows: an eighth of them or fewer)."""
    startup_rows: int
    weight_divisor: float = 1.0
    """What readers divide the files' `weight` by (IWAN: the mean over source train;
    `stages.score.read_scores` does it)."""
    files: int = 0
    """Parquet files written by the scoring pass's tasks."""


@dataclass(frozen=True)
class SelectResult:
    n_candidates: int
    n_source: int
    n_target: int
    strategy: str
    rule: str
    fraction: float
    target_fraction: float
    kept_fraction_per_class: dict
    dropped_classes: list
    """Source classes the target lacks (never selected)."""
    ranked_fraction_per_class: dict
    """Each class's share of the top `fraction` of all source train by weight."""
    ranked_fraction_shared: float
    ranked_fraction_absent: float | None
    seconds: float
    source_clusters: list[dict] | None = None
    """Per kind of source train image (k-means on D's features): its size, its share in D's
    top `fraction` and among the source candidates, its mean p_target, example sample_ids."""


@dataclass(frozen=True)
class FinetuneResult:
    by_cell: list[dict]
    """Each cell's best trial on target val (its model is `models/cell-<i>.pt`)."""
    label_free: dict | None
    trials: int
    trials_failed: int
    cells: int
    samples_per_epoch: list[int]
    """Each cell's samples per epoch (finetune.min_epoch_samples, max_epoch_samples)."""
    settings: list[dict]
    best: dict
    """The trial chosen on target val over the whole search."""
    arms: dict
    """Each arm's trial chosen on target val."""
    teacher_val_accuracy: float
    pseudo_labeled: int
    seconds: float
    trials_resumed: dict = field(default_factory=dict)
    """Trials that continued from their progress file (a retried trial, or a search run again
    after the driver died): trial key -> the epochs it resumed after."""


@dataclass(frozen=True)
class EvaluateResult:
    method: dict
    baselines: dict
    label_free: dict | None
    by_cell: list[dict]
    chosen: dict
    method_beats: list
    test_images: int
    test_rejected: int
    seconds: float
    measured_on: str = "test"
    """`test`; `val` when the target has no test split: the figures are then measured on the
    images the models were chosen on (they flatter every model, the chosen ones most)."""



def to_summary(result: Any) -> dict:
    """The JSON form (done-marker, report.json); optional parts that are absent are left out."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
            if not (f.metadata.get("omit_if_none") and getattr(result, f.name) is None)}

