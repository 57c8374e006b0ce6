"""Stage results: the typed contract between stages, the pipeline and the report."""

import dataclasses

import pytest

from dtl_ray.contract import registry, results


def test_results_round_trip_and_optional_parts_are_left_out():
    d = results.DiscriminateResult(
        mode="standard", heldout_accuracy=0.9, heldout_balanced_accuracy=0.8, heldout_auc=0.95,
        proxy_a_distance=1.2, layer="x", n_source=10, n_target=5, heldout=3, folds=2,
        out_of_fold_auc=0.9, heldout_calibration_error_raw=0.2, heldout_calibration_error=0.05,
        platt=[[0.5, 0.1], [0.6, 0.0]], near_perfect=False, seconds=1.0)
    summary = results.to_summary(d)
    assert "adversarial" not in summary and summary["proxy_a_distance"] == 1.2
    assert registry.stage("discriminate").read(summary) == d
    adv = dataclasses.replace(d, mode="adversarial", adversarial={"before": {}, "after": {}})
    assert results.to_summary(adv)["adversarial"] == {"before": {}, "after": {}}
    # select's absent share is None when the target lacks no class: kept, as null
    s = results.SelectResult(
        n_candidates=1, n_source=1, n_target=0, strategy="discriminator", rule="top_fraction",
        fraction=0.25, target_fraction=0.3, kept_fraction_per_class={}, dropped_classes=[],
        ranked_fraction_per_class={}, ranked_fraction_shared=0.25, ranked_fraction_absent=None,
        seconds=0.1)
    assert results.to_summary(s)["ranked_fraction_absent"] is None


def test_a_summary_with_a_missing_or_unknown_key_is_refused():
    summary = results.to_summary(results.PretrainResult(
        source_val_accuracy=0.5, best_epoch=1, epochs=2, curve=[], resumed_from_epochs=[],
        seconds=1.0))
    with pytest.raises(TypeError):
        registry.stage("pretrain").read({**summary, "extra": 1})
    del summary["curve"]
    with pytest.raises(TypeError):
        registry.stage("pretrain").read(summary)
