"""End to end: adversarial mode (DANN): the domain gap before and after, the dann row, and
fine-tuning from the adapted backbone."""

import os

import pytest
from conftest import SMALL_SEARCH, tiny_overrides

from dtl_ray import config, data, pipeline
from dtl_ray.layout import RunLayout


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
