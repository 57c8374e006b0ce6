"""The built-in demo pairs (generated, no download)."""

import pytest

from dtl_ray.data import manifests
from dtl_ray.data.pairs import demo


def test_partial_pair_has_a_strict_subset_of_classes(tmp_path):
    counts = demo.write_demo(str(tmp_path), seed=1, scale=0.05, pair="partial")
    m = manifests.build(str(tmp_path / "source"), str(tmp_path / "target"), [".png"])
    src = {m.classes[c] for c in m.rows("source", "train")["label"]}
    tgt = {m.classes[c] for c in m.rows("target", "train")["label"]}
    assert tgt == set(demo.target_classes("partial")) and tgt < src and len(src) == 7
    assert counts["target/test"] == 3 * max(1, int(round(50 * 0.05)))  # 3 classes
    with pytest.raises(ValueError, match="unknown demo pair"):
        demo.target_classes("open_set")
