"""Kinds of source images, found without labels (plain PyTorch, no Ray): k-means on the
discriminator's features of source train, so that a report can show which kinds the
discriminator ranks target-like and which it leaves out (a style of rendering, a background,
a source within the source).

The features are standardised by a sample's mean and standard deviation first (features of
several depths differ in scale by orders of magnitude); k-means++ seeding, then Lloyd's
iterations, all seeded.
"""

from __future__ import annotations

import torch

__all__ = ["Centroids", "fit", "assign"]


class Centroids:
    """k centroids (k, D) in the standardised space, with its shift and scale (D,)."""

    def __init__(self, centres: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        self.centres, self.shift, self.scale = centres, shift, scale


def _nearest(z: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centre (N,), squared distance to it (N,))."""
    d = torch.cdist(z, centres).pow(2)  # (N, k)
    dist, idx = d.min(1)
    return idx, dist


def fit(x: torch.Tensor, k: int, seed: int, iterations: int = 25) -> Centroids:
    """k-means of the rows of x (N, D); k is cut to N."""
    x = x.float()
    shift, scale = x.mean(0), x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1])
    z = (x - shift) / scale  # (N, D)
    k = max(1, min(k, len(z)))
    gen = torch.Generator().manual_seed(seed)
    centres = z[torch.randint(len(z), (1,), generator=gen)]  # (1, D)
    while len(centres) < k:  # k-means++: the next centre far from those chosen
        _, dist = _nearest(z, centres)
        p = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(dist))
        centres = torch.cat([centres, z[torch.multinomial(p, 1, generator=gen)]])
    for _ in range(iterations):
        idx, _ = _nearest(z, centres)
        moved = torch.stack([z[idx == j].mean(0) if (idx == j).any() else centres[j]
                             for j in range(k)])
        if torch.allclose(moved, centres):
            break
        centres = moved
    # clusters numbered by size, largest first: the same numbering for the same data
    idx, _ = _nearest(z, centres)
    order = torch.argsort(torch.bincount(idx, minlength=k), descending=True, stable=True)
    return Centroids(centres[order], shift, scale)


def assign(c: Centroids, x: torch.Tensor) -> torch.Tensor:
    """Each row's cluster (N,)."""
    if not len(x):
        return torch.zeros(0, dtype=torch.long)
    return _nearest((x.float() - c.shift.to(x.device)) / c.scale.to(x.device),
                    c.centres.to(x.device))[0]
