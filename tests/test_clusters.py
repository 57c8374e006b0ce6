"""Kinds of source images (`method.clusters`): k-means on the discriminator's features."""

import torch

from dtl_ray.method import clusters


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 1000.0]])
    sizes = [60, 40, 20]
    x = torch.cat([c + torch.randn(n, 3, generator=g) * torch.tensor([1.0, 1.0, 100.0])
                   for c, n in zip(centres, sizes)])
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return x, truth


def test_kmeans_finds_the_blobs_whatever_the_scale_numbered_by_size():
    x, truth = _blobs()
    c = clusters.fit(x, 3, seed=0)
    got = clusters.assign(c, x)
    # the largest blob is cluster 0, then 1, then 2: the numbering follows the sizes
    assert torch.equal(got, truth)
    # the third feature's scale (x100) does not drown the others: standardised first
    assert torch.allclose(c.scale, x.std(0))


def test_kmeans_is_seeded_and_copes_with_fewer_rows_than_kinds():
    x, _ = _blobs(1)
    a, b = clusters.fit(x, 3, seed=4), clusters.fit(x, 3, seed=4)
    assert torch.equal(clusters.assign(a, x), clusters.assign(b, x))
    few = clusters.fit(x[:2], 5, seed=0)
    assert len(few.centres) == 2
    assert clusters.assign(few, x[:0]).shape == (0,)
