"""`dtl-ray predict` (new images through Ray Data) and `dtl-ray export` (torch.export, ONNX,
TorchScript: each loads without dtl-ray), on the session run's chosen model."""

import json
import os
import shutil
import subprocess
import sys
import time

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

fmt, path = sys.argv[3], sys.argv[1]
extra = {"dtl_ray.json": ""}
if fmt == "export":
    model = torch.export.load(path, extra_files=extra).module()
elif fmt == "torchscript":
    model = torch.jit.load(path, _extra_files=extra)
else:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    extra["dtl_ray.json"] = session.get_modelmeta().custom_metadata_map["dtl_ray.json"]
    model = lambda x: torch.from_numpy(session.run(["probabilities"], {"images": x.numpy()})[0])
info = json.loads(extra["dtl_ray.json"])
assert info["format"] == fmt
size = info["image_size"]
paths = json.loads(sys.argv[2])
images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size),
                                                                   Image.BILINEAR))
                   for p in paths])
with torch.no_grad():
    probs = model(torch.from_numpy(images))
    one = model(torch.from_numpy(images[:1]))  # the batch is dynamic: one image alone
assert one.shape == (1, probs.shape[1]) and torch.allclose(one[0], probs[0], atol=1e-5)
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


@pytest.mark.parametrize("fmt", ["export", "onnx", "torchscript"])
def test_an_export_loads_without_dtl_ray_and_predicts_the_same(tiny_run, predicted, tmp_path,
                                                               fmt):
    """Each format loads in a fresh process that cannot import dtl_ray (ONNX through
    onnxruntime), takes any batch size, and gives `predict`'s classes and confidences."""
    model_file = tmp_path / f"model.{fmt}"
    assert cli.main(["export", tiny_run[1], "--out", str(model_file), "--format", fmt]) == 0
    ref = predicted[predicted["error"] == ""].sort_values("path")
    # a fresh process that never imports dtl_ray (an import of it would fail there)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "-c", CONSUMER, str(model_file),
                           json.dumps(list(ref["path"])), fmt], capture_output=True, text=True,
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


def test_serve_answers_http_requests_with_predicts_classes(tiny_run, predicted, ray_session,
                                                           tmp_path):
    """`dtl-ray serve RUN` (a Ray Serve app on 127.0.0.1, joined to the session's cluster):
    real HTTP requests, sent 8 at a time so that they are batched, get `predict`'s class,
    confidence and p_target for every image; bytes that are no image get status 400 and the
    reason."""
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from conftest import free_port

    ref = predicted[predicted["error"] == ""].sort_values("path")
    port = free_port()
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dtl-ray"), "serve",
                             tiny_run[1], "--port", str(port), "--num-cpus", "0.5"],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"

    def post(body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        ready = False
        for _ in range(240):  # the app is up when the log says so
            if "serving model" in (tmp_path / "serve.log").read_text():
                ready = True
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert ready, (tmp_path / "serve.log").read_text()[-3000:]
        bodies = [open(p, "rb").read() for p in ref["path"]]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, bodies))
        assert all(code == 200 for code, _ in answers), answers[:3]
        assert [a["class"] for _, a in answers] == list(ref["class"])
        np.testing.assert_allclose([a["confidence"] for _, a in answers], ref["confidence"],
                                   atol=1e-4)
        np.testing.assert_allclose([a["p_target"] for _, a in answers], ref["p_target"],
                                   atol=1e-4)
        code, bad = post(b"not an image")
        assert code == 400 and "error" in bad and "class" not in bad
    finally:
        os.killpg(proc.pid, 9)
        from ray import serve

        serve.shutdown()
