"""The report a person reads: per-class accuracy, the method's confusion matrix, the search's
choice in words (it used to be a raw dict)."""

import os

import pytest
from PIL import Image

from dtl_ray.contract.layout import RunLayout
from dtl_ray.pipeline import render, report

BEST = {"trial_id": "t1", "arm": "method", "strategy": "discriminator", "source_fraction": 0.25,
        "target_fraction": 0.5, "lr": 0.003, "train_layers": "all", "candidate_weight": 1.0,
        "best_val_accuracy": 0.875, "best_epoch": 3, "epochs_run": 4, "n_candidates": 120}


def _doc():
    per_class = {"circle": 0.9, "square": 0.5, "star": 1.0}
    return {
        "name": "r", "verdict": "The method beats every baseline.",
        "evaluate": {
            "method": {"target_test_accuracy": 0.8, "transfer_loss": 0.5,
                       "per_class_accuracy": per_class,
                       "confusion": [[9, 1, 0], [3, 5, 2], [0, 0, 10]]},
            "baselines": {"target_only": {"target_test_accuracy": 0.6, "transfer_loss": 0.9,
                                          "per_class_accuracy": {"circle": 0.7, "square": 0.4,
                                                                 "star": 0.7}},
                          "dann": {"target_test_accuracy": 0.5, "transfer_loss": 1.0}},
            "chosen": {"arm": "method", "target_test_accuracy": 0.8}, "label_free": None,
            "test_images": 30},
        "finetune": {"trials": 9, "best": BEST},
        "data": {"target": {"val": 12}}}


def test_the_report_shows_classes_confusion_and_the_choice_in_words(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    report.write(_doc(), layout)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h3>Accuracy per class (target test)</h3>" in page
    # one row per class: the method's accuracy, then target_only's (dann has no per-class)
    assert "<tr><td>square</td><td>0.500</td><td>0.400</td></tr>" in page
    assert "The search chose a <b>method</b> trial: discriminator selection, source fraction " \
           "0.25, target fraction 0.5; lr 0.003" in page
    assert "{'trial_id'" not in page and "&#x27;trial_id&#x27;" not in page  # no raw dict
    assert "<img src='confusion_method.png' alt=" in page
    with Image.open(tmp_path / "r" / "confusion_method.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_per_class_rows_without_a_method_are_empty():
    doc = _doc()["evaluate"]
    assert render.per_class_rows({**doc, "method": {}})[0] == []
    rows, head = render.per_class_rows(doc)
    assert head == ["class", "method", "target_only"] and [r[0] for r in rows] == [
        "circle", "square", "star"]


def test_the_page_stands_alone(tmp_path):
    """What ran, when, with which versions on which hardware; links to the run's files that
    exist (and none that do not); every row's gain; numbers in words (no snake_case keys, no
    Python reprs, no seconds with three decimals); no empty header rows; every trial in a
    table; each plot in its stage's section; the discriminator's ROC and reliability."""
    import numpy as np
    import pandas as pd

    from dtl_ray.method import calibration

    layout = RunLayout(str(tmp_path / "r"))
    doc = _doc()
    doc.update(seed=3, seconds_total=4321.5,
               config={"backbone": "resnet50", "image_size": 224, "tensorboard": False},
               run=report.run_info(),
               data={"source": {"train": 12000, "val": 280}, "target": {"val": 12, "test": 30},
                     "classes": ["circle", "square", "star"], "rejected": 0})
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    p = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, 400), 0, 1)
    doc["discriminate"] = {"heldout_auc": 0.9, "heldout_calibration_error_raw": 0.05,
                           "seconds": 170.93, "n_source": 12000, "near_perfect": False,
                           "heldout_roc": calibration.roc_points(p, y),
                           "heldout_reliability": calibration.reliability(p, y)}
    doc["score"] = {"weight_divisor": 1.0, "rows_in": 12345, "seconds": 61.0}
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "arm": ["method", "target_only",
                                                                "adamatch"],
                           "strategy": ["discriminator", "none", "none"],
                           "source_fraction": [0.25, 0.0, 1.0], "alpha": [np.nan] * 3,
                           "target_fraction": [0.3, 0.0, 0.0], "lr": [0.003] * 3,
                           "best_val_accuracy": [0.9, 0.95, 0.5], "epochs_run": [4, 4, 2]})
    from dtl_ray import storage

    storage.write_bytes(layout.config, b"name: r\n")
    os.makedirs(os.path.dirname(layout.trials), exist_ok=True)
    trials.to_parquet(layout.trials)
    report.write(doc, layout)
    page = (tmp_path / "r" / "report.html").read_text()
    run = doc["run"]
    assert f"torch {run['torch']}" in page and f"ray {run['ray']}" in page
    assert "Hardware: " in page and "finished " in page and "1 h 12 min" in page
    assert "<a href='config.yaml'>" in page and "<a href='finetune/trials.parquet'>" in page
    assert "predictions.parquet" not in page and "tensorboard" not in page  # absent files
    # every model's gain over target_only (0.6): the method +0.200, dann -0.100
    assert "<td>+0.200</td>" in page and "<td>-0.100</td>" in page and "<td>+0.000</td>" in page
    assert "<tr><th></th>" not in page  # key/value tables have no header row
    assert "held-out calibration error (ECE), before Platt" in page
    assert "heldout_calibration_error_raw" not in page and "weight_divisor" not in page
    assert "2 min 50 s" in page and "170.930" not in page and "12,345" in page
    assert "train 12,000 · val 280" in page and "{&#x27;train" not in page
    # the trials, best val first; each plot in its section
    assert "Every trial (3), best val accuracy first" in page
    assert page.index("<td>target_only</td><td>none</td>") < page.index("<td>adamatch</td>")
    sections = page.split("<h2>")
    where = {s.split("</h2>")[0]: s for s in sections}
    assert "discriminator_roc.png" in where["Discriminator"]
    assert "confusion_method.png" in where[sections[1].split("</h2>")[0]]  # the test section
    with Image.open(tmp_path / "r" / "discriminator_roc.png") as im:
        assert im.size[0] > 300


def test_roc_points_and_reliability_bins():
    import numpy as np

    from dtl_ray.method import calibration

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    perfect = calibration.roc_points(np.array([.1, .2, .3, .4, .6, .7, .8, .9]), y)
    assert perfect[0] == [0.0, 0.0] and perfect[-1] == [1.0, 1.0]
    assert [0.0, 1.0] in perfect  # every target above every source: the top-left corner
    flipped = calibration.roc_points(np.array([.9, .8, .7, .6, .4, .3, .2, .1]), y)
    assert [1.0, 0.0] in flipped and [0.0, 1.0] not in flipped
    bins = calibration.reliability(np.array([.05, .05, .95, .95, .05, .95, .95, .95]), y)
    # two bins: p ~ .05 holds 2 source and 1 target, p ~ .95 holds 2 source and 3 target
    assert [b[2] for b in bins] == [3, 5]
    assert bins[0][1] == round(1 / 3, 4) and bins[1][1] == 0.6


def test_the_page_renders_in_headless_chromium(tmp_path):
    """The page as a browser shows it: headless Chromium (Debian's `chromium`, which `.ci/run`
    installs) takes a full-page screenshot; the page is drawn, with its tables and plots."""
    import shutil
    import subprocess

    import numpy as np

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs it with apt)")
    layout = RunLayout(str(tmp_path / "r"))
    report.write(_doc(), layout)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,1600",
                    f"file://{layout.report_html}"], capture_output=True, timeout=120,
                   env={**os.environ, "HOME": str(tmp_path)})
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (1600, 1000, 3)
    rows = (rgb.min(axis=2) < 200).any(axis=1)  # rows with ink: text, tables, the plot
    assert rows.mean() > 0.25, rows.mean()
    # the confusion matrix image is drawn: its blue cells (about 25,000 blue pixels; under
    # 1,000, the links' blue, when the image is missing)
    assert ((rgb[..., 2] - rgb[..., 0]) > 60).sum() > 5000
