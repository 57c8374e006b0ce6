"""Stage 2: a domain discriminator D on frozen features of the pretrained backbone.

Source train is label 0, target train + unlabeled label 1; a hashed part of both is held out
to report accuracy, AUC and the proxy A-distance. Outputs `RunLayout.discriminator`.

Adversarial mode (DANN, Ganin & Lempitsky 2015): a D on the pretrained features first gives the
domain gap *before* adaptation; then g and h train on source labels while a domain head,
behind a gradient reversal layer, pushes g's features to be domain-invariant (a TorchTrainer
run, `RunLayout.dann_model`); the scoring D is trained on the adapted features,
and its proxy A-distance is the gap *after*.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dtl_ray.config import (
    DataConfig,
    DiscriminateConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
)
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import DiscriminateResult
from dtl_ray.data import readers
from dtl_ray.method import builders, calibration, loops, models
from dtl_ray.raykit import train
from dtl_ray.stages.discriminate import dann
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


def domain_rows(manifest: readers.Manifest) -> pd.DataFrame:
    """Source train (is_target 0) and target train + unlabeled (is_target 1)."""
    src = manifest.rows("source", "train").assign(is_target=0)
    tgt = manifest.rows("target", ["train", "unlabeled"]).assign(is_target=1)
    return pd.concat([src, tgt], ignore_index=True)


@torch.no_grad()
def _features(tap, it, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """(features (N, D), is_target (N,), fold (N,)) of a dataset shard."""
    feats, ys, folds = [], [], []
    for b in it.iter_batches(batch_size=batch_size, batch_format="numpy"):
        feats.append(tap(loops.to_input(b["image"], device)).float())  # (B, D)
        ys.append(torch.tensor(b["is_target"]).float().to(device))
        folds.append(torch.tensor(b["fold"]).long().to(device))
    if not feats:
        return (torch.zeros(0, 1, device=device), torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.long, device=device))
    return torch.cat(feats), torch.cat(ys), torch.cat(folds)


def _gather(x: np.ndarray) -> np.ndarray:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, x)
        return np.concatenate(out)
    return x


def heldout_metrics(p: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, AUC and proxy A-distance (from the balanced error)."""
    pred = p >= 0.5
    y = y.astype(bool)
    acc = float((pred == y).mean()) if len(y) else float("nan")
    tpr = float(pred[y].mean()) if y.any() else float("nan")
    tnr = float((~pred[~y]).mean()) if (~y).any() else float("nan")
    balanced = (tpr + tnr) / 2
    return {"heldout_accuracy": acc, "heldout_balanced_accuracy": balanced,
            "heldout_auc": loops.roc_auc(p, y),
            "proxy_a_distance": loops.proxy_a_distance(1 - balanced)}


def _fit_fold(x: torch.Tensor, y: torch.Tensor, d: DiscriminateConfig, bs: int, device,
              seed: int, w_pos: float, w_neg: float) -> tuple[torch.nn.Module, float]:
    """One discriminator trained on (x, y) for `d.epochs`; returns it (unwrapped) and its last
    epoch's mean loss. Every worker takes the same number of steps (DDP)."""
    import ray.train.torch

    disc = ray.train.torch.prepare_model(models.Discriminator(x.shape[1], d.hidden),
                                         move_to_device=device)
    opt = torch.optim.Adam(disc.parameters(), lr=d.lr)
    steps = int(train.allreduce_min(math.ceil(len(x) / bs), device))
    gen = torch.Generator().manual_seed(seed)
    loss_sum = 0.0
    for _epoch in range(d.epochs):
        disc.train()
        perm = torch.randperm(len(x), generator=gen).to(device)
        loss_sum = 0.0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            w = torch.where(y[idx] > 0, w_pos, w_neg)
            loss = F.binary_cross_entropy_with_logits(disc(x[idx]), y[idx], weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss)
    return train.unwrap(disc).eval(), loss_sum / max(steps, 1)


@torch.no_grad()
def _logits(disc: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return disc(x).double().cpu().numpy() if len(x) else np.zeros(0)


def train_fn(config: dict) -> dict:
    """Per-worker loop: features once (frozen g), then `discriminate.folds` MLPs, each trained
    on every fold but its own (cross-fitting) and calibrated on its own fold's out-of-fold
    scores. `config`: the `discriminate` section, `batch_size`, `seed`, `cpus`,
    `pretrain_model`, domain sizes. A checkpoint after each fold; a retry resumes there."""
    rank, device, model = train.classifier_worker(config)
    d = config["discriminate"]
    tap = models.FeatureTap(model.backbone, d.layer).eval().to(device)
    for p in tap.parameters():
        p.requires_grad = False
    import ray.train

    bs = config["batch_size"]
    x, y, fold = _features(tap, ray.train.get_dataset_shard("train"), 4 * bs, device)
    hx, hy, _ = _features(tap, ray.train.get_dataset_shard("heldout"), 4 * bs, device)
    # class-balanced weights from the global counts: each domain weighs half, so D's odds
    # are already the density ratio (the prior ratio it saw is 1)
    n_s, n_t = config["n_source"], config["n_target"]
    w_pos, w_neg = ((n_s + n_t) / (2 * n_t), (n_s + n_t) / (2 * n_s)) if d.balanced else (1, 1)
    k = max(1, d.folds)
    states, oof = [], []  # per fold: D's weights; (out-of-fold logits, labels)
    restored = train.restore()
    if restored is not None:
        state, _ = restored
        states = list(state["folds"])
        oof = [(z.numpy(), zy.numpy()) for z, zy in state["oof"]]
    for j in range(len(states), k):
        fit_rows = fold != j if k > 1 else torch.ones_like(fold, dtype=torch.bool)
        disc, loss = _fit_fold(x[fit_rows], y[fit_rows], d, bs, device,
                               config["seed"] * 1000 + 31 * j + rank, w_pos, w_neg)
        # without folds, D is calibrated on the held-out part (then its ECE is in-sample)
        mine = (x[fold == j], y[fold == j]) if k > 1 else (hx, hy)
        z = _gather(_logits(disc, mine[0]))
        zy = _gather(mine[1].cpu().numpy())
        states.append(train.cpu_state(disc))
        oof.append((z, zy))
        metrics = {"fold": j, "train_loss": loss,
                   "oof_auc": loops.roc_auc(calibration.sigmoid(z), zy)}
        if rank == 0:
            train.say(f"[discriminate] D {j + 1}/{k}  loss {loss:.3f}  "
                         f"{'out-of-fold' if k > 1 else 'held-out'} AUC "
                         f"{metrics['oof_auc']:.3f} on {len(z)} rows")
        last = j == k - 1
        if last:
            metrics.update(_final_metrics(states, oof, hx, hy, d.hidden, device))
        train.report_epoch(metrics, {"folds": states, "oof": [
            (torch.from_numpy(z), torch.from_numpy(zy)) for z, zy in oof]},
                              {"epoch": j, "metrics": metrics, "in_dim": int(x.shape[1])})
    return {}


def _final_metrics(states: list[dict], oof: list, hx: torch.Tensor, hy: torch.Tensor,
                   hidden: int, device) -> dict:
    """Platt parameters per fold, and the held-out metrics of the ensemble (mean calibrated
    logit) with its calibration error before and after."""
    platt = [calibration.fit_platt(z, zy) for z, zy in oof]
    raw, cal = [], []
    for state, ab in zip(states, platt, strict=True):
        disc = models.Discriminator(hx.shape[1] if len(hx) else 1, hidden).to(device)
        if len(hx):
            disc.load_state_dict(state)
            z = _logits(disc.eval(), hx)
        else:
            z = np.zeros(0)
        raw.append(z)
        cal.append(calibration.apply_platt(z, ab))
    hp_raw = _gather(calibration.sigmoid(np.mean(raw, axis=0)))
    hp = _gather(calibration.sigmoid(np.mean(cal, axis=0)))
    hyn = _gather(hy.cpu().numpy())
    out = heldout_metrics(hp, hyn)
    z_all = np.concatenate([z for z, _ in oof]) if oof else np.zeros(0)
    y_all = np.concatenate([zy for _, zy in oof]) if oof else np.zeros(0)
    out.update(platt=[list(ab) for ab in platt],
               oof_auc=loops.roc_auc(calibration.sigmoid(z_all), y_all),
               heldout_ece_raw=calibration.expected_calibration_error(hp_raw, hyn),
               heldout_ece=calibration.expected_calibration_error(hp, hyn))
    return out


def _adapt(s: _Sections, layout: RunLayout, manifest: readers.Manifest,
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
    result = train.fit(dann.dann_fn, s.scaling, *layout.train_run(STAGE, "dann"), datasets, {
        "discriminate": s.discriminate, "pretrain": s.pretrain, "data": s.data, "seed": seed,
        "cpus": s.scaling.cpus_per_worker, "pretrain_model": pretrain_model,
        "source_steps": steps})
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
                   rows: pd.DataFrame, held: np.ndarray,
                   reading: readers.Reading) -> tuple[dict, dict]:
    """Trains a D on `model_uri`'s frozen features; returns (state, meta) of its last epoch."""
    cols = ["image", "is_target", "fold"]
    size, cache, seed = s.model.frame, s.data.cache, s.seed
    rows = rows.assign(fold=calibration.fold_of(rows["sample_id"], ~held,
                                                s.discriminate.folds))
    datasets = {"train": readers.training_dataset(rows[~held], size, cache, cols, seed, reading),
                "heldout": readers.training_dataset(rows[held], size, cache, cols, None, reading)}
    result = train.fit(train_fn, s.scaling, *train_run, datasets, {
        "discriminate": s.discriminate, "batch_size": s.data.batch_size, "seed": seed,
        "cpus": s.scaling.cpus_per_worker, "pretrain_model": model_uri,
        "n_source": int((rows[~held]["is_target"] == 0).sum()),
        "n_target": int((rows[~held]["is_target"] == 1).sum())},
        progress=("discriminate reports", None))
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        return checkpoints.load_dir(d)


def _gap(m: dict) -> dict:
    return {k: m[k] for k in ("heldout_accuracy", "heldout_balanced_accuracy", "heldout_auc",
                              "proxy_a_distance")}


def run(layout: RunLayout, discriminate: DiscriminateConfig, model: ModelConfig,
        data_cfg: DataConfig, pretrain: PretrainConfig, scaling: ScalingConfig,
        seed: int) -> DiscriminateResult:
    """Trains D on frozen features (adapted ones in adversarial mode); returns held-out
    metrics and the domain sizes. `pretrain` gives DANN's augmentation."""
    t0 = time.time()
    s = _Sections(discriminate, model, data_cfg, pretrain, scaling, seed)
    d = discriminate
    manifest = readers.load_manifest(layout)
    pretrain_model = layout.pretrain_model
    classifier, _ = builders.load_classifier(pretrain_model)
    models.FeatureTap(classifier.backbone, d.layer)  # a bad layer fails here, clearly
    rows = domain_rows(manifest)
    held = calibration.heldout_mask(rows["sample_id"], d.heldout_fraction)
    n_source = int((rows["is_target"] == 0).sum())
    n_target = int((rows["is_target"] == 1).sum())
    # D on the pretrained features: the scoring D in standard mode, the gap "before" DANN
    reading = readers.reading(layout, data_cfg.max_image_pixels,
                           data_cfg.max_rejected_fraction, STAGE)
    state, meta = _discriminator(s, layout.train_run(STAGE), pretrain_model, rows, held, reading)
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
        layer=d.layer or "pooled penultimate (backbone output)",
        n_source=n_source, n_target=n_target, heldout=int(held.sum()),
        folds=len(state["folds"]), out_of_fold_auc=m["oof_auc"],
        heldout_calibration_error_raw=m["heldout_ece_raw"],
        heldout_calibration_error=m["heldout_ece"], platt=m["platt"], near_perfect=perfect,
        seconds=round(time.time() - t0, 2))
