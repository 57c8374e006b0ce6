"""Fine-tuning one target model (plain PyTorch: run by Tune trials, by Train workers inside
them, and by the teacher). The model starts from the pretrained source backbone with a fresh
target head. Batches come from a `batches(epoch, rng)` function and, with the consistency term
(`method.consistency`), unlabeled target images from an `unlabeled(epoch, rng)` function
(`method.batches` makes both).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dtl_ray.method import consistency, loops, models, weighting
from dtl_ray.storage import checkpoints

__all__ = ["Settings", "target_model", "source_risks", "train"]


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
    consistency: consistency.Consistency | None = None
    """The consistency term on the unlabeled target pool (None: off, the arm uses none)."""


def target_model(pretrain_uri: str, num_classes: int, seed: int) -> models.Classifier:
    """The pretrained source backbone with a fresh head for `num_classes` target classes,
    initialised from `seed`: the same head in every trial of a search, whatever ran before
    in the process (Tune reuses trial processes), so arms differ only by their data."""
    state, meta = checkpoints.read_classifier(pretrain_uri)
    torch.manual_seed(seed)
    model = models.build_classifier(meta["backbone"], num_classes)
    backbone = {k[len("backbone."):]: v for k, v in state.items()
                if k.startswith("backbone.")}
    model.backbone.load_state_dict(backbone)
    return model


def source_risks(model: torch.nn.Module, source_val, device) -> dict:
    """IWCV and DEV risks on importance-weighted source val: `source_val()` yields (uint8
    images, target-local labels, importance weights) batches."""
    losses, weights = [], []
    for images, labels, w in source_val():
        logits = loops.predict(model, images, device=device)
        losses.append(torch.nn.functional.cross_entropy(
            logits, torch.tensor(np.asarray(labels)).long(), reduction="none").numpy())
        weights.append(np.asarray(w, dtype=np.float64))
    if not losses:
        return {}
    losses_, weights_ = np.concatenate(losses), np.concatenate(weights)
    return {"iwcv": weighting.iwcv_risk(losses_, weights_),
            "dev": weighting.dev_risk(losses_, weights_)}


def train(model: models.Classifier, batches, val_images: np.ndarray, val_labels: np.ndarray,
          settings: Settings, aug: loops.Augment, device: str = "cpu",
          resume: dict | None = None, source_val=None, label_free: str = "dev",
          prepare=None, unlabeled=None) -> Iterator[tuple[dict, dict]]:
    """Trains epoch by epoch on `batches(epoch, rng)` (`memory_batches`, `stream_batches`);
    yields (metrics, state) after each, state holding the latest and the best (by val
    accuracy, then val loss) weights, the optimiser and the epoch.

    `resume` is a state yielded earlier: training continues after its epoch.
    `source_val` (a function yielding batches of uint8 images, target-local labels and
    importance weights of source val in the target's classes): each epoch's IWCV and DEV
    risks on it are reported, and the state also keeps `best_free`, the weights with the
    lowest `label_free` risk (no target label used).
    `prepare(model)`: wraps the model for data-parallel training (a Train worker's
    `prepare_model`) after the layers to train are chosen; default: moved to `device`.
    `unlabeled(epoch, rng)`: an endless iterator of uint8 unlabeled target batches for the
    consistency term (`settings.consistency`; `memory_unlabeled`, `stream_unlabeled`).
    """
    models.set_trainable(model, settings.train_layers)
    model = prepare(model) if prepare is not None else loops.for_device(model, device)
    core = loops.unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    start, best = 0, {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": -1,
                      "model": None}
    best_free = {"risk": float("inf"), "epoch": -1, "model": None}
    if resume is not None:
        core.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start, best = resume["epoch"] + 1, resume["best"]
        best_free = resume.get("best_free", best_free)
    for epoch in range(start, settings.epochs):
        rng = np.random.default_rng([settings.seed, epoch])
        gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        counted = _Counted(batches(epoch, rng))
        cons = settings.consistency if unlabeled is not None else None
        if cons is not None:
            steps = -(-settings.epoch_samples // settings.batch_size)
            unl = unlabeled(epoch, np.random.default_rng([settings.seed, epoch, 1]))
            stats = consistency.train_epoch(model, counted, unl, opt, aug,
                                            gen, device, cons, epoch * steps,
                                            settings.epochs * steps)
        else:
            stats = loops.train_epoch(model, counted, opt, aug, gen, device)
        sched.step()
        val = loops.evaluate(loops.predict(core, val_images, device=device), val_labels)
        if (val["accuracy"], -val["loss"]) > (best["val_accuracy"], -best["val_loss"]):
            best = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "epoch": epoch,
                    "model": loops.cpu_state(model)}
        metrics = {"epoch": epoch + 1, "train_loss": stats["loss"],
                   "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                   "best_val_accuracy": best["val_accuracy"], "best_val_loss": best["val_loss"],
                   "best_epoch": best["epoch"] + 1, "samples": counted.samples,
                   **{k: stats[k] for k in ("unlabeled_loss", "mask_rate") if k in stats}}
        risks = source_risks(core, source_val, device) if source_val is not None else {}
        if risks:
            if risks[label_free] < best_free["risk"]:
                best_free = {"risk": risks[label_free], "epoch": epoch,
                             "model": loops.cpu_state(model)}
            metrics.update({"iwcv_risk": risks["iwcv"], "dev_risk": risks["dev"],
                            "best_free_risk": best_free["risk"],
                            "best_free_epoch": best_free["epoch"] + 1})
        state = {"model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "best": best, "best_free": best_free}
        yield metrics, state


class _Counted:
    """Batches passed through, counting their samples."""

    def __init__(self, batches) -> None:
        self.batches, self.samples = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.samples += len(batch[1])
            yield batch
