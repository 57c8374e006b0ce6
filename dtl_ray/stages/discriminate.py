"""Stage 2: a domain discriminator D on frozen features of the pretrained backbone.

Source train is label 0, target train + unlabeled label 1; a hashed part of both is held out
to report accuracy, AUC and the proxy A-distance. Outputs `<run>/discriminate/discriminator.pt`.
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dtl_ray import checkpoints, data, loops, models, raytrain, scoring, storage
from dtl_ray.config import PipelineConfig, from_dict

__all__ = ["run", "heldout_mask", "domain_rows"]

STAGE = "discriminate"


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
    """Per-worker loop: features once (frozen g), then the MLP for many epochs."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(PipelineConfig, config["cfg"])
    d = cfg.discriminate
    rank, _ = raytrain.world()
    raytrain.set_threads(cfg.scaling.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()
    model, _ = scoring.load_classifier(config["pretrain_model"])
    tap = models.FeatureTap(model.backbone, d.layer).eval().to(device)
    for p in tap.parameters():
        p.requires_grad = False
    bs = cfg.data.batch_size
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
    gen = torch.Generator().manual_seed(cfg.seed + rank)
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


def run(cfg: PipelineConfig, run_uri: str) -> dict:
    """Trains D on frozen features; returns held-out metrics and the domain sizes."""
    t0 = time.time()
    stage_uri = storage.join(run_uri, STAGE)
    manifest = data.load_manifest(run_uri)
    pretrain_model = storage.join(run_uri, "pretrain", "model.pt")
    model, _ = scoring.load_classifier(pretrain_model)
    models.FeatureTap(model.backbone, cfg.discriminate.layer)  # a bad layer fails here, clearly
    rows = domain_rows(manifest)
    held = heldout_mask(rows["sample_id"], cfg.discriminate.heldout_fraction)
    cols = ["image", "is_target"]
    size, cache = cfg.model.image_size, cfg.data.cache
    datasets = {"train": data.training_dataset(rows[~held], size, cache, cols),
                "heldout": data.training_dataset(rows[held], size, cache, cols)}
    n_source = int((rows["is_target"] == 0).sum())
    n_target = int((rows["is_target"] == 1).sum())
    result = raytrain.fit(train_fn, cfg, stage_uri, "train", datasets, {
        "pretrain_model": pretrain_model, "n_source": int((rows[~held]["is_target"] == 0).sum()),
        "n_target": int((rows[~held]["is_target"] == 1).sum())})
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state, meta = checkpoints.load_dir(d)
    checkpoints.save(storage.join(stage_uri, "discriminator.pt"),
                     {"discriminator": state["discriminator"]},
                     {"layer": cfg.discriminate.layer, "in_dim": meta["in_dim"],
                      "hidden": cfg.discriminate.hidden, "n_source": n_source,
                      "n_target": n_target, "balanced": cfg.discriminate.balanced})
    m = meta["metrics"]
    return {"heldout_accuracy": m["heldout_accuracy"],
            "heldout_balanced_accuracy": m["heldout_balanced_accuracy"],
            "heldout_auc": m["heldout_auc"], "proxy_a_distance": m["proxy_a_distance"],
            "layer": cfg.discriminate.layer or "pooled penultimate (backbone output)",
            "n_source": n_source, "n_target": n_target,
            "heldout": int(held.sum()), "seconds": round(time.time() - t0, 2)}
