"""Weighting variants (hand-computed values), the partial demo pair, and both in a run."""

import os

import numpy as np
import pytest
from conftest import SMALL_SEARCH, tiny_overrides

from dtl_ray import config, data, demo, pipeline, weighting
from dtl_ray.config import ConfigError
from dtl_ray.layout import RunLayout

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


def test_weighting_is_a_checked_config_key():
    cfg = config.load_config(None, ["source.uri=a", "target.uri=b", "score.weighting=iwan"])
    assert cfg.score.weighting == "iwan"
    with pytest.raises(ConfigError, match="score.weighting"):
        config.load_config(None, ["source.uri=a", "target.uri=b", "score.weighting=kmm"])


def test_partial_pair_has_a_strict_subset_of_classes(tmp_path):
    counts = demo.write_demo(str(tmp_path), seed=1, scale=0.05, pair="partial")
    m = data.build_manifest(str(tmp_path / "source"), str(tmp_path / "target"), [".png"])
    src = {m.classes[c] for c in m.rows("source", "train")["label"]}
    tgt = {m.classes[c] for c in m.rows("target", "train")["label"]}
    assert tgt == set(demo.target_classes("partial")) and tgt < src and len(src) == 7
    assert counts["target/test"] == 3 * max(1, int(round(50 * 0.05)))  # 3 classes
    with pytest.raises(ValueError, match="unknown demo pair"):
        demo.target_classes("open_set")


@pytest.fixture(scope="module")
def partial_run(ray_session, tmp_path_factory):
    """The partial pair (a fifth of its size), stages up to select, IWAN weights."""
    root = tmp_path_factory.mktemp("partial")
    demo.write_demo(str(root / "data"), seed=2, scale=0.2, pair="partial")
    cfg = config.load_config(overrides=tiny_overrides(
        root / "data" / "source", root / "data" / "target", root / "runs", "partial") + [
        "score.weighting=iwan", "pretrain.epochs=3", "discriminate.epochs=15"])
    doc = pipeline.run(cfg, ["pretrain", "discriminate", "score", "select"])
    return cfg, os.path.join(root / "runs", "partial"), doc


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
    scores = data.read_parquet_df(os.path.join(run, "score", "scores"))
    src = scores[(scores["domain"] == "source") & (scores["split"] == "train")]
    m = data.load_manifest(RunLayout(run))
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


def test_label_free_choice_is_reported_beside_the_labeled_one(tiny_run):
    cfg, run, s = tiny_run
    free, ft = s["evaluate"]["label_free"], s["finetune"]["label_free"]
    assert free["criterion"] == cfg.finetune.label_free == "dev"
    assert free["trial_id"] == ft["trial_id"] and np.isfinite(ft["risk"])
    assert ft["source_val_images"] > 0
    pred = data.read_parquet_df(RunLayout(run).predictions)
    assert free["target_test_accuracy"] == pytest.approx(
        (pred["pred__label_free"] == pred["label"]).mean())
    trials = data.read_parquet_df(os.path.join(run, "finetune", "trials.parquet"))
    assert ft["risk"] == pytest.approx(trials["best_free_risk"].min())
    assert os.path.exists(os.path.join(run, "finetune", "models", "label_free.pt"))
    html = open(os.path.join(run, "report.html")).read()
    assert "without target labels" in html


def test_gradient_reversal_flips_the_backbones_gradient_only():
    import torch

    from dtl_ray import models

    torch.manual_seed(0)
    g, disc = models.SmallCNN(), models.Discriminator(64, 16).eval()  # no dropout draws
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0.0, 1.0] * 4)

    def grads(scale):
        g.zero_grad()
        disc.zero_grad()
        f = g(x)
        if scale is not None:
            f = models.grad_reverse(f, scale)
        torch.nn.functional.binary_cross_entropy_with_logits(disc(f), y).backward()
        return ([p.grad.clone() for p in g.parameters()],
                [p.grad.clone() for p in disc.parameters()])

    plain_g, plain_d = grads(None)
    rev_g, rev_d = grads(1.0)
    half_g, _ = grads(0.5)
    assert any(t.abs().sum() > 0 for t in plain_g)
    for a, b, c in zip(plain_g, rev_g, half_g):
        torch.testing.assert_close(b, -a)
        torch.testing.assert_close(c, -0.5 * a)
    for a, b in zip(plain_d, rev_d):  # the domain head itself still descends
        torch.testing.assert_close(a, b)
    assert models.dann_scale(0.0) == 0.0 and 0.99 < models.dann_scale(1.0) < 1.0


def test_adapted_init_needs_adversarial_mode():
    with pytest.raises(ConfigError, match="finetune.init"):
        config.load_config(None, ["source.uri=a", "target.uri=b", "finetune.init=adapted"])


@pytest.fixture(scope="module")
def adversarial_run(ray_session, tiny_demo, tmp_path_factory):
    """The tiny demo pair with DANN, fine-tuning from the adapted backbone."""
    out = tmp_path_factory.mktemp("adv")
    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", out, "adv") + [
        "discriminate.mode=adversarial", "discriminate.dann_epochs=2", "finetune.init=adapted",
        *SMALL_SEARCH])
    return cfg, os.path.join(out, "adv"), pipeline.run(cfg)


@pytest.mark.slow
def test_adversarial_mode_reports_the_gap_and_a_dann_row(adversarial_run):
    cfg, run, doc = adversarial_run
    adv = doc["discriminate"]["adversarial"]
    assert doc["discriminate"]["mode"] == "adversarial"
    assert len(adv["dann_curve"]) == 2
    # two discriminators, on the pretrained and on the adapted features
    assert adv["before"] != adv["after"]
    assert adv["after"]["proxy_a_distance"] == doc["discriminate"]["proxy_a_distance"]
    assert "dann" in doc["evaluate"]["baselines"]
    pred = data.read_parquet_df(RunLayout(run).predictions)
    assert doc["evaluate"]["baselines"]["dann"]["target_test_accuracy"] == pytest.approx(
        (pred["pred__dann"] == pred["label"]).mean())
    assert os.path.exists(os.path.join(run, "discriminate", "dann_model.pt"))
    # the adapted model differs from the pretrained one and seeded fine-tuning
    from dtl_ray import checkpoints

    a, _ = checkpoints.read_classifier(RunLayout(run).pretrain_model)
    b, meta = checkpoints.read_classifier(RunLayout(run).dann_model)
    assert meta["adapted"] is True
    assert any(not (a[k] == b[k]).all() for k in a)


def test_dann_baseline_is_a_checked_option():
    cfg = config.load_config(None, ["source.uri=a", "target.uri=b",
                                    "discriminate.dann_baseline=true", "finetune.init=adapted"])
    assert config.adapts(cfg) and cfg.discriminate.mode == "standard"


def _seed(seed, acc, free):
    return {"seed": seed, "accuracy": acc, "chosen": {"arm": "method",
                                                      "target_test_accuracy": acc["method"]},
            "label_free": {"target_test_accuracy": free}, "heldout_auc": 0.9,
            "ranked_fraction_shared": 0.4, "ranked_fraction_absent": 0.05,
            "adversarial": {"before": 1.5, "after": 0.9},
            "kept_fraction_per_class": {"a": 0.3, "b": 0.0},
            "ranked_fraction_per_class": {"a": 0.4, "b": 0.05}, "dropped_classes": ["b"],
            "test_accuracy_by_cell": [{"strategy": "discriminator", "source_fraction": 0.1,
                                       "target_fraction": 0.0, "best_val_accuracy": 0.9,
                                       "target_test_accuracy": acc["method"]}],
            "p_target_histograms": {"edges": [0.0, 0.5, 1.0],
                                    "counts": {"source/train": [3, 1], "target/test": [1, 3]}},
            "confusion": [[5, 1], [0, 6]], "classes": ["a", "c"]}


def test_bench_summary_and_page(tmp_path):
    from dtl_ray.tools import bench

    seeds = [_seed(0, {"method": 0.9, "random_subset": 0.7, "target_only": 0.95}, 0.8),
             _seed(1, {"method": 1.0, "random_subset": 0.9, "target_only": 0.99}, 1.0)]
    s = bench.summarise(seeds)
    assert s["accuracy"]["method"]["mean"] == pytest.approx(0.95)
    assert s["accuracy"]["random_subset"]["sd"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    # the method's mean 0.95 is above random_subset's 0.8, below target_only's 0.97
    assert s["method_above_mean_of"] == ["random_subset"]
    assert s["label_free"]["mean"] == pytest.approx(0.9)
    doc = {"config": "c.yaml", "pair": "partial", "seeds": seeds, "summary": s, "seconds": 1.0,
           "_plots": bench._plots(seeds, s)}
    assert len(doc["_plots"]) == 6  # fraction, rows, histograms, confusion, kept, PAD
    page = bench._html(doc)
    assert page.count("data:image/png;base64,") == 6 and "without target labels" in page


def test_bench_rejects_zero_seeds(capsys):
    from dtl_ray import cli

    assert cli.main(["bench", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
