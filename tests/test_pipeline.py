"""Integration: every stage on a tiny dataset on a local Ray cluster, then the CLI end to end."""

import os

import pandas as pd
import pytest
from conftest import tiny_overrides

from dtl_ray import checkpoints, cli, config, data, pipeline, storage
from dtl_ray.stages import finetune

pytestmark = pytest.mark.slow


def test_pretrain_stage(tiny_run):
    cfg, run, s = tiny_run
    state, meta = checkpoints.load(os.path.join(run, "pretrain", "model.pt"))
    assert meta["backbone"] == "smallcnn" and meta["num_classes"] == 7
    assert 0.0 <= s["pretrain"]["source_val_accuracy"] <= 1.0
    assert [c["epoch"] for c in s["pretrain"]["curve"]] == [0, 1]


def test_discriminate_stage(tiny_run):
    _, run, s = tiny_run
    d = s["discriminate"]
    assert 0 <= d["heldout_accuracy"] <= 1 and 0 <= d["heldout_auc"] <= 1
    assert d["proxy_a_distance"] == pytest.approx(2 * (1 - 2 * (1 - d[
        "heldout_balanced_accuracy"])))
    assert d["n_source"] == 210 and d["n_target"] == 6 + 36
    assert os.path.exists(os.path.join(run, "discriminate", "discriminator.pt"))


def test_score_stage_accounts_for_every_row(tiny_run):
    _, run, s = tiny_run
    sc = s["score"]
    manifest = data.load_manifest(run)
    scores = data.read_parquet_df(os.path.join(run, "score", "scores"))
    assert sc["rows_in"] == len(manifest.table) == sc["rows_out"] + sc["rows_rejected"]
    assert sc["rows_rejected"] == 0
    assert sorted(scores["sample_id"]) == sorted(manifest.table["sample_id"])
    assert list(scores.columns) == ["sample_id", "domain", "split", "path", "label", "p_target",
                                    "weight", "pred", "confidence", "entropy"]
    assert scores["p_target"].between(0, 1).all() and (scores["weight"] > 0).all()
    assert scores["pred"].isin(manifest.target_classes).all()


def test_select_stage(tiny_run):
    _, run, s = tiny_run
    manifest = data.load_manifest(run)
    cand = data.read_parquet_df(os.path.join(run, "select", "candidates.parquet"))
    assert len(cand) == s["select"]["n_candidates"] > 0
    assert set(cand["pool"]) <= {"source", "target"}
    assert cand["label"].isin(manifest.target_classes).all()  # crescent never transferred
    assert s["select"]["kept_fraction_per_class"]["crescent"] == 0.0
    src = cand[cand["pool"] == "source"]
    assert src["sample_id"].str.startswith("source/train/").all()
    tgt = cand[cand["pool"] == "target"]
    assert tgt["sample_id"].str.startswith("target/unlabeled/").all()


def test_finetune_stage_covers_every_cell(tiny_run):
    cfg, run, s = tiny_run
    trials = data.read_parquet_df(os.path.join(run, "finetune", "trials.parquet"))
    cells = finetune.make_cells(cfg)
    assert len(trials) == s["finetune"]["trials"] == len(cells)
    assert set(trials["arm"]) == set(finetune.ARMS)
    assert set(trials.loc[trials["arm"] == "target_only", "n_candidates"]) == {0}
    # random subsets match the method's sizes cell for cell
    m = trials[trials["arm"] == "method"].set_index(["source_fraction", "target_fraction"])
    r = trials[trials["arm"] == "random_subset"].set_index(["source_fraction",
                                                            "target_fraction"])
    pd.testing.assert_series_equal(m["n_candidates"].sort_index(),
                                   r["n_candidates"].sort_index(), check_names=False)
    for arm in finetune.ARMS + ["chosen"]:
        _, meta = checkpoints.load(os.path.join(run, "finetune", "models", f"{arm}.pt"))
        assert meta["num_classes"] == 6


def test_evaluate_and_report(tiny_run):
    _, run, s = tiny_run
    ev = s["evaluate"]
    assert set(ev["baselines"]) == {"source_only", "target_only", "all_source",
                                    "random_subset", "self_training"}
    assert ev["test_images"] == 30
    assert ev["method"]["transfer_gain"] == pytest.approx(
        ev["method"]["target_test_accuracy"] - ev["baselines"]["target_only"][
            "target_test_accuracy"])
    doc = storage.read_json(os.path.join(run, "report.json"))
    for key in ("name", "seed", "seconds_total", "data", "pretrain", "discriminator", "score",
                "select", "finetune", "evaluate", "verdict"):
        assert key in doc
    assert doc["data"]["target"] == {"train": 6, "unlabeled": 36, "val": 12, "test": 30}
    html = open(os.path.join(run, "report.html")).read()
    for png in ("p_target_hist.png", "val_vs_fraction.png", "ranked_source.png"):
        assert png in html and os.path.getsize(os.path.join(run, png)) > 1000


def test_a_stage_without_its_upstream_is_refused(ray_session, tiny_demo, tmp_path):
    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "early"))
    with pytest.raises(config.ConfigError, match="needs \\['pretrain'"):
        pipeline.run(cfg, ["discriminate"])


def test_cli_run_end_to_end_then_rerun_skips(ray_session, tiny_demo, tmp_path, capsys):
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("# Run: dtl-ray run tiny.yaml\nname: cli\n")
    args = ["run", str(cfg_file)]
    for o in tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path / "out", "cli"):
        args += ["--set", o]
    assert cli.main(args) == 0
    run = tmp_path / "out" / "cli"
    assert (run / "report.json").exists() and (run / "report.html").exists()
    marks = {s: os.path.getmtime(run / s / storage.DONE_MARKER) for s in pipeline.STAGES}
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for s in pipeline.STAGES:
        assert f"[dtl-ray] {s}: already done, skipped" in out
        assert os.path.getmtime(run / s / storage.DONE_MARKER) == marks[s]
    assert cli.main(["report", str(run)]) == 0
