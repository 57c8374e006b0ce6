import numpy as np
import pytest
import torch

from dtl_ray.method import batches, loops, models, target_fit


def test_to_input_normalises_and_permutes():
    x = loops.to_input(np.full((2, 4, 5, 3), 255, np.uint8))
    assert x.shape == (2, 3, 4, 5)
    torch.testing.assert_close(x[0, :, 0, 0], (1 - loops.MEAN.view(3)) / loops.STD.view(3))


def test_augment_identity_and_shapes():
    x = torch.randn(6, 3, 16, 16)
    torch.testing.assert_close(loops.augment(x, loops.Augment()), x)
    y = loops.augment(x, loops.Augment(15, 0.1, True, 0.2, 0.2), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)


def test_flip_only_mirrors():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 3, 1, 1)
    y = loops.augment(x, loops.Augment(flip=True), torch.Generator().manual_seed(0))
    for i in range(64):
        assert torch.allclose(y[i], x[i], atol=1e-4) or torch.allclose(y[i], x[i].flip(-1),
                                                                        atol=1e-4)


def test_roc_auc_hand_values():
    assert loops.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert loops.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert loops.roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0


def test_proxy_a_distance():
    assert loops.proxy_a_distance(0.5) == 0.0
    assert loops.proxy_a_distance(0.0) == 2.0
    assert loops.proxy_a_distance(0.1) == pytest.approx(1.6)


def test_evaluate_accuracy_and_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    out = loops.evaluate(logits, np.array([0, 1, 1]))
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, torch.tensor([0, 1, 1]))))


def test_epoch_order_mixes_and_has_a_fixed_length():
    labeled = np.array([True] * 2 + [False] * 18)
    # 2 labeled repeated 3x (6 of 24 = 25%), one pass = 24 samples
    assert batches.mixed_repeats(2, 18, 0.25) == 3
    order = batches.epoch_order(labeled, 0.25, 24, np.random.default_rng(0))
    assert len(order) == 24 and labeled[order].sum() == 6
    assert sorted(set(order)) == list(range(20))
    tiny = batches.epoch_order(np.array([True] * 3), 0.25, 30, np.random.default_rng(0))
    assert len(tiny) == 30 and np.bincount(tiny).tolist() == [10, 10, 10]
    sets = [batches.TrainSet(np.arange(20), np.zeros(20, int), np.ones(20), labeled),
            batches.TrainSet(np.arange(3), np.zeros(3, int), np.ones(3), np.ones(3, bool))]
    assert [batches.one_pass(s, 0.25) for s in sets] == [24, 3]
    # the consistency term's pool counts when it is the longer pass
    assert batches.one_pass(sets[1], 0.25, unlabeled=40) == 40
    assert batches.one_pass(sets[0], 0.25, unlabeled=10) == 24


def test_epoch_lengths_share_the_longest_pass_while_small_and_cap_it():
    # a small search: every cell gets the longest pass (one budget for every arm)
    assert batches.epoch_lengths([50, 700, 6700], least=10_000, most=100_000) == [6700] * 3
    # a large one: its own pass, at least `least`, at most `most`
    assert batches.epoch_lengths([2_000, 40_000, 1_200_000], least=10_000,
                                 most=100_000) == [10_000, 40_000, 100_000]
    assert batches.epoch_lengths([50, 700], least=0, most=100) == [50, 100]


def test_balanced_batches_hold_the_same_labeled_share_every_step():
    labeled = np.array([True] * 5 + [False] * 95)
    order = batches.epoch_order(labeled, 0.25, 100, np.random.default_rng(1), batch_size=8)
    assert len(order) == 100
    per_batch = [int(labeled[order[i:i + 8]].sum()) for i in range(0, 96, 8)]
    assert per_batch == [2] * 12  # a quarter of each batch of 8
    # each stream cycles through whole permutations: the 95 candidates all come before any
    # comes twice (here 72 candidate slots in 12 full batches, no repeats)
    cand = order[~labeled[order]]
    assert len(set(cand[:72].tolist())) == 72
    # labeled above the mix ratio already: their natural share, still at least one per batch
    many = np.array([True] * 60 + [False] * 40)
    o = batches.epoch_order(many, 0.25, 40, np.random.default_rng(2), batch_size=10)
    assert [int(many[o[i:i + 10]].sum()) for i in range(0, 40, 10)] == [6] * 4
    # nothing to mix: one stream, as without batch_size
    only = batches.epoch_order(np.ones(3, bool), 0.25, 30, np.random.default_rng(0), 8)
    assert np.bincount(only).tolist() == [10, 10, 10]


def test_train_epoch_learns_a_separable_problem():
    torch.manual_seed(0)
    images = np.zeros((64, 8, 8, 3), np.uint8)
    labels = np.arange(64) % 2
    images[labels == 1] = 255
    model = models.Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 8)),
                              8, 2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    batches = [(images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    first = loops.train_epoch(model, batches, opt)["loss"]
    for _ in range(5):
        last = loops.train_epoch(model, batches, opt)
    assert last["loss"] < first and last["accuracy"] == 1.0


def test_streamed_batches_keep_the_labeled_share_and_read_pass_after_pass():
    """A cell whose candidates stream: each batch holds the labeled share from memory and the
    rest from the stream, the epoch has exactly `epoch_samples`, a pass that ends is followed
    by the next one of the same epoch, and candidates carry `candidate_weight * w`."""
    lab_images = np.zeros((4, 2, 2, 3), np.uint8)
    lab_y = np.zeros(4, np.int64)
    asked = []

    def passes(epoch, k):
        asked.append((epoch, k))
        for start in range(0, 30, 7):  # a pass: 30 candidates in batches of 7 (the last 2)
            n = min(7, 30 - start)
            yield {"image": np.full((n, 2, 2, 3), 9, np.uint8), "y": np.ones(n, np.int64),
                   "w": np.full(n, 4.0)}

    settings = target_fit.Settings(batch_size=8, mix_ratio=0.25, epoch_samples=50,
                                   candidate_weight=0.5)
    make = batches.stream_batches(lab_images, lab_y, 30, passes, settings)
    got = list(make(3, np.random.default_rng(0)))
    assert [len(b[1]) for b in got] == [8] * 6 + [2]
    for images, labels, weights in got[:-1]:
        assert (labels == 0).sum() == 2  # round(0.25 * 8) labeled in every full batch
        assert ((images == 9).all(axis=(1, 2, 3)) == (labels == 1)).all()
        np.testing.assert_allclose(weights[labels == 1], 2.0)  # 0.5 * 4.0
        np.testing.assert_allclose(weights[labels == 0], 1.0)
    # 7 steps x 6 candidates = 42 > 30: a second pass of the same epoch
    assert asked == [(3, 0), (3, 1)]
    with pytest.raises(ValueError, match="empty"):
        list(batches.stream_batches(lab_images, lab_y, 5, lambda e, k: iter(()),
                                       settings)(0, np.random.default_rng(0)))
