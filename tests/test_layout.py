"""The run layout: every path of a run, done markers, Train run names."""

import pytest

from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.registry import NAMES


def test_paths_are_under_the_run_and_in_their_stage(tmp_path):
    lay = RunLayout.of(str(tmp_path), "r")
    assert lay.root == f"{tmp_path}/r"
    assert lay.pretrain_model == f"{tmp_path}/r/pretrain/model.pt"
    assert lay.scores == f"{tmp_path}/r/score/scores"
    assert lay.model("method") == f"{tmp_path}/r/finetune/models/method.pt"
    assert lay.backbone_model(adapted=True) == lay.dann_model != lay.pretrain_model
    s3 = RunLayout.of("s3://bucket/runs/", "r")
    assert s3.candidates == "s3://bucket/runs/r/select/candidates.parquet"


def test_unknown_stages_and_train_runs_are_refused(tmp_path):
    lay = RunLayout(str(tmp_path))
    with pytest.raises(ValueError, match="unknown stage"):
        lay.stage("finetuning")
    assert lay.train_run("discriminate", "adapted") == (f"{tmp_path}/discriminate", "adapted")
    with pytest.raises(ValueError, match="no Train run"):
        lay.train_run("pretrain", "dann")
    with pytest.raises(ValueError, match="no Train run"):
        lay.train_run("score")


def test_done_markers_hold_the_summary(tmp_path):
    lay = RunLayout(str(tmp_path / "run"))
    assert not any(lay.is_done(s) for s in NAMES)
    lay.mark_done("score", {"rows_out": 7})
    assert lay.is_done("score") and not lay.is_done("select")
    assert lay.summary("score") == {"rows_out": 7}
