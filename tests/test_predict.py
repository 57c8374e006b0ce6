"""`dtl-ray predict` (new images through Ray Data) and `dtl-ray export` (TorchScript that loads
without dtl-ray), on the session run's chosen model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dtl_ray import cli

pytestmark = pytest.mark.slow

CONSUMER = """
import json, os, sys


class NoDtlRay:  # any import of dtl_ray fails in this process
    def find_spec(self, name, path=None, target=None):
        if name == "dtl_ray" or name.startswith("dtl_ray."):
            raise ImportError("dtl_ray is blocked in this process")


sys.meta_path.insert(0, NoDtlRay())
import numpy as np
import torch
from PIL import Image

extra = {"dtl_ray.json": ""}
model = torch.jit.load(sys.argv[1], _extra_files=extra)
info = json.loads(extra["dtl_ray.json"])
size = info["image_size"]
paths = json.loads(sys.argv[2])
images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size),
                                                                   Image.BILINEAR))
                   for p in paths])
with torch.no_grad():
    probs = model(torch.from_numpy(images))
conf, idx = probs.max(1)
print(json.dumps({"classes": [info["classes"][i] for i in idx.tolist()],
                  "confidence": conf.tolist(),
                  "dtl_ray_imported": any(m.startswith("dtl_ray") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def new_images(tiny_demo, tmp_path_factory):
    """Target test images as a folder of new images (nested, no labels), plus a file that is
    not an image and a macOS metadata file."""
    root = tmp_path_factory.mktemp("new")
    src = tiny_demo / "target" / "test"
    for i, p in enumerate(sorted(src.rglob("*.png"))):
        dest = root / f"batch{i % 2}" / f"{p.parent.name}-{p.name}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(p, dest)
    (root / "batch0" / "broken.png").write_bytes(b"not a png")
    (root / "batch0" / "._x.png").write_bytes(b"\x00\x05\x16\x07")
    return root


@pytest.fixture(scope="module")
def predicted(tiny_run, new_images, tmp_path_factory):
    """`dtl-ray predict` on the new images (CSV), once for the module."""
    out = tmp_path_factory.mktemp("pred") / "pred.csv"
    assert cli.main(["predict", tiny_run[1], str(new_images), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    df["error"] = df["error"].fillna("")
    return df


def test_predict_labels_new_images_and_lists_the_unreadable(tiny_run, new_images, predicted):
    df = predicted
    pngs = sorted(p for p in new_images.rglob("*.png") if not p.name.startswith("._"))
    assert sorted(df["path"]) == sorted(str(p) for p in pngs)  # `._x.png` is not an image
    bad = df[df["error"] != ""]
    assert list(bad["path"].map(os.path.basename)) == ["broken.png"]
    good = df[df["error"] == ""]
    names = json.load(open(os.path.join(tiny_run[1], "classes.json")))
    assert set(good["class"]) <= set(names) and (good["label"] >= 0).all()
    assert bad["label"].tolist() == [-1] and bad["confidence"].isna().all()
    assert good["confidence"].between(0, 1).all() and good["p_target"].between(0, 1).all()
    # the demo's test images (named after their class here): the accuracy `evaluate`
    # reported for the chosen model (same model, same images)
    truth = good["path"].map(lambda p: os.path.basename(p).split("-")[0])
    with open(os.path.join(tiny_run[1], "report.json")) as f:
        reported = json.load(f)["evaluate"]["chosen"]["target_test_accuracy"]
    assert (truth == good["class"]).mean() == pytest.approx(reported, abs=1e-9)


def test_an_export_loads_without_dtl_ray_and_predicts_the_same(tiny_run, predicted, tmp_path):
    model_file = tmp_path / "model.pt"
    assert cli.main(["export", tiny_run[1], "--out", str(model_file)]) == 0
    ref = predicted[predicted["error"] == ""].sort_values("path")
    # a fresh process that never imports dtl_ray (an import of it would fail there)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", CONSUMER, str(model_file),
                           json.dumps(list(ref["path"]))], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not got["dtl_ray_imported"]
    assert got["classes"] == list(ref["class"])
    np.testing.assert_allclose(got["confidence"], ref["confidence"], atol=1e-4)


def test_predict_and_export_errors_are_one_line(tiny_run, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o.csv")]
    assert cli.main(["predict", str(tmp_path), str(tmp_path), *out]) == 2
    assert "is not a dtl-ray run" in capsys.readouterr().err
    assert cli.main(["export", tiny_run[1], "--out", str(tmp_path / "m.pt"), "--model",
                     "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no model 'nope'" in err[0]
    assert cli.main(["predict", tiny_run[1], str(tmp_path / "none"), *out]) == 2
    assert "images not found" in capsys.readouterr().err
