"""What crosses into the discriminate stage's Train workers, typed: built at the driver (a
missing or misspelt field fails there), passed as `{"spec": spec}` in the loop's config."""

from __future__ import annotations

from dataclasses import dataclass

from dtl_ray.config import DataConfig, DiscriminateConfig, PretrainConfig

__all__ = ["FitSpec", "DannSpec"]


@dataclass(frozen=True)
class FitSpec:
    """The discriminator's loop (`fit.train_fn`)."""

    discriminate: DiscriminateConfig
    batch_size: int
    seed: int
    cpus: int
    model_uri: str
    """The classifier whose frozen features D reads (pretrained, or DANN-adapted)."""
    n_source: int
    n_target: int
    """Domain sizes of the fitting rows: the class-balanced loss weights."""
    clusters_uri: str | None = None
    """Where each worker writes its source rows' clusters (`discriminate.clusters`)."""


@dataclass(frozen=True)
class DannSpec:
    """The DANN loop (`dann.dann_fn`)."""

    discriminate: DiscriminateConfig
    pretrain: PretrainConfig
    """Its augmentation."""
    data: DataConfig
    seed: int
    cpus: int
    model_uri: str
    """The pretrained classifier it adapts."""
    source_steps: int
    """Steps per epoch on each worker (a pass over its share of the source)."""
