"""The discriminator's Train worker loop: features once from the frozen backbone, then one
MLP per fold (cross-fitting), each calibrated (Platt) on its own fold's out-of-fold logits;
the held-out part gives accuracy, AUC, calibration error and the proxy A-distance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dtl_ray import console
from dtl_ray.config import DiscriminateConfig
from dtl_ray.method import builders, calibration, clusters, domain, loops
from dtl_ray.raykit import train
from dtl_ray.stages.discriminate.specs import FitSpec

__all__ = ["train_fn", "heldout_metrics", "classifier_worker"]


@torch.no_grad()
def _features(tap, it, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor, np.ndarray]:
    """(features (N, D), is_target (N,), fold (N,), sample_id (N,)) of a dataset shard."""
    feats, ys, folds, ids = [], [], [], []
    for b in it.iter_batches(batch_size=batch_size, batch_format="numpy"):
        with loops.autocast(device):  # bf16 on a GPU (no loss here: nothing to scale)
            feats.append(tap(loops.to_input(b["image"], device)).float())  # (B, D)
        ys.append(torch.tensor(b["is_target"]).float().to(device))
        folds.append(torch.tensor(b["fold"]).long().to(device))
        ids.append(np.asarray(b["sample_id"], dtype=object))
    if not feats:
        return (torch.zeros(0, 1, device=device), torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.long, device=device), np.zeros(0, object))
    return torch.cat(feats), torch.cat(ys), torch.cat(folds), np.concatenate(ids)


CLUSTER_SAMPLE = 4000  # source rows, over all workers, that the k-means centres are fitted on


def _write_clusters(x: torch.Tensor, y: torch.Tensor, ids: np.ndarray, k: int, uri: str,
                    seed: int) -> None:
    """Source train's kinds: every worker fits the same k-means on the same gathered sample
    of source rows, assigns its own rows and writes them as one part of `uri`."""
    import pandas as pd

    from dtl_ray import storage
    from dtl_ray.storage import parquet

    rank, world = train.world()
    src = (y == 0).cpu().numpy()
    xs = x[torch.from_numpy(src).to(x.device)].cpu()
    take = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed + rank))
    sample = _gather(xs[take[:CLUSTER_SAMPLE // world]].numpy())
    centres = clusters.fit(torch.from_numpy(sample), k, seed)
    parquet.write_df(pd.DataFrame({"sample_id": ids[src],
                                   "cluster": clusters.assign(centres, xs).numpy()}),
                     storage.join(uri, f"part-{rank:03d}.parquet"))


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

    disc = domain.discriminator(d.layer, x.shape[1], d.hidden).to(device)
    disc.fit_scale(x)
    disc = ray.train.torch.prepare_model(disc, move_to_device=device)
    opt = torch.optim.Adam(disc.parameters(), lr=d.lr)
    steps = int(train.allreduce_min(math.ceil(len(x) / bs), device))
    gen = torch.Generator().manual_seed(seed)
    loss_sum = torch.zeros((), device=device)
    for _epoch in range(d.epochs):
        disc.train()
        perm = torch.randperm(len(x), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            w = torch.where(y[idx] > 0, w_pos, w_neg)
            loss = F.binary_cross_entropy_with_logits(disc(x[idx]), y[idx], weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()  # summed on the device: no sync per step
    return loops.unwrap(disc).eval(), float(loss_sum) / max(steps, 1)


@torch.no_grad()
def _logits(disc: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    return disc(x).double().cpu().numpy() if len(x) else np.zeros(0)


def classifier_worker(model_uri: str, cpus: int, seed: int):
    """A Train worker's set-up for loops that start from a trained classifier (`model_uri`),
    with `cpus` threads and torch seeded: (rank, device, the classifier)."""
    rank, _ = train.world()
    loops.set_threads(cpus)
    torch.manual_seed(seed)
    model, _ = builders.load_classifier(model_uri)
    return rank, train.device(), model


def train_fn(config: dict) -> dict:
    """Per-worker loop: features once (frozen g), then `discriminate.folds` MLPs, each trained
    on every fold but its own (cross-fitting) and calibrated on its own fold's out-of-fold
    scores. `config["spec"]`: a `FitSpec`. A checkpoint after each fold; a retry resumes
    there."""
    spec: FitSpec = config["spec"]
    rank, device, model = classifier_worker(spec.model_uri, spec.cpus, spec.seed)
    d = spec.discriminate
    tap = domain.FeatureTap(model.backbone, d.layer).eval().to(device)
    for p in tap.parameters():
        p.requires_grad = False
    import ray.train

    bs = spec.batch_size
    x, y, fold, ids = _features(tap, ray.train.get_dataset_shard("train"), 4 * bs, device)
    hx, hy, _, _ = _features(tap, ray.train.get_dataset_shard("heldout"), 4 * bs, device)
    if spec.clusters_uri and d.clusters > 0:
        _write_clusters(x, y, ids, d.clusters, spec.clusters_uri, spec.seed)
    # class-balanced weights from the global counts: each domain weighs half, so D's odds
    # are already the density ratio (the prior ratio it saw is 1)
    n_s, n_t = spec.n_source, spec.n_target
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
        disc, loss = _fit_fold(x[fit_rows], y[fit_rows], d, d.batch_size or bs, device,
                               spec.seed * 1000 + 31 * j + rank, w_pos, w_neg)
        # without folds, D is calibrated on the held-out part (then its ECE is in-sample)
        mine = (x[fold == j], y[fold == j]) if k > 1 else (hx, hy)
        z = _gather(_logits(disc, mine[0]))
        zy = _gather(mine[1].cpu().numpy())
        states.append(loops.cpu_state(disc))
        oof.append((z, zy))
        metrics = {"fold": j, "train_loss": loss,
                   "oof_auc": loops.roc_auc(calibration.sigmoid(z), zy)}
        if rank == 0:
            console.detail(f"[discriminate] D {j + 1}/{k}  loss {loss:.3f}  "
                      f"{'out-of-fold' if k > 1 else 'held-out'} AUC "
                      f"{metrics['oof_auc']:.3f} on {len(z)} rows")
        last = j == k - 1
        if last:
            metrics.update(_final_metrics(states, oof, hx, hy, d, device))
        train.report_epoch(metrics, {"folds": states, "oof": [
            (torch.from_numpy(z), torch.from_numpy(zy)) for z, zy in oof]},
            {"epoch": j, "metrics": metrics, "in_dim": int(x.shape[1])})
    return {}


def _final_metrics(states: list[dict], oof: list, hx: torch.Tensor, hy: torch.Tensor,
                   d: DiscriminateConfig, device) -> dict:
    """Platt parameters per fold, and the held-out metrics of the ensemble (mean calibrated
    logit) with its calibration error before and after."""
    platt = [calibration.fit_platt(z, zy) for z, zy in oof]
    raw, cal = [], []
    for state, ab in zip(states, platt, strict=True):
        disc = domain.discriminator(d.layer, hx.shape[1] if len(hx) else 1, d.hidden).to(device)
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
               heldout_ece=calibration.expected_calibration_error(hp, hyn),
               heldout_roc=calibration.roc_points(hp, hyn),
               heldout_reliability=calibration.reliability(hp, hyn))
    return out
