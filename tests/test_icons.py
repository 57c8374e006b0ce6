"""The icons development pair: Debian's icon themes, five styles to a sixth (a smoke run of
the generator at a small scale; the pair's benchmark is outside the suite)."""

import numpy as np
import pytest
from PIL import Image

from dtl_ray import cli
from dtl_ray.data import manifests
from dtl_ray.data.pairs import demo, icons

pytestmark = pytest.mark.skipif(
    bool(icons.missing_themes()),
    reason=f"icon themes {icons.missing_themes()} not installed (.ci/run installs them: "
           f"apt-get install {' '.join(icons.PACKAGES.values())})")


def test_each_theme_gives_every_class_and_keeps_a_drawing_once():
    for theme in [*icons.SOURCE_THEMES, icons.TARGET_THEME]:
        found = icons.theme_icons(theme, icons.CLASSES)
        assert all(len(found[c]) >= 3 for c in icons.CLASSES), (theme, found.keys())
        paths = [p for names in found.values() for p in names.values()]
        contents = [open(p, "rb").read() for p in paths]
        assert len(set(contents)) == len(contents), theme  # one drawing, one icon


def test_icons_pair_layout_counts_and_determinism(tmp_path):
    out = tmp_path / "pair"
    assert cli.main(["demo-data", "--out", str(out), "--pair", "icons", "--scale", "0.1",
                     "--seed", "1"]) == 0
    counts = icons.write_icons(str(tmp_path / "again"), seed=1, scale=0.1)
    m = manifests.build(str(out / "source"), str(out / "target"), [".png"])
    again = manifests.build(str(tmp_path / "again" / "source"),
                            str(tmp_path / "again" / "target"), [".png"])
    assert list(m.table["sample_id"]) == list(again.table["sample_id"])  # the seed decides
    assert m.classes == icons.CLASSES == demo.target_classes("icons")
    target = m.counts()["target"]
    assert target["train"] == 5 * len(icons.CLASSES) == counts["target/train"]
    assert all(target[s] > 0 for s in ("unlabeled", "val", "test"))
    src = m.rows("source", "train")
    # every source style is there, and labeled by its context
    assert {p.rsplit("/", 1)[1].split("_", 1)[0] for p in src["path"]} == set(
        icons.SOURCE_THEMES)
    # no target drawing in two splits (unlabeled names are hashed: compare the pixels)
    rows = m.rows("target", ["train", "unlabeled", "val", "test"])
    pixels = [np.asarray(Image.open(p)).tobytes() for p in rows["path"]]
    assert len(set(pixels)) == len(pixels)
    im = Image.open(rows["path"].iloc[0])
    assert im.size == (icons.SIZE, icons.SIZE) and im.mode == "RGBA"


def test_a_missing_theme_names_its_package(tmp_path):
    with pytest.raises(RuntimeError, match="apt-get install .*oxygen-icon-theme"):
        icons.write_icons(str(tmp_path / "x"), root=str(tmp_path))
