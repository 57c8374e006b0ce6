"""The pipeline on a dataset that is not the demo: other class names, JPEG files in nested
folders (source packed into local shards, target read as folders from S3), the run itself on
S3, and a torchvision backbone (shufflenet_v2_x0_5) started from a locally saved checkpoint.

The run (`other_run`, conftest) is also the suite's S3 run: `test_s3.py` checks its bucket."""

import pytest
import torch
from conftest import OTHER_COUNTS

from dtl_ray.inference import predict
from dtl_ray.method import builders
from dtl_ray.storage import parquet

pytestmark = pytest.mark.slow


def test_local_weights_are_what_pretraining_starts_from(other_run):
    cfg, _, _ = other_run
    model = builders.classifier(cfg.model, 2)
    ref = torch.load(cfg.model.weights, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1[0].weight, ref["conv1.0.weight"])
    torch.testing.assert_close(model.backbone.stage3[0].branch1[0].weight,
                               ref["stage3.0.branch1.0.weight"])


def test_a_torchvision_backbone_on_jpeg_folders_packed_and_on_s3(other_run):
    cfg, folders, doc = other_run
    assert doc["data"]["classes"] == ["apple", "leaf", "sky"] == folders.classes
    assert doc["data"]["target_classes"] == ["apple", "leaf"]
    assert cfg.model.frame == (32, 36)  # resized to 36 and centre-cropped in every stage
    # and so by predict and suggest-labels, which read it from the run's saved config
    _, saved, _, _ = predict.run_files(f"{cfg.storage}/other", "method")
    assert predict.frame(saved) == (32, 36)
    n = sum(n * (3 if d == "src" or s == "unlabeled" else 2) for (d, s), n in OTHER_COUNTS.items())
    assert len(folders.table) == n
    # every image of the local folders, read from the shards and the bucket, with the
    # folders' labels and ids
    assert doc["score"]["rows_in"] == doc["score"]["rows_out"] == n
    scores = parquet.read_df(f"{cfg.storage}/other/score/scores")
    joined = folders.table[["sample_id", "label"]].merge(
        scores[["sample_id", "label"]], on="sample_id", suffixes=("", "_packed"))
    assert len(joined) == n and (joined["label"] == joined["label_packed"]).all()
    assert doc["evaluate"]["test_images"] == 8
    assert set(doc["evaluate"]["baselines"]) == {"source_only", "target_only", "all_source",
                                                 "random_subset", "self_training"}
