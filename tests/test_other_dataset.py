"""The pipeline on a dataset that is not the demo: other class names, JPEG files in nested
folders, read from its packed copy (source shards in a local folder, target shards on S3), and
a torchvision backbone (resnet18) started from a locally saved checkpoint."""

import io
import os

import boto3
import numpy as np
import pytest
import torch
import torchvision
from conftest import SMALL_SEARCH, tiny_overrides
from PIL import Image

from dtl_ray import builders, cli, config, data, pipeline

pytestmark = pytest.mark.slow

COUNTS = {("src", "train"): 16, ("src", "val"): 4, ("tgt", "train"): 2, ("tgt", "unlabeled"): 6,
          ("tgt", "val"): 3, ("tgt", "test"): 4}
HUES = {"apple": (200, 30, 30), "leaf": (30, 160, 40), "sky": (40, 80, 220)}


def _write(root, rng):
    for (domain, split), n in COUNTS.items():
        for cls, colour in HUES.items():
            if domain == "tgt" and cls == "sky" and split != "unlabeled":
                continue  # a source-only class here too
            for i in range(n):
                base = np.array(colour) * (0.6 if domain == "tgt" else 1.0)
                arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                folder = "misc" if split == "unlabeled" else cls
                path = root / domain / split / folder / f"batch{i % 2}" / f"{cls}{i}.JPG"
                path.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG")
                path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def r18_run(ray_session, s3_server, tmp_path_factory):
    """The JPEG folders packed with `dtl-ray pack` (source locally, target to S3), then every
    stage with resnet18 from local weights on the packed copy.

    Returns (cfg, the folders' manifest, report)."""
    tmp_path = tmp_path_factory.mktemp("r18")
    _write(tmp_path / "d", np.random.default_rng(0))
    boto3.client("s3").create_bucket(Bucket="dtl-r18")
    src, tgt = str(tmp_path / "packed" / "src"), "s3://dtl-r18/tgt"
    assert cli.main(["pack", str(tmp_path / "d" / "src"), src, "--rows-per-shard", "16"]) == 0
    assert cli.main(["pack", str(tmp_path / "d" / "tgt"), tgt, "--rows-per-shard", "16"]) == 0
    weights = tmp_path / "resnet18_local.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    overrides = tiny_overrides(src, tgt, tmp_path / "out", "r18") + [
        "model.backbone=resnet18", f"model.weights={weights}", "discriminate.layer=layer3",
        "model.image_size=32", *SMALL_SEARCH]
    cfg = config.load_config(overrides=overrides)
    folders = data.build_manifest(str(tmp_path / "d" / "src"), str(tmp_path / "d" / "tgt"),
                                  cfg.data.extensions)
    return cfg, folders, pipeline.run(cfg)


def test_local_weights_are_what_pretraining_starts_from(r18_run):
    cfg, _, _ = r18_run
    model = builders.classifier(cfg.model, 2)
    ref = torch.load(cfg.model.weights, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, ref["conv1.weight"])


def test_resnet18_on_the_packed_jpeg_dataset(r18_run):
    cfg, folders, doc = r18_run
    assert doc["data"]["classes"] == ["apple", "leaf", "sky"] == folders.classes
    assert doc["data"]["target_classes"] == ["apple", "leaf"]
    n = sum(n * (3 if d == "src" or s == "unlabeled" else 2) for (d, s), n in COUNTS.items())
    assert len(folders.table) == n
    # every image of the folders, read from the shards, with the folders' labels and ids
    assert doc["score"]["rows_in"] == doc["score"]["rows_out"] == n
    scores = data.read_parquet_df(os.path.join(cfg.storage, "r18", "score", "scores"))
    joined = folders.table[["sample_id", "label"]].merge(
        scores[["sample_id", "label"]], on="sample_id", suffixes=("", "_packed"))
    assert len(joined) == n and (joined["label"] == joined["label_packed"]).all()
    assert doc["evaluate"]["test_images"] == 8
    assert set(doc["evaluate"]["baselines"]) == {"source_only", "target_only", "all_source",
                                                 "random_subset", "self_training"}
    assert os.path.exists(os.path.join(cfg.storage, "r18", "report.html"))
