"""End to end: the partial pair (the target has 3 of the source's 7 classes) with IWAN weights:
absent classes are never transferred, and the discriminator's own ranking is reported."""

import os

import numpy as np
import pytest

from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import manifests
from dtl_ray.data.pairs import demo
from dtl_ray.data.scorefiles import read_scores
from dtl_ray.storage import parquet


@pytest.fixture(scope="module")
def partial_run(variant_run):
    """The partial pair with IWAN weights (conftest's `variant_run`, which is also the
    adversarial-mode run, so the scoring D sees DANN-adapted features; its source train holds
    4 undecodable images, which are not scored)."""
    return variant_run["cfg"], str(variant_run["run"]), variant_run["doc"]


@pytest.mark.slow
def test_partial_run_keeps_shared_classes_and_iwan_weights_average_one(partial_run):
    cfg, run, doc = partial_run
    sel = doc["select"]
    assert sorted(sel["dropped_classes"]) == sorted(
        set(demo.SHARED_CLASSES + demo.SOURCE_ONLY_CLASSES) - set(demo.target_classes("partial")))
    for name in sel["dropped_classes"]:
        assert sel["kept_fraction_per_class"][name] == 0.0
    for name in set(sel["kept_fraction_per_class"]) - set(sel["dropped_classes"]):
        assert sel["kept_fraction_per_class"][name] > 0.0
    # the discriminator's own ranking (before the class filter) is reported for every class:
    # together its per-class shares make up exactly the top `select.fraction` of source train
    # the files hold IWAN's weights before normalisation (written once, by the writer actors
    # as the rows were scored); `read_scores` divides by the mean the stage recorded at the end
    files = parquet.read_df(os.path.join(run, "score", "scores"))
    scores = read_scores(RunLayout(run))
    assert list(scores["sample_id"]) == list(files["sample_id"])
    divisor = doc["score"]["weight_divisor"]
    assert divisor > 0 and divisor != 1.0 and doc["score"]["files"] >= 1
    np.testing.assert_allclose(scores["weight"], files["weight"] / divisor)
    src = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    m = manifests.load(RunLayout(run))
    sizes = src.groupby("label").size()
    top = sum(sel["ranked_fraction_per_class"][m.classes[c]] * n for c, n in sizes.items())
    assert top == pytest.approx(round(cfg.select.fraction * len(src)))
    absent = [m.classes.index(n) for n in sel["dropped_classes"]]
    assert sel["ranked_fraction_absent"] == pytest.approx(
        sum(sel["ranked_fraction_per_class"][m.classes[c]] * sizes[c] for c in absent)
        / sum(sizes[c] for c in absent))
    assert doc["score"]["weighting"] == "iwan"
    assert src["weight"].mean() == pytest.approx(1.0, rel=1e-6)
    assert doc["score"]["mean_weight"]["source/train"] == pytest.approx(1.0, rel=1e-6)
    # IWAN weights are p / mean(p over source train): the ranking is p's
    ratio = src["weight"] / src["p_target"].clip(0.01, 0.99)
    assert ratio.std() / ratio.mean() < 1e-6
