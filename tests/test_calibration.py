"""Cross-fitting folds, Platt scaling and the calibration error (pure numpy)."""

import numpy as np
import pandas as pd

from dtl_ray.method import calibration


def _ids(n, prefix="source/train/c/"):
    return pd.Series([f"{prefix}{i}.png" for i in range(n)])


def test_folds_are_stable_balanced_and_only_for_training_rows():
    ids = _ids(5000)
    train = np.ones(5000, dtype=bool)
    train[:1000] = False
    f = calibration.fold_of(ids, train, 5)
    assert (f[:1000] == calibration.HELD_OUT).all()
    counts = np.bincount(f[1000:], minlength=5)
    assert counts.min() > 0.17 * 4000 and counts.max() < 0.23 * 4000
    assert (calibration.fold_of(ids[::-1].reset_index(drop=True), train[::-1], 5)[::-1] == f).all()
    # folds are drawn apart from the held-out split: the held-out rows are not one fold's
    held = calibration.heldout_mask(ids, 0.2)
    in_fold0 = calibration.fold_of(ids, np.ones(5000, dtype=bool), 5) == 0
    assert 0.1 < (held & in_fold0).sum() / held.sum() < 0.3
    assert (calibration.fold_of(ids, train, 1)[1000:] == 0).all()


def test_in_training_is_source_train_and_target_train_unlabeled_less_the_held_out():
    ids = _ids(400)
    held = calibration.heldout_mask(ids, 0.25)
    for domain, split, pooled in [("source", "train", True), ("source", "val", False),
                                  ("target", "train", True), ("target", "unlabeled", True),
                                  ("target", "val", False), ("target", "test", False)]:
        got = calibration.in_training([domain] * 400, [split] * 400, ids, 0.25)
        assert (got == (~held if pooled else np.zeros(400, bool))).all(), (domain, split)


def test_platt_recovers_a_known_logistic_link():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 40_000)
    y = rng.random(40_000) < calibration.sigmoid(0.5 * z - 0.7)
    a, b = calibration.fit_platt(z, y, balanced=False)
    assert abs(a - 0.5) < 0.03 and abs(b + 0.7) < 0.05


def test_platt_shrinks_an_overconfident_score_and_lowers_its_calibration_error():
    rng = np.random.default_rng(1)
    true = rng.normal(0, 1.5, 20_000)
    y = rng.random(20_000) < calibration.sigmoid(true)
    z = 6 * true  # overconfident: the right order, logits six times too large
    before = calibration.expected_calibration_error(calibration.sigmoid(z), y)
    ab = calibration.fit_platt(z, y)
    after = calibration.expected_calibration_error(
        calibration.sigmoid(calibration.apply_platt(z, ab)), y)
    assert 0.12 < ab[0] < 0.22 and before > 0.1 and after < 0.02


def test_separable_domains_give_a_finite_slope_and_an_order_kept():
    z = np.concatenate([np.linspace(-30, -5, 500), np.linspace(5, 30, 100)])
    y = np.arange(600) >= 500
    a, b = calibration.fit_platt(z, y)
    assert np.isfinite(a) and 0 < a < 10
    p = calibration.sigmoid(calibration.apply_platt(z, (a, b)))
    assert (np.diff(p[:500]) > 0).all()  # still strictly ordered where float32 p is 0
    assert calibration.sigmoid(np.array([-800.0]))[0] == 0.0  # no overflow warning path
    assert calibration.sigmoid(np.array([800.0]))[0] == 1.0


def test_effective_sample_size_and_near_perfect():
    assert calibration.effective_sample_size(np.ones(10)) == 1.0
    assert calibration.effective_sample_size(np.array([1.0] + [0.0] * 9)) == 0.1
    assert calibration.near_perfect(0.99, 0.9) and calibration.near_perfect(0.9, 0.96)
    assert not calibration.near_perfect(0.9, 0.8)
