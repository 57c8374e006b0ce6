import numpy as np
import pandas as pd
import pytest

from dtl_ray.method import weighting


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


def test_balanced_top_fraction_takes_each_classs_top_part():
    s = _scores()
    # class 0 holds the four heaviest eligible rows, class 1 the four lightest
    s = pd.concat([s, pd.DataFrame({
        "sample_id": [f"x{i}" for i in range(4)], "domain": "source", "split": "train",
        "label": [0, 0, 1, 1], "weight": [7.0, 6.0, 0.2, 0.1],
        "p_target": [0.8, 0.8, 0.1, 0.1]})], ignore_index=True)
    plain = weighting.select_source(s, [0, 1], "top_fraction", 0.5)
    assert list(plain["label"]) == [0, 0, 0, 1]  # the pool's top half: mostly one class
    even = weighting.select_source(s, [0, 1], "top_fraction", 0.5, balanced=True)
    # each class's top half, in the pool's order
    assert list(even["sample_id"]) == ["x0", "x1", "s2", "s3"]


def test_a_logit_breaks_ties_where_p_saturates():
    s = _scores().assign(logit_target=[-40.0, -30.0, -50.0, -20.0, 0.0, 0.0, 5.0, 5.0])
    s["weight"], s["p_target"] = 0.0101, 0.0  # every p at the floor, as float32 gives them
    assert list(weighting.ranked(s.iloc[:4])["sample_id"]) == ["s3", "s1", "s0", "s2"]


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
    # floor 0.6 drops u3; one pick per predicted class: u0 or u2 (class 0), u1 (class 1)
    pick = weighting.select_target(u, "discriminator", 2, 0.6)
    assert set(pick["pred"]) == {0, 1} and "u1" in set(pick["sample_id"])
    # the source-like pick (lower p_target) weighs more; mean 1
    w = pick.set_index("sample_id")["loss_weight"]
    assert w.mean() == pytest.approx(1.0)
    assert w["u1"] > w[pick.loc[pick["pred"] == 0, "sample_id"].iloc[0]]
    assert list(weighting.select_target(u, "confidence", 2, 0.6)["sample_id"]) == ["u0", "u1"]
    assert len(weighting.select_target(u, "random", 3, 0.6, seed=0)) == 3
    assert weighting.select_target(u, "discriminator", 0, 0.6).empty


def test_the_discriminators_target_picks_are_class_balanced_and_spread():
    """A pool where one class dominates the predictions and confidence: the picks take the
    same number from each class (a small class gives its rest to the others) and span each
    class's confidence, never only its most confident; p_target only weighs them."""
    rng = np.random.default_rng(0)
    n = 400
    pred = np.array([0] * 300 + [1] * 80 + [2] * 20)
    u = pd.DataFrame({"sample_id": [f"u{i:03d}" for i in range(n)], "pred": pred,
                      "confidence": np.where(pred == 0, rng.uniform(0.9, 1.0, n),
                                             rng.uniform(0.6, 0.95, n)),
                      "p_target": rng.uniform(0.5, 1.0, n)})
    pick = weighting.select_target(u, "discriminator", 90, 0.6)
    assert pick["sample_id"].is_unique and len(pick) == 90
    assert pick["pred"].value_counts().to_dict() == {0: 35, 1: 35, 2: 20}
    for c, g in pick.groupby("pred"):
        conf = u.loc[u["pred"] == c, "confidence"]
        assert g["confidence"].max() == conf.max() and g["confidence"].min() == conf.min()
        # evenly spread: the picks' median sits near the class's median, not at its top
        assert abs(g["confidence"].median() - conf.median()) < 0.25 * (conf.max() - conf.min())
    assert pick["loss_weight"].between(0.4, 1.6).all()
    assert np.corrcoef(pick["p_target"], pick["loss_weight"])[0, 1] < -0.9
    top = weighting.select_target(u, "confidence", 90, 0.6)
    assert (top["pred"] == 0).mean() > 0.9  # what self-training takes instead


def test_class_quotas_water_fill():
    assert weighting.class_quotas({0: 100, 1: 100, 2: 100}, 10) == {0: 4, 1: 3, 2: 3}
    assert weighting.class_quotas({0: 100, 1: 2, 2: 100}, 10) == {0: 4, 1: 2, 2: 4}
    assert weighting.class_quotas({0: 1, 1: 2}, 10) == {0: 1, 1: 2}
    assert weighting.class_quotas({0: 5}, 0) == {0: 0}


def test_candidates_manifest_columns():
    src = weighting.select_source(_scores(), [0, 1], "top_fraction", 0.5)
    tgt = weighting.select_target(_unlabeled(), "discriminator", 1, 0.6)
    c = weighting.candidates(src, tgt)
    assert list(c.columns) == ["sample_id", "pool", "label", "weight", "p_target"]
    assert list(c["pool"]) == ["source", "source", "target"]
    assert list(c["label"]) == [0, 1, int(tgt["pred"].iloc[0])]  # true, then pseudo-label


def test_one_ranking_breaks_weight_ties_by_p_target_then_id():
    rows = pd.DataFrame({"sample_id": ["c", "a", "b", "d"], "weight": [20.0, 20.0, 20.0, 3.0],
                         "p_target": [0.95, 0.95, 0.97, 0.5]})
    assert list(weighting.ranked(rows)["sample_id"]) == ["b", "a", "c", "d"]


P = np.array([0.005, 0.2, 0.5, 0.8, 0.999])


def test_iwan_is_one_minus_p_source_then_mean_one():
    # D's P(source|x) = 1 - p; p clipped to [0.01, 0.99] first
    np.testing.assert_allclose(weighting.iwan(P), [0.01, 0.2, 0.5, 0.8, 0.99])
    w = weighting.normalise(weighting.iwan(P))
    np.testing.assert_allclose(w, np.array([0.01, 0.2, 0.5, 0.8, 0.99]) / 0.5)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weighting.normalise([1.0, 3.0], mean=4.0), [0.25, 0.75])
    with pytest.raises(ValueError):
        weighting.normalise([0.0, 0.0])


def test_iwc_is_inverse_p_source_minus_one():
    w, capped = weighting.iwc(P, clip=0.01, cap=20.0)
    # 1/(1-p) - 1: 0.01/0.99, 0.25, 1, 4, 99 -> capped at 20
    np.testing.assert_allclose(w, [0.01 / 0.99, 0.25, 1.0, 4.0, 20.0])
    assert capped == 1


def test_iwc_equals_density_ratio_when_domains_weigh_the_same_and_not_otherwise():
    a, _ = weighting.iwc(P)
    b, _ = weighting.density_ratio(P, 1, 1)
    np.testing.assert_allclose(a, b)
    c, _ = weighting.density_ratio(P, 4, 1, cap=1e9)
    np.testing.assert_allclose(c[:4], 4 * a[:4])


def test_importance_weights_dispatch_and_capped_mask():
    w, capped = weighting.importance_weights("density_ratio", P, 2, 1, 0.01, 5.0)
    # p/(1-p)*2: 0.0202, 0.5, 2, 8 -> 5 (capped), 198 -> 5 (capped)
    np.testing.assert_allclose(w, [0.02 / 0.99, 0.5, 2.0, 5.0, 5.0])
    assert capped.tolist() == [False, False, False, True, True]
    w, capped = weighting.importance_weights("iwan", P)
    assert not capped.any() and w[2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown weighting"):
        weighting.importance_weights("kmm", P)


def test_iwcv_and_dev_risks_by_hand():
    losses, w = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.5])
    assert weighting.iwcv_risk(losses, w) == pytest.approx(7 / 3)
    # mean(w) = 1: the control variate changes nothing
    assert weighting.dev_risk(losses, w) == pytest.approx(7 / 3)
    # constant loss 1, weights averaging 2: IWCV says 2, DEV removes the weights' error -> 1
    ones, w2 = np.ones(3), np.array([1.0, 2.0, 3.0])
    assert weighting.iwcv_risk(ones, w2) == pytest.approx(2.0)
    assert weighting.dev_risk(ones, w2) == pytest.approx(1.0)
    assert weighting.dev_risk(np.array([2.0]), np.array([3.0])) == pytest.approx(6.0)
