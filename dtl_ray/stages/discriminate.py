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

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dtl_ray import builders, checkpoints, dann, data, loops, models, raytrain
from dtl_ray.config import (
    DataConfig,
    DiscriminateConfig,
    ModelConfig,
    PretrainConfig,
    ScalingConfig,
)
from dtl_ray.layout import RunLayout
from dtl_ray.results import DiscriminateResult

__all__ = ["run", "heldout_mask", "domain_rows"]

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


def heldout_mask(sample_ids: pd.Series, fraction: float) -> np.ndarray:
    """A stable held-out split: a sample is held out when the hash of its id says so."""
    h = sample_ids.map(lambda s: int(hashlib.md5(s.encode()).hexdigest()[:8], 16) / 16**8)
    return (h < fraction).to_numpy()


def domain_rows(manifest: data.Manifest) -> pd.DataFrame:
    """Source train (is_target 0) and target train + unlabeled (is_target 1)."""
    src = manifest.rows("source", "train").assign(is_target=0)
    tgt = manifest.rows("target", ["train", "unlabeled"]).assign(is_target=1)
    return pd.concat([src, tgt], ignore_index=True)


@torch.no_grad()
def _features(tap, it, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    feats, ys = [], []
    for b in it.iter_batches(batch_size=batch_size, batch_format="numpy"):
        feats.append(tap(loops.to_input(b["image"], device)).float())  # (B, D)
        ys.append(torch.tensor(b["is_target"]).float().to(device))
    if not feats:
        return torch.zeros(0, 1, device=device), torch.zeros(0, device=device)
    return torch.cat(feats), torch.cat(ys)


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


def train_fn(config: dict) -> dict:
    """Per-worker loop: features once (frozen g), then the MLP for many epochs. `config`: the
    `discriminate` section, `batch_size`, `seed`, `cpus`, `pretrain_model`, domain sizes."""
    import ray.train
    import ray.train.torch

    rank, device, model = raytrain.classifier_worker(config)
    d = config["discriminate"]
    tap = models.FeatureTap(model.backbone, d.layer).eval().to(device)
    for p in tap.parameters():
        p.requires_grad = False
    bs = config["batch_size"]
    x, y = _features(tap, ray.train.get_dataset_shard("train"), 4 * bs, device)
    hx, hy = _features(tap, ray.train.get_dataset_shard("heldout"), 4 * bs, device)
    disc = ray.train.torch.prepare_model(models.Discriminator(x.shape[1], d.hidden))
    opt = torch.optim.Adam(disc.parameters(), lr=d.lr)
    # class-balanced weights from the global counts: each domain weighs half, so D's odds
    # are already the density ratio (the prior ratio it saw is 1)
    n_s, n_t = config["n_source"], config["n_target"]
    w_pos, w_neg = ((n_s + n_t) / (2 * n_t), (n_s + n_t) / (2 * n_s)) if d.balanced else (1, 1)
    # every worker must take the same number of steps (DDP): the smallest shard decides
    steps = int(raytrain.allreduce_min(math.ceil(len(x) / bs), device))
    start = 0
    restored = raytrain.restore()
    if restored is not None:
        state, meta = restored
        raytrain.unwrap(disc).load_state_dict(state["discriminator"])
        opt.load_state_dict(state["optimizer"])
        start = meta["epoch"] + 1
    gen = torch.Generator().manual_seed(config["seed"] + rank)
    every = max(1, d.epochs // 5)
    for epoch in range(start, d.epochs):
        disc.train()
        perm = torch.randperm(len(x), generator=gen).to(device)
        loss_sum = 0.0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            logits = disc(x[idx])
            w = torch.where(y[idx] > 0, w_pos, w_neg)
            loss = F.binary_cross_entropy_with_logits(logits, y[idx], weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss)
        if (epoch + 1) % every and epoch + 1 != d.epochs:
            continue
        disc.eval()
        with torch.no_grad():
            hp = torch.sigmoid(disc(hx)).cpu().numpy() if len(hx) else np.zeros(0)
        metrics = heldout_metrics(_gather(hp), _gather(hy.cpu().numpy()))
        metrics.update(epoch=epoch, train_loss=loss_sum / max(steps, 1))
        if rank == 0:
            raytrain.say(f"[discriminate] epoch {epoch + 1}/{d.epochs}  loss "
                         f"{metrics['train_loss']:.3f}  held-out acc "
                         f"{metrics['heldout_accuracy']:.3f} AUC {metrics['heldout_auc']:.3f} "
                         f"PAD {metrics['proxy_a_distance']:.2f}")
        raytrain.report_epoch(metrics, {"discriminator": raytrain.cpu_state(disc),
                                        "optimizer": opt.state_dict()},
                              {"epoch": epoch, "metrics": metrics, "in_dim": int(x.shape[1])})
    return {}


def _adapt(s: _Sections, layout: RunLayout, manifest: data.Manifest,
           rows: pd.DataFrame) -> list:
    """The DANN run; saves the adapted classifier, returns its epoch history."""
    pretrain_model = layout.pretrain_model
    size, cache, seed = s.model.image_size, s.data.cache, s.seed
    src = manifest.rows("source", "train")
    datasets = {"source": data.training_dataset(src, size, cache, ["image", "label"], seed),
                "target": data.training_dataset(rows[rows["is_target"] == 1], size, cache,
                                                ["image"], seed)}
    steps = math.ceil(len(src) / s.scaling.num_workers / s.data.batch_size)
    result = raytrain.fit(dann.dann_fn, s.scaling, *layout.train_run(STAGE, "dann"), datasets, {
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
                   rows: pd.DataFrame, held: np.ndarray) -> tuple[dict, dict]:
    """Trains a D on `model_uri`'s frozen features; returns (state, meta) of its last epoch."""
    cols = ["image", "is_target"]
    size, cache, seed = s.model.image_size, s.data.cache, s.seed
    datasets = {"train": data.training_dataset(rows[~held], size, cache, cols, seed),
                "heldout": data.training_dataset(rows[held], size, cache, cols, None)}
    result = raytrain.fit(train_fn, s.scaling, *train_run, datasets, {
        "discriminate": s.discriminate, "batch_size": s.data.batch_size, "seed": seed,
        "cpus": s.scaling.cpus_per_worker, "pretrain_model": model_uri,
        "n_source": int((rows[~held]["is_target"] == 0).sum()),
        "n_target": int((rows[~held]["is_target"] == 1).sum())})
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
    manifest = data.load_manifest(layout)
    pretrain_model = layout.pretrain_model
    classifier, _ = builders.load_classifier(pretrain_model)
    models.FeatureTap(classifier.backbone, d.layer)  # a bad layer fails here, clearly
    rows = domain_rows(manifest)
    held = heldout_mask(rows["sample_id"], d.heldout_fraction)
    n_source = int((rows["is_target"] == 0).sum())
    n_target = int((rows["is_target"] == 1).sum())
    # D on the pretrained features: the scoring D in standard mode, the gap "before" DANN
    state, meta = _discriminator(s, layout.train_run(STAGE), pretrain_model, rows, held)
    scoring_model, adversarial = pretrain_model, {}
    if d.adapts:
        dann_uri, history = layout.dann_model, _adapt(s, layout, manifest, rows)
        state_a, meta_a = _discriminator(s, layout.train_run(STAGE, "adapted"), dann_uri, rows,
                                          held)
        adversarial = {"before": _gap(meta["metrics"]), "after": _gap(meta_a["metrics"]),
                       "dann_curve": history, "dann_model": dann_uri}
        if d.mode == "adversarial":  # score with D on the adapted features
            state, meta, scoring_model = state_a, meta_a, dann_uri
    checkpoints.save_discriminator(layout.discriminator, state["discriminator"],
                                   d.layer, meta["in_dim"], d.hidden, n_source, n_target,
                                   d.balanced, model=scoring_model)
    m = meta["metrics"]
    return DiscriminateResult(
        mode=d.mode, adversarial=adversarial or None,
        heldout_accuracy=m["heldout_accuracy"],
        heldout_balanced_accuracy=m["heldout_balanced_accuracy"],
        heldout_auc=m["heldout_auc"], proxy_a_distance=m["proxy_a_distance"],
        layer=d.layer or "pooled penultimate (backbone output)",
        n_source=n_source, n_target=n_target, heldout=int(held.sum()),
        seconds=round(time.time() - t0, 2))
