"""The report a person reads: per-class accuracy, the method's confusion matrix, the search's
choice in words (it used to be a raw dict)."""

from PIL import Image

from dtl_ray.contract.layout import RunLayout
from dtl_ray.pipeline import report

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
    assert "<img src='confusion_method.png'>" in page
    with Image.open(tmp_path / "r" / "confusion_method.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_per_class_rows_without_a_method_are_empty():
    doc = _doc()["evaluate"]
    assert report.per_class_rows({**doc, "method": {}})[0] == []
    rows, head = report.per_class_rows(doc)
    assert head == ["class", "method", "target_only"] and [r[0] for r in rows] == [
        "circle", "square", "star"]
