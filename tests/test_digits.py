"""The digits development pair: printed digits (shipped fonts) -> handwritten MNIST digits."""

import numpy as np
from PIL import Image

from dtl_ray import cli
from dtl_ray.data import manifests
from dtl_ray.data.pairs import demo, digits


def test_fonts_draw_ten_different_digits():
    rng = np.random.default_rng(0)
    for font in digits.fonts():
        images = [digits.render(d, font, rng)[0] for d in range(10)]
        assert all(im.shape == (28, 28) and im.dtype == np.uint8 for im in images)
        assert all(im.std() > 10 for im in images), font  # a glyph, not a blank square


def test_mnist_comes_from_the_installed_package():
    x, y = digits.load_mnist()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and (x[:, 0, :] == 0).all()  # white digits on black, empty border


def test_digits_pair_layout_counts_and_determinism(tmp_path):
    out = tmp_path / "pair"
    assert cli.main(["demo-data", "--out", str(out), "--pair", "digits", "--scale", "0.02",
                     "--seed", "1"]) == 0
    counts = digits.write_digits(str(tmp_path / "again"), seed=1, scale=0.02)
    assert counts["source/train"] == 100 and counts["source/val"] == 10
    assert counts["target/train"] == 50 and counts["target/unlabeled"] == 20
    assert counts["target/val"] == 10 and counts["target/test"] == 100
    m = manifests.build(str(out / "source"), str(out / "target"), [".png"])
    assert m.classes == digits.CLASSES == demo.target_classes("digits")
    assert m.counts()["target"] == {"train": 50, "unlabeled": 20, "val": 10, "test": 100}
    # no MNIST digit is in two target splits
    names = m.rows("target", ["train", "unlabeled", "val", "test"])["path"].map(
        lambda p: p.rsplit("mnist_", 1)[1])
    assert names.is_unique
    first = sorted((out / "source" / "train" / "3").iterdir())[0]
    assert first.read_bytes() == (tmp_path / "again" / first.relative_to(out)).read_bytes()
    with Image.open(first) as im:
        assert im.size == (28, 28)


def test_unlabeled_class_is_mnist_label(tmp_path):
    """The answer key of bench-labels: an MNIST index's class, checked against the labeled
    splits, whose folders name the class (`<d>_mnist_<k>.png`)."""
    digits.write_digits(str(tmp_path), seed=2, scale=0.02)
    checked = 0
    for split in ("train", "test"):
        for folder in (tmp_path / "target" / split).iterdir():
            for f in folder.iterdir():
                k = f.name.split("_mnist_")[1]
                assert digits.unlabeled_class(f"mnist_{k}") == folder.name
                assert demo.unlabeled_class("digits", f"s3://b/x/mnist_{k}") == folder.name
                checked += 1
    assert checked == 150
