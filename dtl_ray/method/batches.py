"""Where a fine-tuning run's samples come from, epoch by epoch (numpy, no Ray): the mix of
labeled target and candidates, the same number of samples per epoch in every arm, balanced
batches; batches from a cell held in memory or streamed from Ray Data; and the unlabeled
target batches of the consistency term.

A `batches(epoch, rng)` function yields (uint8 images, labels, loss weights) batches; an
`unlabeled(epoch, rng)` function yields uint8 image batches without end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dtl_ray.method.target_fit import Settings

__all__ = ["TrainSet", "epoch_order", "one_pass", "epoch_lengths", "mixed_repeats",
           "memory_batches",
           "stream_batches", "memory_unlabeled", "stream_unlabeled"]


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


def one_pass(s: TrainSet, mix_ratio: float, unlabeled: int = 0) -> int:
    """Samples in one pass over a run's data: its (mixed) training set, or, for a run with
    the consistency term, the unlabeled batches' worth of its pool (`unlabeled`: the pool's
    size over `unlabeled_ratio`) when that is longer."""
    n_lab, n_cand = int(s.labeled.sum()), int((~s.labeled).sum())
    return max(n_lab * mixed_repeats(n_lab, n_cand, mix_ratio) + n_cand, unlabeled, 1)


def epoch_lengths(passes: list[int], least: int, most: int) -> list[int]:
    """Samples per epoch of each run of a search from its `one_pass`: its own pass, at
    least the longest pass up to `least` (while cells are small every arm gets the same
    budget; a 50-image cell is not starved), at most `most` (`finetune.min_epoch_samples`,
    `max_epoch_samples`)."""
    floor = min(max(passes, default=1), least)
    return [max(1, min(max(p, floor), most)) for p in passes]


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


def memory_unlabeled(images: np.ndarray, settings: Settings):
    """`unlabeled(epoch, rng)` for an unlabeled pool held in memory: endless batches of
    `unlabeled_ratio` x `batch_size` images, cycling through fresh permutations."""
    size = settings.consistency.unlabeled_ratio * settings.batch_size

    def unlabeled(epoch: int, rng: np.random.Generator):
        while True:
            order = rng.permutation(len(images))
            if len(order) < size:  # a pool smaller than a batch: several permutations
                order = _cycled(np.arange(len(images)), size, rng)
            for i in range(0, len(order) - size + 1, size):
                yield images[order[i:i + size]]

    return unlabeled


def stream_unlabeled(passes, settings: Settings):
    """`unlabeled(epoch, rng)` for a streamed pool: `passes(epoch, k)` as in
    `stream_batches` (numpy batches with `image`), cut to batches of `unlabeled_ratio` x
    `batch_size`, pass after pass."""
    size = settings.consistency.unlabeled_ratio * settings.batch_size

    def unlabeled(epoch: int, rng: np.random.Generator):
        return (b["image"] for b in _exactly(lambda k: passes(epoch, k), size, ("image",)))

    return unlabeled


def _exactly(passes, size: int, keys=("image", "y", "w")):
    """Batches of exactly `size` rows (`keys`) from `passes(0)`, `passes(1)`, ..."""
    buf: dict[str, list] = {key: [] for key in keys}
    held, k = 0, 0
    while True:
        got = 0
        for batch in passes(k):
            n = len(batch[keys[0]])
            got += n
            for key in buf:
                buf[key].append(np.asarray(batch[key]))
            held += n
            while held >= size:
                joined = {key: np.concatenate(v) for key, v in buf.items()}
                yield {key: v[:size] for key, v in joined.items()}
                buf = {key: [v[size:]] for key, v in joined.items()}
                held -= size
        k += 1
        if not got:
            raise ValueError("a fine-tuning stream (candidates or unlabeled pool) is empty")
