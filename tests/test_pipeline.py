"""Integration: every stage on a tiny dataset on a local Ray cluster, then the CLI end to end."""

import html
import os

import numpy as np
import pandas as pd
import pytest
from conftest import cli_args, copy_run, tiny_overrides, tiny_run_overrides

from dtl_ray import cli, config, pipeline, storage
from dtl_ray.contract import registry
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import decode, manifests
from dtl_ray.errors import ConfigError
from dtl_ray.method import design
from dtl_ray.method.calibration import heldout_mask
from dtl_ray.method.scoring import Scorer
from dtl_ray.storage import checkpoints, parquet

pytestmark = pytest.mark.slow


def test_pretrain_stage(tiny_run):
    cfg, run, s = tiny_run
    state, meta = checkpoints.read_classifier(RunLayout(run).pretrain_model)
    assert meta["backbone"] == "smallcnn" and meta["num_classes"] == 7
    curve = s["pretrain"]["curve"]
    assert [c["epoch"] for c in curve] == [0, 1]
    # the kept model is the best epoch on source val (the first of equals)
    best = max(range(len(curve)), key=lambda i: (curve[i]["val_accuracy"], -i))
    assert s["pretrain"]["source_val_accuracy"] == curve[best]["val_accuracy"]
    assert s["pretrain"]["best_epoch"] == best + 1
    assert meta["source_val_accuracy"] == curve[best]["val_accuracy"]


def test_discriminate_stage(tiny_run):
    cfg, run, s = tiny_run
    d = s["discriminate"]
    assert d["n_source"] == 210 and d["n_target"] == 6 + 36
    # the held-out figures agree with the saved D as the score stage applied it: the same
    # held-out rows, the same predictions (another process, another code path)
    scores = parquet.read_df(RunLayout(run).scores)
    pool = scores[((scores["domain"] == "source") & (scores["split"] == "train"))
                  | ((scores["domain"] == "target") & scores["split"].isin(["train", "unlabeled"]))]
    held = pool[heldout_mask(pool["sample_id"], cfg.discriminate.heldout_fraction)]
    assert d["heldout"] == len(held) > 0
    is_target, said_target = held["domain"] == "target", held["p_target"] >= 0.5
    assert d["heldout_accuracy"] == pytest.approx((said_target == is_target).mean(), abs=0.03)
    balanced = (said_target[is_target].mean() + (~said_target[~is_target]).mean()) / 2
    assert d["proxy_a_distance"] == pytest.approx(2 * (1 - 2 * (1 - balanced)), abs=0.1)
    assert os.path.exists(os.path.join(run, "discriminate", "discriminator.pt"))
    # cross-fitted: five Ds, each calibrated on its own fold
    assert d["folds"] == len(d["platt"]) == 5 == cfg.discriminate.folds
    assert all(a > 0 for a, _ in d["platt"])  # calibration keeps the order of each D
    assert 0 <= d["heldout_calibration_error"] <= 1 and 0.5 <= d["out_of_fold_auc"] <= 1
    # the report's ROC and reliability diagram: from (0, 0) to (1, 1), every held-out row binned
    roc = np.asarray(d["heldout_roc"])
    assert roc[0].tolist() == [0, 0] and roc[-1].tolist() == [1, 1]
    assert (np.diff(roc, axis=0) >= 0).all()
    assert sum(n for _, _, n in d["heldout_reliability"]) == d["heldout"]


def test_score_stage_accounts_for_every_row(tiny_run):
    _, run, s = tiny_run
    sc = s["score"]
    manifest = manifests.load(RunLayout(run))
    scores = parquet.read_df(os.path.join(run, "score", "scores"))
    assert sc["rows_in"] == len(manifest.table) == sc["rows_out"] + sc["rows_rejected"]
    assert sc["rows_rejected"] == 0
    assert sorted(scores["sample_id"]) == sorted(manifest.table["sample_id"])
    assert list(scores.columns) == ["sample_id", "domain", "split", "path", "label", "p_target",
                                    "logit_target", "weight", "pred", "confidence", "entropy"]
    np.testing.assert_allclose(scores["p_target"], 1 / (1 + np.exp(-scores["logit_target"])),
                               rtol=1e-9)
    assert scores["p_target"].between(0, 1).all() and (scores["weight"] > 0).all()
    assert scores["pred"].isin(manifest.target_classes).all()
    # written by Ray Data writer actors, not the driver: one file per bundle (about an eighth
    # of the rows each), named by its rows (a retried call writes the same file), no row twice
    parts = sorted(os.listdir(os.path.join(run, "score", "scores")))
    assert len(parts) == sc["files"] >= 4 and all(p.startswith("part-") for p in parts)
    assert sum(len(parquet.read_df(os.path.join(run, "score", "scores", p)))
               for p in parts) == len(scores) == scores["sample_id"].nunique()
    assert sc["weight_divisor"] == 1.0  # (density-ratio weights: no normalisation)


def test_select_stage(tiny_run):
    _, run, s = tiny_run
    manifest = manifests.load(RunLayout(run))
    cand = parquet.read_df(os.path.join(run, "select", "candidates.parquet"))
    assert len(cand) == s["select"]["n_candidates"] > 0
    assert set(cand["pool"]) <= {"source", "target"}
    assert cand["label"].isin(manifest.target_classes).all()  # crescent never transferred
    assert s["select"]["kept_fraction_per_class"]["crescent"] == 0.0
    src = cand[cand["pool"] == "source"]
    assert src["sample_id"].str.startswith("source/train/").all()
    tgt = cand[cand["pool"] == "target"]
    assert tgt["sample_id"].str.startswith("target/unlabeled/").all()
    # the kinds of source images: every source row D fitted on is in exactly one kind
    layout = RunLayout(run)
    kinds = parquet.read_df(layout.source_clusters)
    assert kinds["sample_id"].is_unique and kinds["sample_id"].str.startswith("source/train/").all()
    fitted = manifest.rows("source", "train")["sample_id"]
    held = heldout_mask(fitted, 0.2)
    assert set(kinds["sample_id"]) == set(fitted[~held])
    report = s["select"]["source_clusters"]
    assert [k["cluster"] for k in report] == sorted(kinds["cluster"].unique())
    assert sum(k["images"] for k in report) == len(kinds)
    assert all(0 <= k["in_top_fraction"] <= 1 and k["examples"] for k in report)
    sizes = [k["images"] for k in report]
    assert sizes == sorted(sizes, reverse=True)  # numbered by size


def test_finetune_stage_covers_every_cell(tiny_run):
    cfg, run, s = tiny_run
    trials = parquet.read_df(os.path.join(run, "finetune", "trials.parquet"))
    cells = design.make_cells(cfg.finetune, cfg.select.target_fraction)
    assert len(trials) == s["finetune"]["trials"] == len(cells)
    assert set(trials["arm"]) == set(design.ARMS)
    assert set(trials.loc[trials["arm"] == "target_only", "n_candidates"]) == {0}
    # random subsets match the method's sizes cell for cell
    m = trials[trials["strategy"] == "discriminator"].set_index(["source_fraction",
                                                                 "target_fraction"])
    r = trials[trials["arm"] == "random_subset"].set_index(["source_fraction",
                                                            "target_fraction"])
    pd.testing.assert_series_equal(m["n_candidates"].sort_index(),
                                   r["n_candidates"].sort_index(), check_names=False)
    # the soft cells draw as many source images as all_source holds, by weight
    soft = trials[trials["strategy"] == "weighted"]
    assert len(soft) and (soft["arm"] == "method").all() and soft["alpha"].notna().all()
    all_source = trials.loc[trials["arm"] == "all_source", "n_candidates"].iloc[0]
    assert set(soft.loc[soft["target_fraction"] == 0, "n_candidates"]) == {all_source}
    for arm in design.ARMS + ["chosen"]:
        _, meta = checkpoints.read_classifier(RunLayout(run).model(arm))
        assert meta["num_classes"] == 6
    # the consistency term: on in every arm that uses the unlabeled pool, off elsewhere
    uses = trials["arm"].isin(design.UNLABELED_ARMS)
    assert trials.loc[uses, "consistency"].all() and not trials.loc[~uses, "consistency"].any()
    assert trials.loc[uses, "mask_rate"].between(0, 1).all()
    assert trials.loc[~uses, "mask_rate"].isna().all()
    # fixmatch and adamatch read the controls' data: target_only's and all_source's
    n = trials.set_index("arm")["n_candidates"]
    assert n["fixmatch"] == n["target_only"] == 0 and n["adamatch"] == n["all_source"] > 0


def test_the_teachers_pseudo_labels_are_its_predictions(tiny_run):
    """The teacher labels the unlabeled pool through a Ray Data actor pool; the same model
    applied by the scoring callable to the files here gives the same labels."""
    _, run, s = tiny_run
    layout = RunLayout(run)
    manifest = manifests.load(layout)
    pseudo = parquet.read_df(layout.pseudo_labels).sort_values("sample_id")
    unlabeled = manifest.rows("target", "unlabeled").sort_values("sample_id")
    assert list(pseudo["sample_id"]) == list(unlabeled["sample_id"])
    assert len(pseudo) == s["finetune"]["pseudo_labeled"] == 36
    batch = decode.decode_batch({c: unlabeled[c].to_numpy() for c in unlabeled.columns}, 32)
    ref = Scorer(layout.teacher, manifest.target_classes)(batch)
    assert (pseudo["pred"].to_numpy() == ref["pred"]).all()
    np.testing.assert_allclose(pseudo["confidence"], ref["confidence"], atol=1e-4)


def test_evaluate_and_report(tiny_run):
    _, run, s = tiny_run
    ev = s["evaluate"]
    assert set(ev["baselines"]) == {"source_only", "target_only", "all_source",
                                    "random_subset", "self_training", "fixmatch", "adamatch"}
    assert ev["test_images"] == 30
    # accuracies agree with the saved per-image predictions
    pred = parquet.read_df(RunLayout(run).predictions)
    assert len(pred) == 30
    for name, acc in [("method", ev["method"]["target_test_accuracy"]),
                      *[(k, v["target_test_accuracy"]) for k, v in ev["baselines"].items()]]:
        assert acc == pytest.approx((pred[f"pred__{name}"] == pred["label"]).mean()), name
    gain = (pred["pred__method"] == pred["label"]).mean() - (
        pred["pred__target_only"] == pred["label"]).mean()
    assert ev["method"]["transfer_gain"] == pytest.approx(gain)
    doc = storage.read_json(os.path.join(run, "report.json"))
    for key in ("name", "seed", "seconds_total", "data", "pretrain", "discriminate", "score",
                "select", "finetune", "evaluate", "verdict"):
        assert key in doc
    assert doc["data"]["target"] == {"train": 6, "unlabeled": 36, "val": 12, "test": 30}
    html = open(os.path.join(run, "report.html")).read()
    for png in ("p_target_hist.png", "val_vs_fraction.png", "ranked_source.png"):
        assert png in html and os.path.getsize(os.path.join(run, png)) > 1000


def test_a_stage_without_its_upstream_is_refused(ray_session, tiny_demo, tmp_path):
    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", tmp_path, "early"))
    with pytest.raises(ConfigError, match="needs \\['pretrain'"):
        pipeline.run(cfg, ["discriminate"])


def test_cli_rerun_of_a_finished_run_skips_every_stage(tiny_run, tiny_demo, tmp_path, capsys):
    _, run, _ = tiny_run
    # tiny_run ran every stage through the CLI: the report is there
    assert os.path.exists(RunLayout(run).report_json)
    assert os.path.exists(RunLayout(run).report_html)
    copy = copy_run(run, tmp_path / "cli", registry.NAMES)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("# Run: dtl-ray run tiny.yaml\nname: cli\n")
    args = cli_args(cfg_file, tiny_run_overrides(tiny_demo / "source", tiny_demo / "target",
                                                 tmp_path, "cli"))
    layout = RunLayout(str(copy))
    marks = {s: os.path.getmtime(layout.done(s)) for s in registry.NAMES}
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for s in registry.NAMES:
        assert f"[dtl-ray] {s}: already done, skipped" in out
        assert os.path.getmtime(layout.done(s)) == marks[s]
    os.remove(layout.report_html)
    assert cli.main(["report", str(copy)]) == 0
    verdict = storage.read_json(layout.report_json)["verdict"]
    assert html.escape(verdict) in open(layout.report_html).read()  # re-rendered from the JSON


def test_a_finished_stage_with_other_settings_is_refused_then_restarted(tiny_run, tiny_demo,
                                                                        tmp_path, capsys):
    _, run, local = tiny_run
    copy = copy_run(run, tmp_path / "changed", registry.NAMES)
    layout = RunLayout(str(copy))
    assert layout.settings("select")["select.fraction"] == 0.25  # recorded with the outputs
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("name: changed\n")
    overrides = tiny_run_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                                   "changed")
    capsys.readouterr()
    assert cli.main(cli_args(cfg_file, overrides + ["select.fraction=0.5"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'select'" in err[0], err
    assert "select.fraction: 0.25 -> 0.5" in err[0] and "--restart-from select" in err[0]
    assert all(layout.is_done(s) for s in registry.NAMES)  # nothing was touched
    # a key no stage depends on (scaling) changes nothing
    assert cli.main(cli_args(cfg_file, overrides + ["scaling.max_failures=1"],
                             "--stages", "evaluate")) == 0
    # --restart-from makes select again with the new setting; later stages are gone
    assert cli.main(cli_args(cfg_file, overrides + ["select.fraction=0.5"],
                             "--restart-from", "select", "--stages", "select")) == 0
    assert layout.summary("select")["fraction"] == 0.5
    assert layout.summary("select")["n_source"] > local["select"]["n_source"]
    assert layout.is_done("score") and layout.summary("score") == local["score"]
    assert not os.path.exists(layout.stage("finetune"))
    assert not os.path.exists(layout.stage("evaluate"))


def test_label_free_choice_is_reported_beside_the_labeled_one(tiny_run):
    cfg, run, s = tiny_run
    free, ft = s["evaluate"]["label_free"], s["finetune"]["label_free"]
    assert free["criterion"] == cfg.finetune.label_free == "dev"
    assert free["trial_id"] == ft["trial_id"] and np.isfinite(ft["risk"])
    assert ft["source_val_images"] > 0
    pred = parquet.read_df(RunLayout(run).predictions)
    assert free["target_test_accuracy"] == pytest.approx(
        (pred["pred__label_free"] == pred["label"]).mean())
    trials = parquet.read_df(os.path.join(run, "finetune", "trials.parquet"))
    assert ft["risk"] == pytest.approx(trials["best_free_risk"].min())
    assert os.path.exists(os.path.join(run, "finetune", "models", "label_free.pt"))
    html = open(os.path.join(run, "report.html")).read()
    assert "without target labels" in html


def test_without_a_test_split_models_are_measured_on_val_and_the_report_says_so(
        tiny_run, tiny_demo, tmp_path, capsys):
    """A target without test/ is a run, not an error: evaluate measures the models on target
    val (the images that chose them) and the console, the result, the verdict and the page
    say so. The session's run up to the search; the manifest without its test rows."""
    _, run, _ = tiny_run
    copy = copy_run(run, tmp_path / "notest", registry.NAMES[:-1])
    layout = RunLayout(str(copy))
    m = parquet.read_df(layout.manifest)
    is_test = (m["domain"] == "target") & (m["split"] == "test")
    n_val = int(((m["domain"] == "target") & (m["split"] == "val")).sum())
    assert is_test.any()
    parquet.write_df(m[~is_test].reset_index(drop=True), layout.manifest)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("name: notest\n")
    args = cli_args(cfg_file, tiny_run_overrides(tiny_demo / "source", tiny_demo / "target",
                                                 tmp_path, "notest"))
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "the target has no test split" in capsys.readouterr().out
    doc = storage.read_json(layout.report_json)
    ev = doc["evaluate"]
    assert ev["measured_on"] == "val" and ev["test_images"] == n_val
    assert doc["verdict"].startswith("The target has no test split")
    page = open(layout.report_html).read()
    assert f"on {n_val} val images" in page and "Target val (no test split" in page
    assert "Target test (measured once" not in page
