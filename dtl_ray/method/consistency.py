"""Consistency regularisation on the unlabeled target pool (plain PyTorch, no Ray).

The recipe is AdaMatch's (Berthelot et al., ICLR 2022), which contains FixMatch's (Sohn et
al., NeurIPS 2020):

- every step also draws `unlabeled_ratio` x batch unlabeled target images;
- their *weak* view (the training augmentation) sets a pseudo-label, re-read at every step,
  so pseudo-labels are revised as the model improves (the teacher's are fixed once);
- *distribution alignment*: the weak view's class probabilities are scaled by the ratio of
  the labeled batch's mean prediction to the unlabeled batch's, then renormalised, so the
  pseudo-labels follow the labeled data's class mix instead of the model's bias;
- an *online, relative confidence threshold*: a pseudo-label counts when its aligned
  confidence is at least `threshold` x the labeled batch's mean confidence in this step
  (AdaMatch; a fixed threshold of 0.95 starves a model that is unsure on the target);
- the *strong* view (RandAugment from `torchvision.transforms.v2` with a random magnitude per
  image, then Cutout) learns it, with a weight that ramps from 0 to `weight` over the first
  half of the run (AdaMatch's warm-up).

Not done: AdaMatch's random logit interpolation between batch-norm statistics of the source
batch alone and of the joint batch; here the weak view runs alone (no gradient), so its
batch-norm statistics are the target's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtl_ray.method import loops

__all__ = ["Consistency", "strong_views", "cutout", "ramp", "pseudo_targets", "train_epoch"]

RA_BINS = 31  # torchvision's RandAugment magnitude bins (0 .. 30)


@dataclass(frozen=True)
class Consistency:
    """The consistency term's settings (`finetune.consistency_*`)."""

    weight: float = 1.0
    """The most the unlabeled loss counts against the labeled one (0: off)."""
    threshold: float = 0.9
    """Relative confidence threshold (x the labeled batch's mean confidence)."""
    unlabeled_ratio: int = 1
    """Unlabeled images per labeled image in a step (FixMatch's mu)."""
    align: bool = True
    """Distribution alignment of the pseudo-labels to the labeled batch's predictions."""


_RANDAUGMENT: dict[int, object] = {}


def _randaugment(magnitude: int):
    """One RandAugment (2 ops) per magnitude, built once per process."""
    if magnitude not in _RANDAUGMENT:
        from torchvision.transforms import v2

        _RANDAUGMENT[magnitude] = v2.RandAugment(num_ops=2, magnitude=magnitude,
                                                 num_magnitude_bins=RA_BINS)
    return _RANDAUGMENT[magnitude]


def cutout(x: torch.Tensor, gen: torch.Generator, most: float = 0.5,
           fill: int = 127) -> torch.Tensor:
    """A square of side up to `most` x the image side, at a random place, set to `fill` in
    every image of the uint8 batch x (B, 3, H, W); drawn per image, in place."""
    b, _, h, w = x.shape
    side = (torch.rand(b, generator=gen) * most * min(h, w)).long().clamp_min(1)  # (B,)
    cy = (torch.rand(b, generator=gen) * h).long()
    cx = (torch.rand(b, generator=gen) * w).long()
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    half = (side // 2).view(b, 1, 1)
    box = ((ys - cy.view(b, 1, 1)).abs() <= half) & ((xs - cx.view(b, 1, 1)).abs() <= half)
    x[box.unsqueeze(1).expand_as(x)] = fill  # box: (B, H, W)
    return x


def strong_views(images: np.ndarray | torch.Tensor, gen: torch.Generator) -> np.ndarray:
    """The strong augmentation of uint8 images (B, H, W, 3): per image, RandAugment's two
    random operations at a magnitude drawn uniformly from 1 to 30, then Cutout. Seeded by
    `gen` (torchvision's transforms draw from torch's global generator: forked here)."""
    x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    if not len(x):
        return np.asarray(images)
    mags = torch.randint(1, RA_BINS, (len(x),), generator=gen).tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        out = torch.stack([_randaugment(m)(img) for m, img in zip(mags, x)])
    return cutout(out, gen).permute(0, 2, 3, 1).numpy()  # (B, H, W, 3) uint8


def ramp(step: int, total: int) -> float:
    """AdaMatch's warm-up of the unlabeled loss: 0 at the start, 1 from half of `total`
    steps on, a half cosine between."""
    if total <= 0:
        return 1.0
    return 0.5 - math.cos(min(math.pi, 2 * math.pi * step / total)) / 2


def pseudo_targets(lab_probs: torch.Tensor, unl_probs: torch.Tensor, threshold: float,
                   align: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels (U,), mask (U,) float) for unlabeled class probabilities (U, K) of their
    weak views, given the labeled batch's (L, K): aligned to the labeled batch's mean
    prediction, kept where the aligned confidence reaches `threshold` x the labeled batch's
    mean confidence."""
    p = unl_probs
    if align and len(lab_probs):
        p = p * (lab_probs.mean(0) / p.mean(0).clamp_min(1e-6))  # (U, K)
        p = p / p.sum(1, keepdim=True).clamp_min(1e-12)
    conf, target = p.max(1)
    bar = threshold * (lab_probs.max(1).values.mean() if len(lab_probs) else 1.0)
    return target, (conf >= bar).float()


def train_epoch(model: nn.Module, batches: Iterable, unlabeled: Iterable,
                opt: torch.optim.Optimizer, aug: loops.Augment | None, gen: torch.Generator,
                device: str, cons: Consistency, step: int, total: int) -> dict:
    """`loops.train_epoch` with the consistency term: every (images, labels, weights) batch
    is paired with the next uint8 batch of `unlabeled`. `step`: the run's steps before this
    epoch, `total`: its steps in all (for `ramp`). Returns the supervised loss and accuracy,
    the unlabeled loss and the share of pseudo-labels kept (`mask_rate`)."""
    loops.train_mode(model)
    # sums stay on the device: no host sync per step
    sums = torch.zeros(4, device=device)  # correct, supervised loss, unlabeled loss, kept
    seen, unl_seen = 0, 0
    for (images, labels_, weights_), unl in zip(batches, unlabeled):
        labels = torch.as_tensor(np.asarray(labels_)).to(device).long()
        weights = torch.as_tensor(np.asarray(weights_)).to(device).float()
        x_weak = loops.to_input(unl, device)
        x_strong = loops.to_input(strong_views(unl, gen), device)
        x_lab = loops.to_input(images, device)
        if aug is not None:
            x_lab, x_weak, x_strong = (loops.augment(v, aug, gen)
                                       for v in (x_lab, x_weak, x_strong))
        with torch.no_grad(), loops.autocast(device):
            weak = model(x_weak).float().softmax(1)  # (U, K)
        with loops.autocast(device):
            logits = model(torch.cat([x_lab, x_strong])).float()  # (L + U, K)
        lab_logits, strong_logits = logits[:len(labels)], logits[len(labels):]
        losses = F.cross_entropy(lab_logits, labels, reduction="none")
        sup = (losses * weights).sum() / weights.sum()
        target, mask = pseudo_targets(lab_logits.detach().softmax(1), weak, cons.threshold,
                                      cons.align)
        unl_loss = (F.cross_entropy(strong_logits, target, reduction="none") * mask).mean()
        loss = sup + cons.weight * ramp(step, total) * unl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(labels)
        unl_seen += len(target)
        sums += torch.stack([(lab_logits.argmax(1) == labels).sum().float(),
                             losses.detach().sum(), unl_loss.detach() * len(target),
                             mask.sum()])
    correct, loss_sum, unl_sum, kept = sums.tolist()
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
            "unlabeled_loss": unl_sum / max(unl_seen, 1), "mask_rate": kept / max(unl_seen, 1)}
