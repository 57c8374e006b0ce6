"""The `finetune` section of the configuration schema (`schema.py` holds the others): the
search's cells, settings, budget, consistency term and where its trials run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["FinetuneConfig"]


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 15
    """Most epochs a trial runs (ASHA's max_t)."""
    grace_period: int = 8
    """Epochs before ASHA may stop a trial (about half of `epochs`: a trial's val accuracy in
    its first epochs says little about where it ends, least of all with candidates mixed in)."""
    num_samples: int = 1
    """Random draws of (lr, layers, weights) per (strategy, fraction) cell."""
    source_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    """Source-pool fractions searched for `discriminator` and `random` (0 and 1 always run)."""
    target_fractions: list[float] = field(default_factory=lambda: [0.0, 0.3])
    """Unlabeled-target fractions searched (pseudo-labeled by the teacher)."""
    strategies: list[str] = field(default_factory=lambda: ["discriminator", "random"])
    """Selection strategies searched; baselines are added automatically."""
    lr: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    """Learning rates to sample from."""
    init: Literal["pretrain", "adapted"] = "pretrain"
    """The backbone fine-tuning starts from: the pretrained one, or the adversarially adapted
    one (needs discriminate.mode: adversarial)."""
    train_layers: list[str] = field(default_factory=lambda: ["all", "last_block"])
    """Which layers train: `head`, `last_block`, `all`."""
    candidate_weight: list[float] = field(default_factory=lambda: [1.0])
    """Loss weight of candidate samples relative to labeled target."""
    weight_by_w: bool = False
    """Multiply source-candidate losses by their (mean-normalised) importance weight."""
    weight_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0])
    """The method's soft cells: the whole source (in the target's classes) resampled with
    replacement in proportion to `w ** alpha` (as many draws as images), one cell per alpha
    and target fraction, beside the hard top fractions. `alpha` flattens the weights: 0 draws
    uniformly (all of the source); [] turns them off."""
    source_val_samples: int = 2000
    """The label-free choice's source val: a fixed, seeded, class-stratified sample of this
    many images (0: all of it), decoded once per trial."""
    label_free: Literal["dev", "iwcv"] = "dev"
    """Label-free model choice (reported beside the target-val choice): the trial and epoch
    with the lowest DEV (You et al. 2019) or IWCV risk on weighted source val."""
    mix_ratio: float = 0.25
    """Labeled target is oversampled to at least this share of every epoch and of every batch
    (no step of candidates alone)."""
    batch_size: int = 64
    """Fine-tuning batch size."""
    min_epoch_samples: int = 10_000
    """A run's epoch is one pass over its own data (its cell, labeled target mixed in; with
    the consistency term, its unlabeled pool if longer), at least the search's longest pass
    up to this many: small searches give every arm one budget, no cell is starved."""
    max_epoch_samples: int = 100_000
    """The most samples in a run's epoch (the teacher's too)."""
    max_concurrent_trials: int = 0
    """A cap on trials running at once; 0: none (Tune queues every trial and runs what fits;
    on an autoscaling cluster the queued requests make it add nodes)."""
    workers_per_trial: int = 0
    """0: each trial trains in its own process (one device; no TorchTrainer's seconds to
    start and stop). N >= 1: the trial builds a `TorchTrainer` of N data-parallel workers
    (each `scaling.cpus_per_worker` CPUs and `gpus_per_worker` GPUs with `scaling.use_gpu`;
    the trial itself holds no CPU): Ray Train inside Tune, for trials larger than a device."""
    teacher_workers: int = 0
    """The same for the teacher (0: it trains in one Ray task)."""
    gpus_per_worker: float = 1.0
    """GPUs of each fine-tuning worker with `scaling.use_gpu` (0.5: two trials share one)."""
    consistency_weight: float = 1.0
    """Consistency regularisation on the unlabeled target pool (AdaMatch's recipe,
    docs/method.md): the most its loss counts against the labeled one. Every arm that uses the
    pool (`method`, `random_subset`, `self_training`) and the teacher train with it, and the
    search adds `fixmatch` (target_only + it) and `adamatch` (all_source + it); 0: all off."""
    consistency_threshold: float = 0.9
    """A pseudo-label counts when its confidence reaches this times the labeled batch's mean
    confidence in its step (AdaMatch's relative threshold)."""
    unlabeled_ratio: int = 1
    """Unlabeled images per labeled image in a step (FixMatch's mu)."""
    distribution_alignment: bool = True
    """Align pseudo-labels' class mix to the labeled batch's predictions (AdaMatch)."""
    in_memory_mb: int = 256
    """A trial holds its cell's decoded candidates (and the source val set of the label-free
    choice) in its own memory when they take less than this; larger ones are streamed from
    Ray Data every epoch. Nothing is collected in the driver."""
