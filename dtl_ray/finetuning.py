"""Fine-tuning one target model on in-memory arrays (plain PyTorch: used by Tune trials and the
teacher). The model starts from the pretrained source backbone with a fresh target head.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dtl_ray import checkpoints, loops, models, weighting

__all__ = ["Settings", "TrainSet", "epoch_order", "epoch_length", "mixed_repeats",
           "target_model", "train"]


@dataclass(frozen=True)
class Settings:
    """One trial's fine-tuning settings."""

    lr: float = 1e-3
    train_layers: str = "all"
    candidate_weight: float = 1.0
    epochs: int = 15
    batch_size: int = 64
    mix_ratio: float = 0.25
    epoch_samples: int = 640
    seed: int = 0


@dataclass(frozen=True)
class TrainSet:
    """Indices into the image pool with local labels and per-sample loss weights."""

    index: np.ndarray  # (N,) int rows of the pool
    label: np.ndarray  # (N,) int in [0, K_t)
    weight: np.ndarray  # (N,) float loss weights (1 for labeled target)
    labeled: np.ndarray  # (N,) bool: labeled target (True) or candidate (False)


def epoch_order(labeled: np.ndarray, mix_ratio: float, length: int,
                rng: np.random.Generator, batch_size: int | None = None) -> np.ndarray:
    """Positions into a TrainSet for one epoch of exactly `length` samples, shuffled.

    Labeled target samples are repeated until they make up at least `mix_ratio` of the data
    (candidates can outnumber them a hundredfold); the data is then repeated or cut to `length`
    so that every trial of a search takes the same number of optimiser steps per epoch (the
    same budget for a 30-image target-only run and a 3,000-image all-source run).

    batch_size: balanced batches. Every batch of `batch_size` consecutive positions holds the
    same number of labeled samples (that share of the batch, at least one), each stream
    cycling through fresh permutations, so no step is made of candidates alone.
    """
    lab = np.flatnonzero(labeled)
    cand = np.flatnonzero(~labeled)
    if batch_size and batch_size > 1 and len(lab) and len(cand) and length > 0:
        share = max(mix_ratio, len(lab) / (len(lab) + len(cand)))
        per = int(min(batch_size - 1, max(1, round(share * batch_size))))
        n = -(-length // batch_size)
        lab_s, cand_s = _cycled(lab, n * per, rng), _cycled(cand, n * (batch_size - per), rng)
        batches = [rng.permutation(np.concatenate([lab_s[i * per:(i + 1) * per],
                                                   cand_s[i * (batch_size - per):
                                                          (i + 1) * (batch_size - per)]]))
                   for i in range(n)]
        return np.concatenate(batches)[:length]
    order = np.concatenate([np.tile(lab, mixed_repeats(len(lab), len(cand), mix_ratio)), cand])
    if len(order) == 0 or length <= 0:
        return order[:0]
    copies = int(np.ceil(length / len(order)))
    return np.concatenate([rng.permutation(order) for _ in range(copies)])[:length]


def _cycled(positions: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` positions: fresh permutations of `positions`, one after another."""
    copies = -(-count // len(positions))
    return np.concatenate([rng.permutation(positions) for _ in range(copies)])[:count]


def mixed_repeats(n_labeled: int, n_candidates: int, mix_ratio: float) -> int:
    """How often the labeled samples are repeated to reach `mix_ratio` of the data."""
    if not n_labeled or not n_candidates or mix_ratio <= 0:
        return 1
    return max(1, int(np.ceil(mix_ratio * n_candidates / (1 - mix_ratio) / n_labeled)))


def epoch_length(sets: list[TrainSet], mix_ratio: float) -> int:
    """Samples per epoch for a search: one pass over its largest (mixed) training set."""
    sizes = [int(s.labeled.sum()) * mixed_repeats(int(s.labeled.sum()), int((~s.labeled).sum()),
                                                  mix_ratio) + int((~s.labeled).sum())
             for s in sets]
    return max(sizes + [1])


def target_model(pretrain_uri: str, num_classes: int) -> models.Classifier:
    """The pretrained source backbone with a fresh head for `num_classes` target classes."""
    state, meta = checkpoints.read_classifier(pretrain_uri)
    model = models.build_classifier(meta["backbone"], num_classes)
    backbone = {k[len("backbone."):]: v for k, v in state.items()
                if k.startswith("backbone.")}
    model.backbone.load_state_dict(backbone)
    return model


def train(model: models.Classifier, images: np.ndarray, train_set: TrainSet,
          val_images: np.ndarray, val_labels: np.ndarray, settings: Settings,
          aug: loops.Augment, device: str = "cpu", resume: dict | None = None,
          source_val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
          label_free: str = "dev") -> Iterator[tuple[dict, dict]]:
    """Trains epoch by epoch; yields (metrics, state) after each, state holding the latest and
    the best (by val accuracy, then val loss) weights, the optimiser and the epoch.

    `resume` is a state yielded earlier: training continues after its epoch.
    `source_val` (uint8 images, target-local labels, importance weights) of source val in the
    target's classes: each epoch's IWCV and DEV risks on it are reported, and the state also
    keeps `best_free`, the weights with the lowest `label_free` risk (no target label used).
    """
    models.set_trainable(model, settings.train_layers)
    model = loops.for_device(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    start, best = 0, {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": -1,
                      "model": None}
    best_free = {"risk": float("inf"), "epoch": -1, "model": None}
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start, best = resume["epoch"] + 1, resume["best"]
        best_free = resume.get("best_free", best_free)
    weights = np.where(train_set.labeled, 1.0, settings.candidate_weight * train_set.weight)
    bs = settings.batch_size
    for epoch in range(start, settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch])
        gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        order = epoch_order(train_set.labeled, settings.mix_ratio, settings.epoch_samples, rng,
                            bs)
        batches = ((images[train_set.index[o]], train_set.label[o], weights[o])
                   for o in (order[i:i + bs] for i in range(0, len(order), bs)))
        stats = loops.train_epoch(model, batches, opt, aug, gen, device)
        sched.step()
        val = loops.evaluate(loops.predict(model, val_images, device=device), val_labels)
        if (val["accuracy"], -val["loss"]) > (best["val_accuracy"], -best["val_loss"]):
            best = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "epoch": epoch,
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        metrics = {"epoch": epoch + 1, "train_loss": stats["loss"],
                   "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                   "best_val_accuracy": best["val_accuracy"], "best_val_loss": best["val_loss"],
                   "best_epoch": best["epoch"] + 1, "samples": len(order)}
        if source_val is not None and len(source_val[0]):
            logits = loops.predict(model, source_val[0], device=device)
            losses = torch.nn.functional.cross_entropy(
                logits, torch.tensor(np.asarray(source_val[1])).long(), reduction="none").numpy()
            risks = {"iwcv": weighting.iwcv_risk(losses, source_val[2]),
                     "dev": weighting.dev_risk(losses, source_val[2])}
            if risks[label_free] < best_free["risk"]:
                best_free = {"risk": risks[label_free], "epoch": epoch,
                             "model": {k: v.detach().cpu().clone()
                                       for k, v in model.state_dict().items()}}
            metrics.update({"iwcv_risk": risks["iwcv"], "dev_risk": risks["dev"],
                            "best_free_risk": best_free["risk"],
                            "best_free_epoch": best_free["epoch"] + 1})
        state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "best": best, "best_free": best_free}
        yield metrics, state
