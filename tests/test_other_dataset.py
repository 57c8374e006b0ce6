"""The pipeline on a dataset that is not the demo: other class names, JPEG files in nested
folders, a torchvision backbone (resnet18) started from a locally saved checkpoint."""

import io
import os

import numpy as np
import pytest
import torch
import torchvision
from conftest import SMALL_SEARCH, tiny_overrides
from PIL import Image

from dtl_ray import builders, config, pipeline

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


def test_resnet18_from_local_weights_on_jpeg_dataset(ray_session, tmp_path):
    _write(tmp_path / "d", np.random.default_rng(0))
    weights = tmp_path / "resnet18_local.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    overrides = tiny_overrides(tmp_path / "d" / "src", tmp_path / "d" / "tgt", tmp_path / "out",
                               "r18") + ["model.backbone=resnet18", f"model.weights={weights}",
                                         "discriminate.layer=layer3", "model.image_size=32",
                                         *SMALL_SEARCH]
    cfg = config.load_config(overrides=overrides)
    # the weights really are loaded: pretraining starts from them
    model = builders.classifier(cfg.model, 2)
    ref = torch.load(weights, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, ref["conv1.weight"])
    doc = pipeline.run(cfg)
    assert doc["data"]["classes"] == ["apple", "leaf", "sky"]
    assert doc["data"]["target_classes"] == ["apple", "leaf"]
    assert doc["score"]["rows_in"] == doc["score"]["rows_out"] == sum(
        n * (3 if d == "src" or s == "unlabeled" else 2) for (d, s), n in COUNTS.items())
    assert doc["evaluate"]["test_images"] == 8
    assert os.path.exists(tmp_path / "out" / "r18" / "report.html")
