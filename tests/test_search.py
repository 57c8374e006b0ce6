"""The fine-tune search's design without Ray: cells, settings, members, training sets."""

import numpy as np
import pandas as pd
import pytest

from dtl_ray.config import FinetuneConfig
from dtl_ray.method import design


def _scores():
    """20 source train rows (classes 0, 1 shared; class 2 source-only), weights 20..1."""
    n = 20
    return pd.DataFrame({
        "sample_id": [f"source/train/s{i:02d}" for i in range(n)],
        "domain": "source", "split": "train",
        "label": [i % 3 for i in range(n)],
        "weight": np.arange(n, 0, -1, dtype=float), "p_target": np.linspace(0.9, 0.1, n)})


def _unlabeled():
    return pd.DataFrame({"sample_id": [f"target/unlabeled/u{i}" for i in range(10)],
                         "pred": [i % 2 for i in range(10)],
                         "confidence": [0.95, 0.9, 0.3, 0.85, 0.8, 0.2, 0.99, 0.7, 0.65, 0.1],
                         "p_target": np.linspace(0.1, 0.9, 10)})


def test_cells_cover_every_arm_and_fraction():
    f = FinetuneConfig(strategies=["discriminator", "random"], source_fractions=[0.25, 0.5],
                       target_fractions=[0.0, 0.3])
    cells = design.make_cells(f, default_target_fraction=0.4)
    assert cells[:2] == [design.Cell("target_only", "none", 0.0, 0.0),
                         design.Cell("all_source", "all", 1.0, 0.0)]
    grid = [(c.strategy, c.source_fraction, c.target_fraction) for c in cells
            if c.strategy in ("discriminator", "random")]
    assert grid == [(s, sf, tf) for s in ("discriminator", "random") for sf in (0.0, 0.25, 0.5)
                    for tf in (0.0, 0.3) if sf or tf]
    assert [c for c in cells if c.arm == "self_training"] == [
        design.Cell("self_training", "confidence", 0.0, 0.3, consistency=True)]
    assert {c.arm for c in cells} == set(design.ARMS)
    # the consistency term: every arm that uses the unlabeled pool, and the practitioner's
    # recipes on the controls' data
    assert cells[-2:] == [design.Cell("fixmatch", "none", 0.0, 0.0, consistency=True),
                          design.Cell("adamatch", "all", 1.0, 0.0, consistency=True)]
    assert all(c.consistency == (c.arm in design.UNLABELED_ARMS) for c in cells)
    assert not any(c.consistency for c in cells if c.arm in ("target_only", "all_source"))
    for plain in (design.make_cells(FinetuneConfig(consistency_weight=0.0), 0.4),
                  design.make_cells(f, 0.4, has_unlabeled=False)):
        assert not any(c.consistency for c in plain)
        assert {c.arm for c in plain} == set(design.ARMS) - {"fixmatch", "adamatch"}
    # the method's soft cells: the whole source at every alpha and target fraction
    assert [(c.source_fraction, c.target_fraction, c.alpha) for c in cells
            if c.strategy == "weighted"] == [(1.0, tf, a) for a in (0.5, 1.0) for tf in (0.0, 0.3)]
    assert all(c.arm == "method" for c in cells if c.strategy == "weighted")
    assert all(c.alpha is None for c in cells if c.strategy != "weighted")
    off = design.make_cells(FinetuneConfig(weight_alphas=[]), 0.4)
    assert not [c for c in off if c.strategy == "weighted"]
    # no positive target fraction searched: self-training still runs, at select's fraction
    only_zero = design.make_cells(FinetuneConfig(target_fractions=[0.0]), 0.4)
    assert [c.target_fraction for c in only_zero if c.arm == "self_training"] == [0.4]
    assert all(c.source_fraction > 0 for c in only_zero if c.arm == "method")


def test_settings_are_drawn_once_and_shared():
    f = FinetuneConfig(lr=[1e-3, 3e-3], train_layers=["all", "head"], candidate_weight=[1.0],
                       num_samples=3)
    a, b = design.settings_grid(f, seed=1), design.settings_grid(f, seed=1)
    assert a == b and len(a) == 3
    assert len({tuple(s.values()) for s in a}) == 3  # fewer than the grid: no repeats
    assert all(s["lr"] in (1e-3, 3e-3) and s["train_layers"] in ("all", "head") for s in a)
    big = design.settings_grid(FinetuneConfig(lr=[1e-3], train_layers=["all"],
                                              candidate_weight=[1.0], num_samples=3), 0)
    assert big == [{"lr": 1e-3, "train_layers": "all", "candidate_weight": 1.0}] * 3


def test_members_give_random_and_confidence_cells_the_methods_sizes():
    scores, unl = _scores(), _unlabeled()
    classes = [0, 1]
    method = design.members(design.Cell("method", "discriminator", 0.25, 0.5), scores, unl,
                            classes, seed=0, confidence_floor=0.6, balanced=False)
    rand = design.members(design.Cell("random_subset", "random", 0.25, 0.5), scores, unl,
                          classes, seed=0, confidence_floor=0.6, balanced=False)
    conf = design.members(design.Cell("self_training", "confidence", 0.0, 0.5), scores, unl,
                          classes, seed=0, confidence_floor=0.6, balanced=False)
    # 14 source rows in classes 0 and 1; a quarter is 4 (rounded from 3.5): the heaviest ones
    assert list(method[0]["sample_id"]) == [f"source/train/s{i:02d}" for i in (0, 1, 3, 4)]
    assert len(rand[0]) == len(method[0]) and set(rand[0]["label"]) <= {0, 1}
    assert conf[0].empty
    # 5 of 10 unlabeled wanted, but only 7 clear the 0.6 floor; the method ranks by the mean
    # of the percentile ranks in confidence and in 1 - p_target
    assert len(method[1]) == 5 and (method[1]["confidence"] >= 0.6).all()
    assert len(rand[1]) == len(conf[1]) == len(method[1])
    assert list(conf[1]["confidence"]) == sorted(unl["confidence"], reverse=True)[:5]
    everything = design.members(design.Cell("all_source", "all", 1.0, 0.0), scores, unl,
                                classes, seed=0, confidence_floor=0.6, balanced=False)
    assert len(everything[0]) == 14 and everything[1].empty


def test_train_set_rows_labels_and_weights():
    scores, unl = _scores(), _unlabeled()
    labeled = pd.DataFrame({"sample_id": ["target/train/a", "target/train/b"], "label": [1, 0]})
    src = scores.iloc[[0, 1]]  # labels 0, 1; weights 20, 19
    tgt = unl.iloc[[3]]  # pseudo-label 1
    ids = list(labeled["sample_id"]) + list(src["sample_id"]) + list(tgt["sample_id"])
    pos = {s: 10 + i for i, s in enumerate(reversed(ids))}
    local = {0: 1, 1: 0}  # global class id -> index among the target's classes
    ts = design.train_set(labeled, src, tgt, pos, local, weight_by_w=True)
    assert ts.index.tolist() == [pos[s] for s in ids]
    assert ts.label.tolist() == [0, 1, 1, 0, 0]
    assert ts.labeled.tolist() == [True, True, False, False, False]
    assert ts.weight.tolist() == pytest.approx([1, 1, 20 / 19.5, 19 / 19.5, 1])
    plain = design.train_set(labeled, src, tgt, pos, local, weight_by_w=False)
    assert plain.weight.tolist() == [1.0] * 5


def test_soft_cells_draw_the_whole_source_by_w_to_the_alpha():
    scores, unl = _scores(), _unlabeled()
    big = pd.concat([scores.assign(sample_id=scores["sample_id"] + f"-{k}")
                     for k in range(50)], ignore_index=True)  # 700 rows of classes 0, 1
    labeled = pd.DataFrame({"sample_id": ["target/train/a"], "label": [0]})
    one = design.Cell("method", "weighted", 1.0, 0.0, alpha=1.0)
    src, tgt = design.members(one, big, unl, [0, 1], seed=0, confidence_floor=0.6)
    eligible = big[big["label"].isin([0, 1])]
    assert src["copies"].sum() == len(eligible) and tgt.empty  # as many draws as images
    assert src["sample_id"].is_unique and src["sample_id"].isin(eligible["sample_id"]).all()
    # draws in proportion to w: weight-20 images come ~20x as often as weight-1 ones
    per_w = src.groupby("weight")["copies"].sum() / eligible.groupby("weight").size()
    assert per_w[20.0] / per_w.loc[[1.0, 2.0]].mean() > 8
    half = design.members(design.Cell("method", "weighted", 1.0, 0.0, alpha=0.5), big, unl,
                          [0, 1], seed=0, confidence_floor=0.6)[0]
    per_half = half.groupby("weight")["copies"].sum() / eligible.groupby("weight").size()
    ratio = per_half[20.0] / per_half.loc[[1.0, 2.0]].mean()
    assert 2 < ratio < 8  # flatter: sqrt(20 / 1.5) = 3.7
    again = design.members(one, big, unl, [0, 1], seed=0, confidence_floor=0.6)[0]
    assert again.equals(src)  # seeded
    table = design.members_table(labeled, src, tgt, {0: 0, 1: 1}, False)
    assert table.loc[~table["labeled"], "w"].tolist() == [1.0] * len(src)
    ts = design.as_train_set(table)
    assert len(ts.index) == 1 + len(eligible) and ts.labeled.sum() == 1
    assert np.bincount(ts.index)[1:].tolist() == src["copies"].tolist()
    assert design.source_loss_weights(np.array([2.0, 6.0]), False).tolist() == [1, 1]
    assert design.source_loss_weights(np.array([2.0, 6.0]), True).tolist() == [0.5, 1.5]


def test_source_val_sample_is_stratified_fixed_and_seeded():
    rows = pd.DataFrame({"sample_id": [f"source/val/{i:04d}" for i in range(1000)],
                         "label": [0] * 700 + [1] * 250 + [2] * 50})
    a = design.source_val_sample(rows, 100, seed=3)
    assert len(a) == 100 and a["sample_id"].is_unique
    assert a["label"].value_counts().to_dict() == {0: 70, 1: 25, 2: 5}
    assert a.equals(design.source_val_sample(rows.sample(frac=1, random_state=1), 100, 3))
    other = design.source_val_sample(rows, 100, seed=4)
    assert set(other["sample_id"]) != set(a["sample_id"])
    assert len(design.source_val_sample(rows, 0, 3)) == 1000  # 0: all of it
    small = design.source_val_sample(rows, 7, 3)  # every class keeps one row
    assert len(small) == 7 and set(small["label"]) == {0, 1, 2}
