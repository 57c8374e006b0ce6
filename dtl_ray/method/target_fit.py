"""Fine-tuning one target model (plain PyTorch: run by Tune trials, by Train workers inside
them, and by the teacher). The model starts from the pretrained source backbone with a fresh
target head. Batches come from a `batches(epoch, rng)` function: `memory_batches` samples a
cell held in memory, `stream_batches` mixes labeled target held in memory with candidates
streamed from Ray Data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dtl_ray.method import loops, models, weighting
from dtl_ray.storage import checkpoints

__all__ = ["Settings", "TrainSet", "epoch_order", "epoch_length", "mixed_repeats",
           "target_model", "memory_batches", "stream_batches", "train"]


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


def memory_batches(images: np.ndarray, train_set: TrainSet, settings: Settings):
    """`batches(epoch, rng)` for a cell held in memory (`images` indexed by `train_set`):
    balanced batches of `epoch_order`, candidates' losses weighted `candidate_weight * w`."""
    weights = np.where(train_set.labeled, 1.0, settings.candidate_weight * train_set.weight)
    bs = settings.batch_size

    def batches(epoch: int, rng: np.random.Generator):
        order = epoch_order(train_set.labeled, settings.mix_ratio, settings.epoch_samples, rng,
                            bs)
        return ((images[train_set.index[o]], train_set.label[o], weights[o])
                for o in (order[i:i + bs] for i in range(0, len(order), bs)))

    return batches


def stream_batches(lab_images: np.ndarray, lab_labels: np.ndarray, n_candidates: int,
                   passes, settings: Settings):
    """`batches(epoch, rng)` for a cell whose candidates are streamed: every batch holds the
    labeled share (`mix_ratio`, or more when labeled rows are that many, at least one) drawn
    from the labeled target in memory, cycling through fresh permutations, and the rest from
    the candidate stream; `settings.epoch_samples` samples in all (as `memory_batches`).

    passes(epoch, k): the k-th pass of the epoch over the cell's candidates, an iterable of
    numpy batches with `image`, `y` (target-local label) and `w` (importance weight), in an
    order of its own; a pass that ends before the epoch does is followed by the next.
    """
    bs, n_lab = settings.batch_size, len(lab_labels)
    share = max(settings.mix_ratio, n_lab / max(n_lab + n_candidates, 1))
    per = int(min(bs - 1, max(1, round(share * bs)))) if n_lab else 0
    steps = -(-settings.epoch_samples // bs)

    def batches(epoch: int, rng: np.random.Generator):
        lab = _cycled(np.arange(n_lab), steps * per, rng) if n_lab else np.zeros(0, np.int64)
        cand = _exactly(lambda k: passes(epoch, k), bs - per)
        left = settings.epoch_samples
        for i in range(steps):
            c = next(cand)
            li = lab[i * per:(i + 1) * per]
            images = np.concatenate([lab_images[li], c["image"]])
            labels = np.concatenate([lab_labels[li], c["y"]]).astype(np.int64)
            weights = np.concatenate([np.ones(len(li)),
                                      settings.candidate_weight * c["w"].astype(np.float64)])
            p = rng.permutation(len(labels))[:min(bs, left)]
            left -= len(p)
            yield images[p], labels[p], weights[p]

    return batches


def _exactly(passes, size: int):
    """Batches of exactly `size` rows (`image`, `y`, `w`) from `passes(0)`, `passes(1)`, ..."""
    buf: dict[str, list] = {"image": [], "y": [], "w": []}
    held, k = 0, 0
    while True:
        got = 0
        for batch in passes(k):
            got += len(batch["y"])
            for key in buf:
                buf[key].append(np.asarray(batch[key]))
            held += len(batch["y"])
            while held >= size:
                joined = {key: np.concatenate(v) for key, v in buf.items()}
                yield {key: v[:size] for key, v in joined.items()}
                buf = {key: [v[size:]] for key, v in joined.items()}
                held -= size
        k += 1
        if not got:
            raise ValueError("a fine-tuning cell's candidate stream is empty")


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
          prepare=None) -> Iterator[tuple[dict, dict]]:
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
        stats = loops.train_epoch(model, counted, opt, aug, gen, device)
        sched.step()
        val = loops.evaluate(loops.predict(core, val_images, device=device), val_labels)
        if (val["accuracy"], -val["loss"]) > (best["val_accuracy"], -best["val_loss"]):
            best = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "epoch": epoch,
                    "model": loops.cpu_state(model)}
        metrics = {"epoch": epoch + 1, "train_loss": stats["loss"],
                   "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                   "best_val_accuracy": best["val_accuracy"], "best_val_loss": best["val_loss"],
                   "best_epoch": best["epoch"] + 1, "samples": counted.samples}
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
