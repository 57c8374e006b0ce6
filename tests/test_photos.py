"""The photo recipe (`configs/photos.yaml`) on photo-like images: `--check` passes with only
the data paths (and, on a machine without a GPU, `scaling.use_gpu`) swapped in, and says in
one line why a GPU run cannot start here. The short run of the recipe is
`scripts/photos_check.py` (README "Your own data"): resnet50 at 224 px is minutes on CPUs."""

import os
import subprocess
import sys

import pytest
import yaml

from dtl_ray.data.pairs import photos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "photos.yaml")


@pytest.fixture(scope="module")
def photo_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    counts = photos.write_photos(str(root), seed=0, scale=0.2)
    return root, counts


def _check(root, tmp_path, *sets):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [os.path.join(os.path.dirname(sys.executable), "dtl-ray"), "run", CONFIG, "--check",
            "--set", f"source.uri={root / 'source'}", "--set", f"target.uri={root / 'target'}",
            "--set", f"storage={tmp_path / 'runs'}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def test_photo_pair_is_camera_sized_jpegs_in_the_run_layout(photo_pair):
    from PIL import Image

    root, counts = photo_pair
    assert counts["target/unlabeled"] == 5 * len(photos.CLASSES)
    for split in ("train", "val"):
        assert sorted(os.listdir(root / "source" / split)) == photos.CLASSES
    assert os.listdir(root / "target" / "unlabeled") == ["unknown"]
    first = root / "target" / "test" / "cone"
    img = Image.open(first / sorted(os.listdir(first))[0])
    assert img.format == "JPEG" and sorted(img.size) == [240, 320]


def test_photo_recipe_checks_with_only_the_data_paths_changed(photo_pair, tmp_path):
    root, counts = photo_pair
    with open(CONFIG) as f:
        cfg = yaml.safe_load(f)
    assert cfg["model"] == {"backbone": "resnet50", "image_size": 224,
                            "weights": "IMAGENET1K_V2"}
    assert cfg["scaling"]["use_gpu"] is True and cfg["scaling"]["num_workers"] == "auto"
    proc = _check(root, tmp_path, "scaling.use_gpu=false")
    assert proc.returncode == 0, proc.stderr
    assert "usable" in proc.stdout and f"unlabeled {counts['target/unlabeled']} ·" in proc.stdout
    assert "source train 40 · val 8; target train 4 · unlabeled 20" in proc.stdout
    assert not (tmp_path / "runs" / "photos").exists()  # a check writes no run


def test_photo_recipe_on_a_machine_without_gpus_is_one_line_exit_2(photo_pair, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the recipe as shipped is usable here")
    proc = _check(photo_pair[0], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "scaling.use_gpu=true" in lines[0] and "0" in lines[0], lines
