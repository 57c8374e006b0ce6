"""`dtl-ray bench-labels`: the answer key, moving picked images to target/train, and a pick's
run that starts at fine-tuning from a finished run (the tiny run)."""

import os

import pytest
from conftest import tiny_run_overrides

from dtl_ray import storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import manifests, samples
from dtl_ray.data.pairs import demo
from dtl_ray.errors import ConfigError
from dtl_ray.storage import parquet
from dtl_ray.tools import bench_labels


def test_demo_answer_key(tiny_demo):
    unl = sorted((tiny_demo / "target" / "unlabeled" / "unknown").iterdir())
    classes = [demo.unlabeled_class("standard", str(p)) for p in unl]
    shown = demo.target_classes("standard")
    per_class = round(demo.DEFAULT_COUNTS["target/unlabeled"] * 0.1)
    assert sorted(set(classes)) == sorted(shown)
    assert all(classes.count(c) == per_class for c in shown)


def test_relabel_moves_rows_and_refuses_others(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    dest = RunLayout(str(tmp_path / "copy"))
    bench_labels.copy_upstream(run_dir, dest.root)
    assert sorted(os.listdir(dest.root)) == sorted(
        ["classes.json", "manifest.parquet", "rejected.parquet", *bench_labels.UPSTREAM])
    before = manifests.load(dest)
    unl = before.rows("target", "unlabeled")
    paths = list(unl[samples.PATH].iloc[[0, 3, 5]])
    assert bench_labels.relabel(dest, paths, lambda p: demo.unlabeled_class("standard", p)) == 3
    after = manifests.load(dest)
    moved = after.table[after.table[samples.PATH].isin(paths)]
    assert (moved[samples.SPLIT] == "train").all()
    assert [after.classes[i] for i in moved[samples.LABEL]] == [
        demo.unlabeled_class("standard", p) for p in moved[samples.PATH]]
    assert len(after.rows("target", "train")) == len(before.rows("target", "train")) + 3
    assert len(after.rows("target", "unlabeled")) == len(unl) - 3
    # the base run is untouched
    assert len(manifests.load(RunLayout(run_dir)).rows("target", "unlabeled")) == len(unl)
    with pytest.raises(ConfigError, match="1 of the 1 images"):
        bench_labels.relabel(dest, paths[:1], lambda p: "bars")  # no longer unlabeled
    with pytest.raises(ConfigError, match=r"classes \['nope'\]"):
        bench_labels.relabel(dest, list(unl[samples.PATH].iloc[[1]]), lambda p: "nope")


def test_pick_run_fine_tunes_again_with_the_picked_labels(tiny_run, tmp_path):
    """A pick's run keeps the base run's stages up to select, moves the picks to target/train
    and fine-tunes and evaluates again with them."""
    cfg, run_dir, summaries = tiny_run
    out = str(tmp_path)

    def class_of(p):
        return demo.unlabeled_class("standard", p)

    picked = bench_labels.picks(run_dir, 6, 0, os.path.join(out, "tiny"), class_of)
    assert set(picked) == {"suggested", "random"}
    for k, df in picked.items():
        assert len(df) == 6 and df["path"].is_unique, k
        assert os.path.exists(os.path.join(out, f"tiny-{k}6.html"))
    assert set(picked["suggested"]["path"]) != set(picked["random"]["path"])
    args = tiny_run_overrides(cfg.source.uri, cfg.target.uri, out, "tiny")
    rec = bench_labels.pick_run(args, None, run_dir, "tiny-suggested6", out,
                                picked["suggested"], class_of)
    base_train = summaries["finetune"]
    layout = RunLayout(os.path.join(out, "tiny-suggested6"))
    doc = storage.read_json(layout.report_json)
    assert rec["labeled"] == manifests.load(RunLayout(run_dir)).counts()["target"][
        "train"] + 6
    # the upstream stages were kept, not run again: their summaries are the base run's
    for stage in bench_labels.UPSTREAM:
        assert layout.summary(stage)["seconds"] == summaries[stage]["seconds"], stage
    assert layout.summary("finetune") != base_train
    assert 0.0 <= rec["accuracy"]["method"] <= 1.0 and rec["accuracy"]["target_only"] is not None
    assert doc["evaluate"]["method"]["target_test_accuracy"] == rec["accuracy"]["method"]
    assert sum(rec["classes"].values()) == 6
    # the picks are out of the unlabeled pool the fine-tuning pseudo-labels
    pseudo = parquet.read_df(layout.pseudo_labels)
    ids = manifests.load(layout).table.set_index(samples.PATH).loc[
        list(picked["suggested"]["path"]), samples.SAMPLE_ID]
    assert not pseudo[samples.SAMPLE_ID].isin(set(ids)).any()
