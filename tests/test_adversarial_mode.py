"""End to end: adversarial mode (DANN): the domain gap before and after, the dann row, and
fine-tuning from the adapted backbone."""

import os

import pytest

from dtl_ray.contract.layout import RunLayout
from dtl_ray.storage import parquet


@pytest.fixture(scope="module")
def adversarial_run(variant_run):
    """DANN, fine-tuning from the adapted backbone (conftest's `variant_run`, which is also
    the partial pair with IWAN weights, bad images and a killed Train worker)."""
    return variant_run["cfg"], str(variant_run["run"]), variant_run["doc"]


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
    pred = parquet.read_df(RunLayout(run).predictions)
    assert doc["evaluate"]["baselines"]["dann"]["target_test_accuracy"] == pytest.approx(
        (pred["pred__dann"] == pred["label"]).mean())
    assert os.path.exists(os.path.join(run, "discriminate", "dann_model.pt"))
    # the adapted model differs from the pretrained one and seeded fine-tuning
    from dtl_ray.storage import checkpoints

    a, _ = checkpoints.read_classifier(RunLayout(run).pretrain_model)
    b, meta = checkpoints.read_classifier(RunLayout(run).dann_model)
    assert meta["adapted"] is True
    assert any(not (a[k] == b[k]).all() for k in a)
