"""The consistency term (`method.consistency`): strong views, the warm-up, pseudo-labels with
distribution alignment and the relative threshold, and a training epoch that uses them."""

import numpy as np
import pytest
import torch

from dtl_ray.method import batches, consistency, loops, models, target_fit


def test_strong_views_keep_shape_are_seeded_and_change_the_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    a = consistency.strong_views(images, torch.Generator().manual_seed(1))
    b = consistency.strong_views(images, torch.Generator().manual_seed(1))
    c = consistency.strong_views(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    changed = [(a[i] != images[i]).mean() for i in range(len(images))]
    assert min(changed) > 0  # every image is altered (at least its cutout square)
    assert np.median(changed) > 0.2
    # torch's global generator is left as it was (the transforms draw from it)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    consistency.strong_views(images, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(1), before)


def test_cutout_draws_a_square_per_image():
    x = torch.full((8, 3, 20, 20), 255, dtype=torch.uint8)
    out = consistency.cutout(x.clone(), torch.Generator().manual_seed(0), most=0.5, fill=0)
    holes = (out == 0).all(1)  # (B, H, W)
    areas = holes.flatten(1).sum(1)
    assert (areas > 0).all() and (areas <= 11 * 11).all()
    assert len({tuple(torch.nonzero(h)[0].tolist()) for h in holes}) > 1  # not one place
    for h in holes:  # a filled rectangle: rows x columns of its bounding box
        ys, xs = torch.nonzero(h, as_tuple=True)
        assert int(h.sum()) == (int(ys.max() - ys.min()) + 1) * (int(xs.max() - xs.min()) + 1)


def test_ramp_warms_up_over_half_the_steps():
    assert consistency.ramp(0, 100) == pytest.approx(0.0)
    assert consistency.ramp(25, 100) == pytest.approx(0.5)
    assert consistency.ramp(50, 100) == pytest.approx(1.0)
    assert consistency.ramp(99, 100) == pytest.approx(1.0)
    values = [consistency.ramp(s, 100) for s in range(51)]
    assert values == sorted(values)


def test_pseudo_targets_align_to_the_labeled_mix_and_threshold_relative():
    lab = torch.tensor([[0.9, 0.1], [0.1, 0.9]])  # balanced, mean confidence 0.9
    # the model leans to class 0 on the unlabeled batch
    unl = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45]])
    plain, plain_mask = consistency.pseudo_targets(lab, unl, 0.5, align=False)
    assert plain.tolist() == [0, 0, 0, 0]
    aligned, mask = consistency.pseudo_targets(lab, unl, 0.5, align=True)
    assert 1 in aligned.tolist()  # alignment flips the least sure to the starved class
    assert aligned[2] == 0  # the sure one stays
    # relative threshold: 0.9 x mean labeled confidence 0.9 = 0.81
    _, strict = consistency.pseudo_targets(lab, unl, 0.9, align=False)
    assert strict.tolist() == [0.0, 0.0, 1.0, 0.0]
    # a less confident labeled batch lowers the bar
    _, loose = consistency.pseudo_targets(lab * 0 + 0.5, unl, 0.9, align=False)
    assert loose.tolist() == [0.0, 0.0, 1.0, 0.0] or loose.sum() >= strict.sum()
    assert float(plain_mask.sum()) >= float(strict.sum())


def _toy(n, rng, shift=0):
    """Images whose class is which half is bright (class 0: top, 1: bottom), `shift`: the
    target's darker background."""
    y = rng.integers(0, 2, n)
    x = np.full((n, 16, 16, 3), 40 + shift, np.uint8)
    for i, c in enumerate(y):
        x[i, (0 if c == 0 else 8):(8 if c == 0 else 16)] = 220
    x = np.clip(x + rng.integers(-20, 20, x.shape), 0, 255).astype(np.uint8)
    return x, y


def test_a_consistency_epoch_trains_reports_and_is_reproducible():
    rng = np.random.default_rng(0)
    lab_x, lab_y = _toy(8, rng)
    unl_x, _ = _toy(64, rng, shift=30)
    settings = target_fit.Settings(lr=3e-3, epochs=2, batch_size=8, epoch_samples=32, seed=3,
                                   consistency=consistency.Consistency(threshold=0.5))
    ts = batches.TrainSet(np.arange(8), lab_y, np.ones(8), np.ones(8, bool))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.build_classifier("smallcnn", 2)
        out = list(target_fit.train(model, batches.memory_batches(lab_x, ts, settings),
                                    lab_x, lab_y, settings, loops.Augment(),
                                    unlabeled=batches.memory_unlabeled(unl_x, settings)))
        runs.append(out)
    metrics = [m for m, _ in runs[0]]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(0.0 <= m["mask_rate"] <= 1.0 and m["unlabeled_loss"] >= 0 for m in metrics)
    assert metrics[-1]["mask_rate"] > 0  # some pseudo-labels pass the threshold
    for (m1, s1), (m2, s2) in zip(*runs):
        assert m1["train_loss"] == pytest.approx(m2["train_loss"])
        for k in s1["model"]:
            torch.testing.assert_close(s1["model"][k], s2["model"][k])


def test_memory_unlabeled_cycles_fresh_permutations_of_exact_size():
    images = np.arange(10)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    settings = target_fit.Settings(batch_size=4, consistency=consistency.Consistency(
        unlabeled_ratio=1))
    it = batches.memory_unlabeled(images.astype(np.uint8), settings)(
        0, np.random.default_rng(0))
    drawn = [next(it) for _ in range(6)]
    assert all(b.shape == (4, 2, 2, 3) for b in drawn)
    first_pass = np.concatenate(drawn[:2])[:, 0, 0, 0]
    assert len(set(first_pass.tolist())) == 8  # no image twice within a permutation
    small = batches.memory_unlabeled(images[:3].astype(np.uint8), settings)(
        0, np.random.default_rng(0))
    assert next(small).shape == (4, 2, 2, 3)  # a pool smaller than a batch still fills it


def test_stream_unlabeled_cuts_passes_into_exact_batches():
    def passes(epoch, k):
        return iter([{"image": np.full((3, 1, 1, 3), 10 * k + j, np.uint8)} for j in range(2)])

    settings = target_fit.Settings(batch_size=4, consistency=consistency.Consistency())
    it = batches.stream_unlabeled(passes, settings)(0, np.random.default_rng(0))
    got = [next(it)[:, 0, 0, 0].tolist() for _ in range(3)]
    assert got == [[0, 0, 0, 1], [1, 1, 10, 10], [10, 11, 11, 11]]
