"""PyTorch-only training and evaluation steps (no Ray): normalisation, batched augmentation,
epochs over batches, discriminator metrics.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Augment", "to_input", "autocast", "for_device", "on_gpu", "augment", "train_epoch",
           "evaluate", "predict", "roc_auc", "proxy_a_distance", "train_mode", "entropy",
           "unwrap", "cpu_state", "local_device", "set_threads"]

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Augment:
    """Per-sample random augmentation settings (all off by default)."""

    rotation: float = 0.0
    crop: float = 0.0
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0


def on_gpu(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def to_input(images: torch.Tensor | np.ndarray, device: torch.device | str = "cpu",
             channels_last: bool | None = None) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> normalised float (B, 3, H, W) on `device`.

    Images stay uint8 until the device, which moves a quarter of the bytes; on a GPU they go
    from pinned memory without blocking, and come out channels_last (the default there).
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # Ray hands out read-only views; torch wants to own writable ones
    x = torch.as_tensor(images)
    if on_gpu(device):
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W)
    x = (x - MEAN.to(x.device)) / STD.to(x.device)
    if channels_last is None:
        channels_last = on_gpu(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device | str):
    """bf16 autocast on a GPU (no loss scaling needed); nothing on CPU."""
    if on_gpu(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """The model on `device`; channels_last on a GPU (faster convolutions with AMP)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if on_gpu(device) else model


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation, translation (crop), flip, brightness and contrast, drawn per sample.

    One affine `grid_sample` does the geometry for the whole batch: no per-sample Python.
    x: (B, 3, H, W) normalised.
    """
    b = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) * (hi - lo) + lo).to(dev)

    if aug.rotation or aug.crop or aug.flip:
        angle = u(-aug.rotation, aug.rotation) * math.pi / 180
        sx = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(b, device=dev)
        tx, ty = u(-aug.crop, aug.crop) * 2, u(-aug.crop, aug.crop) * 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1),
                             torch.stack([sin * sx, cos, ty], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    if aug.brightness or aug.contrast:
        bright = u(-aug.brightness, aug.brightness).view(b, 1, 1, 1)
        contrast = u(1 - aug.contrast, 1 + aug.contrast).view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + bright / 0.226  # brightness in [0,1] pixel units
    return x


def train_mode(model: nn.Module) -> None:
    """Train mode, but BatchNorm layers whose weights are frozen keep their running stats."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Row entropy in nats of (B, K) probabilities."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def train_epoch(model: nn.Module, batches: Iterable, opt: torch.optim.Optimizer,
                aug: Augment | None = None, gen: torch.Generator | None = None,
                device: str = "cpu") -> dict:
    """One epoch over (images uint8 (B,H,W,3), labels (B,), [sample weights (B,)]) batches.

    Returns mean weighted loss and accuracy over the samples seen.
    """
    train_mode(model)
    total, correct, loss_sum = 0, 0, 0.0
    for batch in batches:
        images, labels = batch[0], torch.tensor(np.asarray(batch[1])).to(device).long()
        weights = torch.tensor(np.asarray(batch[2])).to(device).float() if len(batch) > 2 else None
        x = to_input(images, device)
        if aug is not None:
            x = augment(x, aug, gen)
        with autocast(device):
            logits = model(x).float()  # (B, K)
        losses = F.cross_entropy(logits, labels, reduction="none")
        loss = (losses * weights).sum() / weights.sum() if weights is not None else losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += float(losses.detach().sum())
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1)}


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256,
            device: str = "cpu", classes: list[int] | None = None) -> torch.Tensor:
    """Logits (N, K) for uint8 images (N, H, W, 3); `classes` keeps only those logit columns."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        with autocast(device):
            logits = model(to_input(images[i:i + batch_size], device)).float()
        out.append((logits[:, classes] if classes is not None else logits).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(classes or []))


def evaluate(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of (N, K) logits against labels (N,)."""
    labels = torch.tensor(np.asarray(labels)).long()
    if len(labels) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": float((logits.argmax(1) == labels).float().mean()),
            "loss": float(F.cross_entropy(logits, labels))}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank(method="average").to_numpy()
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def proxy_a_distance(error: float) -> float:
    """Proxy A-distance 2(1 - 2 err) from a domain classifier's held-out error."""
    return 2.0 * (1.0 - 2.0 * error)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def cpu_state(model: nn.Module) -> dict:
    """A copy of the model's weights on the CPU (unwrapped), to save or to keep as the best."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def local_device(use_gpu: bool) -> str:
    """The device of a process outside Ray Train: CUDA when asked for and present."""
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


def set_threads(cpus: int) -> None:
    """Torch's threads to the CPUs this process holds (OpenMP's too, if not set)."""
    import os

    torch.set_num_threads(max(1, cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
