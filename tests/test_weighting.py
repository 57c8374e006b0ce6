import numpy as np
import pandas as pd
import pytest

from dtl_ray import weighting


def test_density_ratio_hand_computed():
    w, capped = weighting.density_ratio(np.array([0.5, 0.8, 0.2]), n_source=300, n_target=100,
                                        clip=0.01, cap=100.0)
    # p/(1-p) * 3: 1*3, 4*3, 0.25*3
    np.testing.assert_allclose(w, [3.0, 12.0, 0.75])
    assert capped == 0


def test_density_ratio_clips_and_caps():
    w, capped = weighting.density_ratio(np.array([0.0, 1.0, 0.9]), 1, 1, clip=0.1, cap=5.0)
    # 0 -> 0.1 -> 1/9; 1 -> 0.9 -> 9 -> capped 5; 0.9 -> 9 -> capped 5
    np.testing.assert_allclose(w, [1 / 9, 5.0, 5.0])
    assert capped == 2


def test_density_ratio_rejects_empty_domains():
    with pytest.raises(ValueError):
        weighting.density_ratio(np.array([0.5]), 0, 1)


def _scores():
    # six source train samples in classes 0, 1 and 2 (the target lacks class 2)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(6)] + ["v0", "t0"],
        "domain": ["source"] * 7 + ["target"],
        "split": ["train"] * 6 + ["val", "train"],
        "label": [0, 0, 1, 1, 2, 2, 0, 0],
        "weight": [5.0, 1.0, 3.0, 0.5, 9.0, 8.0, 99.0, 99.0],
        "p_target": [0.8, 0.5, 0.7, 0.3, 0.9, 0.9, 0.99, 0.99],
    })


def test_top_fraction_skips_absent_classes_and_other_splits():
    sel = weighting.select_source(_scores(), [0, 1], "top_fraction", 0.5)
    # eligible: s0(5) s1(1) s2(3) s3(0.5); half = 2 -> s0, s2
    assert list(sel["sample_id"]) == ["s0", "s2"]


def test_threshold_and_per_class():
    assert list(weighting.select_source(_scores(), [0, 1], "threshold", threshold=1.0)[
        "sample_id"]) == ["s0", "s2", "s1"]
    sel = weighting.select_source(_scores(), [0, 1], "per_class", per_class=1)
    assert sorted(sel["sample_id"]) == ["s0", "s2"]


def test_capped_ties_are_broken_by_p_target():
    s = _scores()
    s.loc[s["sample_id"].isin(["s0", "s1"]), "weight"] = 20.0
    s.loc[s["sample_id"] == "s1", "p_target"] = 0.95
    assert list(weighting.select_source(s, [0, 1], "top_fraction", 0.25)["sample_id"]) == ["s1"]


def test_random_source_is_eligible_sized_and_seeded():
    a = weighting.random_source(_scores(), [0, 1], 3, seed=1)
    b = weighting.random_source(_scores(), [0, 1], 3, seed=1)
    assert len(a) == 3 and list(a["sample_id"]) == list(b["sample_id"])
    assert set(a["label"]) <= {0, 1}


def _unlabeled():
    return pd.DataFrame({"sample_id": ["u0", "u1", "u2", "u3"],
                         "p_target": [0.9, 0.2, 0.4, 0.1],
                         "confidence": [0.99, 0.9, 0.7, 0.5],
                         "pred": [0, 1, 0, 1]})


def test_select_target_strategies():
    u = _unlabeled()
    # floor 0.6 drops u3; rank conf*(1-p): u0 .099, u1 .72, u2 .42
    assert list(weighting.select_target(u, "discriminator", 2, 0.6)["sample_id"]) == ["u1", "u2"]
    assert list(weighting.select_target(u, "confidence", 2, 0.6)["sample_id"]) == ["u0", "u1"]
    assert len(weighting.select_target(u, "random", 3, 0.6, seed=0)) == 3
    assert weighting.select_target(u, "discriminator", 0, 0.6).empty


def test_candidates_manifest_columns():
    src = weighting.select_source(_scores(), [0, 1], "top_fraction", 0.5)
    tgt = weighting.select_target(_unlabeled(), "discriminator", 1, 0.6)
    c = weighting.candidates(src, tgt)
    assert list(c.columns) == ["sample_id", "pool", "label", "weight", "p_target"]
    assert list(c["pool"]) == ["source", "source", "target"]
    assert list(c["label"]) == [0, 1, 1]  # true labels, then the pseudo-label


def test_one_ranking_breaks_weight_ties_by_p_target_then_id():
    rows = pd.DataFrame({"sample_id": ["c", "a", "b", "d"], "weight": [20.0, 20.0, 20.0, 3.0],
                         "p_target": [0.95, 0.95, 0.97, 0.5]})
    assert list(weighting.ranked(rows)["sample_id"]) == ["b", "a", "c", "d"]
