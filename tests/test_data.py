import io

import numpy as np
import pytest
from PIL import Image

from dtl_ray import data, demo


def _png(mode, size=(10, 12), value=100):
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, np.uint16)).save(buf, format="PNG")
    else:
        Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(
            buf, format="PNG")
    return buf.getvalue()


def test_demo_is_deterministic_and_has_the_layout(tmp_path):
    a = demo.write_demo(str(tmp_path / "a"), seed=5, scale=0.05)
    b = demo.write_demo(str(tmp_path / "b"), seed=5, scale=0.05)
    assert a == b
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert fa == fb
    assert (tmp_path / "a" / fa[0]).read_bytes() == (tmp_path / "b" / fa[0]).read_bytes()
    m = data.build_manifest(str(tmp_path / "a" / "source"), str(tmp_path / "a" / "target"),
                            [".png"])
    assert m.classes == sorted(demo.SHARED_CLASSES + demo.SOURCE_ONLY_CLASSES)
    target_names = [m.classes[c] for c in m.target_classes]
    assert target_names == sorted(demo.SHARED_CLASSES)  # crescent is source-only


def test_manifest_ids_labels_and_unlabeled(tiny_demo):
    m = data.build_manifest(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    t = m.table
    assert t["sample_id"].is_unique
    row = t[t["split"] == "train"].iloc[0]
    assert row["sample_id"] == f"{row['domain']}/train/" + row["path"].split("/train/")[1]
    assert (t[t["split"] == "unlabeled"]["label"] == data.UNLABELED).all()
    circle = m.classes.index("circle")
    assert (t[t["path"].str.contains("/circle/")]["label"] == circle).all()
    again = data.build_manifest(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    assert list(again.table["sample_id"]) == list(t["sample_id"])


def _layout(root, spec):
    for rel in spec:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_png("RGB"))


FULL = ["s/train/a/1.png", "s/val/a/1.png", "t/train/a/1.png", "t/val/a/1.png",
        "t/test/a/1.png"]


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="source folder not found"):
        data.build_manifest(str(tmp_path / "nope"), str(tmp_path), [".png"])
    _layout(tmp_path / "r1", FULL[:-1])
    with pytest.raises(data.DataError, match="target split 'test' is empty"):
        data.build_manifest(str(tmp_path / "r1/s"), str(tmp_path / "r1/t"), [".png"])
    _layout(tmp_path / "r2", FULL + ["t/train/zebra/1.png"])
    with pytest.raises(data.DataError, match=r"target class\(es\) \['zebra'\]"):
        data.build_manifest(str(tmp_path / "r2/s"), str(tmp_path / "r2/t"), [".png"])
    _layout(tmp_path / "r3", FULL + ["t/test/b/1.png", "s/train/b/1.png"])
    with pytest.raises(data.DataError, match=r"target test has class\(es\) \['b'\]"):
        data.build_manifest(str(tmp_path / "r3/s"), str(tmp_path / "r3/t"), [".png"])


def test_decode_converts_modes_and_rejects_bad_files(tmp_path):
    files = {"rgb.png": _png("RGB"), "gray.png": _png("L"), "rgba.png": _png("RGBA"),
             "pal.png": _png("P"), "deep.png": _png("I;16"), "empty.png": b"",
             "text.png": b"not an image at all", "cut.png": _png("RGB")[:40]}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    batch = {"path": np.array([str(tmp_path / n) for n in files], dtype=object)}
    out = data.decode_batch(batch, image_size=8)
    assert out["image"].shape == (len(files), 8, 8, 3) and out["image"].dtype == np.uint8
    errors = dict(zip(files, out["error"]))
    assert [n for n, e in errors.items() if e] == ["empty.png", "text.png", "cut.png"]
    assert "empty file" in errors["empty.png"]
    assert out["image"][list(files).index("deep.png")].max() == 255  # 16-bit scaled, not clipped
    assert data.drop_rejected(out)["image"].shape[0] == 5
