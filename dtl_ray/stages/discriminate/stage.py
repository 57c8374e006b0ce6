"""Stage 2: a domain discriminator D on frozen features of the pretrained backbone.

Source train is label 0, target train + unlabeled label 1; a hashed part of both is held out
to report accuracy, AUC and the proxy A-distance. Outputs `RunLayout.discriminator`.

Adversarial mode (DANN, Ganin & Lempitsky 2015): a D on the pretrained features first gives the
domain gap *before* adaptation; then g and h train on source labels while a domain head,
behind a gradient reversal layer, pushes g's features to be domain-invariant (a TorchTrainer
run, `RunLayout.dann_model`); the scoring D is trained on the adapted features,
and its proxy A-distance is the gap *after*.

`run` reads as its phases: `_discriminator` on the pretrained features (the Train loop is in
`fit`), then in adversarial mode `_adapt` (the DANN loop is in `dann`) and `_discriminator` on
the adapted features; what crosses into the Train workers is typed (`specs`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.config import (
    DataConfig,
    DiscriminateConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
)
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import DiscriminateResult
from dtl_ray.data import manifests, readers
from dtl_ray.method import builders, calibration, domain
from dtl_ray.raykit import train
from dtl_ray.stages.discriminate import dann, fit
from dtl_ray.stages.discriminate.specs import DannSpec, FitSpec
from dtl_ray.storage import checkpoints

__all__ = ["run", "domain_rows"]

STAGE = "discriminate"


@dataclass(frozen=True)
class _Sections:
    """The config sections this stage reads."""

    discriminate: DiscriminateConfig
    model: ModelConfig
    data: DataConfig
    pretrain: PretrainConfig
    scaling: ScalingConfig
    seed: int


def domain_rows(manifest: manifests.Manifest) -> pd.DataFrame:
    """Source train (is_target 0) and target train + unlabeled (is_target 1)."""
    src = manifest.rows("source", "train").assign(is_target=0)
    tgt = manifest.rows("target", ["train", "unlabeled"]).assign(is_target=1)
    return pd.concat([src, tgt], ignore_index=True)


def _adapt(s: _Sections, layout: RunLayout, manifest: manifests.Manifest,
           rows: pd.DataFrame) -> list:
    """The DANN run; saves the adapted classifier, returns its epoch history."""
    pretrain_model = layout.pretrain_model
    size, cache, seed = s.model.frame, s.data.cache, s.seed
    reading = readers.reading(layout, s.data.max_image_pixels, s.data.max_rejected_fraction,
                           STAGE)
    src = manifest.rows("source", "train")
    datasets = {"source": readers.training_dataset(src, size, cache, ["image", "label"], seed,
                                                reading),
                "target": readers.training_dataset(rows[rows["is_target"] == 1], size, cache,
                                                ["image"], seed, reading)}
    steps = math.ceil(len(src) / s.scaling.num_workers / s.data.batch_size)
    spec = DannSpec(discriminate=s.discriminate, pretrain=s.pretrain, data=s.data, seed=seed,
                    cpus=s.scaling.cpus_per_worker, model_uri=pretrain_model,
                    source_steps=steps)
    result = train.fit(dann.dann_fn, s.scaling, *layout.train_run(STAGE, "dann"), datasets,
                       {"spec": spec},
                       progress=("dann", s.discriminate.dann_epochs, "epoch"))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state, meta = checkpoints.load_dir(d)
    model_state = {k[len("classifier."):]: v for k, v in state["net"].items()
                   if k.startswith("classifier.")}
    _, pmeta = checkpoints.read_classifier(pretrain_model)
    extra = {k: v for k, v in pmeta.items() if k not in ("backbone", "num_classes", "classes")}
    checkpoints.save_classifier(layout.dann_model, model_state, pmeta["backbone"],
                                pmeta["classes"], **extra, adapted=True)
    return meta["history"]


def _discriminator(s: _Sections, train_run: tuple[str, str], model_uri: str,
                   rows: pd.DataFrame, held: np.ndarray, reading: readers.Reading,
                   clusters_uri: str | None = None) -> tuple[dict, dict]:
    """Trains a D on `model_uri`'s frozen features; returns (state, meta) of its last epoch.
    `clusters_uri`: where source train's kinds are written (`fit._write_clusters`)."""
    cols = ["image", "is_target", "fold", "sample_id"]
    size, cache, seed = s.model.frame, s.data.cache, s.seed
    rows = rows.assign(fold=calibration.fold_of(rows["sample_id"], ~held,
                                                s.discriminate.folds))
    datasets = {"train": readers.training_dataset(rows[~held], size, cache, cols, seed, reading),
                "heldout": readers.training_dataset(rows[held], size, cache, cols, None, reading)}
    spec = FitSpec(discriminate=s.discriminate, batch_size=s.data.batch_size, seed=seed,
                   cpus=s.scaling.cpus_per_worker, model_uri=model_uri,
                   n_source=int((rows[~held]["is_target"] == 0).sum()),
                   n_target=int((rows[~held]["is_target"] == 1).sum()),
                   clusters_uri=clusters_uri)
    result = train.fit(fit.train_fn, s.scaling, *train_run, datasets, {"spec": spec},
                       progress=("discriminate", max(1, s.discriminate.folds), "fold"))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        return checkpoints.load_dir(d)


def _tapped(layer: str | None, tap: domain.FeatureTap) -> str:
    """What D reads, in words."""
    if layer == domain.STYLES and not tap.stages:
        return "styles asked, but the backbone has no stages: pooled penultimate"
    if layer == domain.STYLES:
        return (f"styles: per-channel mean and std of {', '.join(tap.stages[:-1])}, and the "
                f"mean of {tap.stages[-1]} (the pooled penultimate)")
    return layer or "pooled penultimate (backbone output)"


def _gap(m: dict) -> dict:
    return {k: m[k] for k in ("heldout_accuracy", "heldout_balanced_accuracy", "heldout_auc",
                              "proxy_a_distance")}


def run(layout: RunLayout, discriminate: DiscriminateConfig, model: ModelConfig,
        data: DataConfig, pretrain: PretrainConfig, scaling: ScalingConfig,
        seed: int) -> DiscriminateResult:
    """Trains D on frozen features (adapted ones in adversarial mode); returns held-out
    metrics and the domain sizes. `pretrain` gives DANN's augmentation."""
    t0 = time.time()
    s = _Sections(discriminate, model, data, pretrain, scaling, seed)
    d = discriminate
    manifest = manifests.load(layout)
    pretrain_model = layout.pretrain_model
    classifier, _ = builders.load_classifier(pretrain_model)
    tap = domain.FeatureTap(classifier.backbone, d.layer)  # a bad layer fails here, clearly
    rows = domain_rows(manifest)
    held = calibration.heldout_mask(rows["sample_id"], d.heldout_fraction)
    n_source = int((rows["is_target"] == 0).sum())
    n_target = int((rows["is_target"] == 1).sum())
    # D on the pretrained features: the scoring D in standard mode, the gap "before" DANN
    reading = readers.reading(layout, data.max_image_pixels,
                              data.max_rejected_fraction, STAGE)
    # source train's kinds, by the pretrained features (what a person would call its styles)
    if storage.exists(layout.source_clusters):  # a part per worker: none left from before
        storage.delete_tree(layout.source_clusters)
    state, meta = _discriminator(s, layout.train_run(STAGE), pretrain_model, rows, held, reading,
                                 layout.source_clusters)
    scoring_model, adversarial = pretrain_model, {}
    if d.adapts:
        dann_uri, history = layout.dann_model, _adapt(s, layout, manifest, rows)
        state_a, meta_a = _discriminator(s, layout.train_run(STAGE, "adapted"), dann_uri, rows,
                                          held, reading)
        adversarial = {"before": _gap(meta["metrics"]), "after": _gap(meta_a["metrics"]),
                       "dann_curve": history, "dann_model": dann_uri}
        if d.mode == "adversarial":  # score with D on the adapted features
            state, meta, scoring_model = state_a, meta_a, dann_uri
    m = meta["metrics"]
    checkpoints.save_discriminator(layout.discriminator, state["folds"], m["platt"],
                                   d.heldout_fraction, d.layer, meta["in_dim"], d.hidden,
                                   n_source, n_target, d.balanced, model=scoring_model)
    perfect = calibration.near_perfect(m["heldout_auc"], m["heldout_balanced_accuracy"])
    return DiscriminateResult(
        mode=d.mode, adversarial=adversarial or None,
        heldout_accuracy=m["heldout_accuracy"],
        heldout_balanced_accuracy=m["heldout_balanced_accuracy"],
        heldout_auc=m["heldout_auc"], proxy_a_distance=m["proxy_a_distance"],
        layer=_tapped(d.layer, tap),
        n_source=n_source, n_target=n_target, heldout=int(held.sum()),
        folds=len(state["folds"]), out_of_fold_auc=m["oof_auc"],
        heldout_calibration_error_raw=m["heldout_ece_raw"],
        heldout_calibration_error=m["heldout_ece"], platt=m["platt"], near_perfect=perfect,
        seconds=round(time.time() - t0, 2), heldout_roc=m.get("heldout_roc"),
        heldout_reliability=m.get("heldout_reliability"))
