"""The built-in demo domain pair, generated procedurally from a seed (no download).

Classes are shapes. The **target** draws them in random colours on a dark, noisy background.
The **source** is heterogeneous:

- a *near* part (25%) drawn like the target;
- a *far* part (75%) on a light background, with small, blurred shapes whose colour is tied to
  the class (a shortcut that does not hold on the target, where colour is random);
- one class (`crescent`) the target does not have.

A model fine-tuned on random source samples learns the colour shortcut from the far part and
pays for it on the target; the discriminator should find the near part. That makes the pair a
fair test of selection: `random_subset` should not match the discriminator's choice.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dtl_ray import storage

__all__ = ["SHARED_CLASSES", "SOURCE_ONLY_CLASSES", "DEFAULT_COUNTS", "PAIRS",
           "target_classes", "render", "write_demo"]

SHARED_CLASSES = ["bars", "circle", "cross", "ring", "square", "triangle"]
SOURCE_ONLY_CLASSES = ["crescent"]
# per class: (source train, source val, target train, target unlabeled, target val, target test)
DEFAULT_COUNTS = {"source/train": 300, "source/val": 40, "target/train": 5,
                  "target/unlabeled": 60, "target/val": 20, "target/test": 50}
NEAR_FRACTION = 0.25
SIZE = 32
# the far part's class colours (the shortcut)
CLASS_COLOURS = {
    "bars": (220, 40, 40), "circle": (40, 160, 40), "cross": (40, 60, 220),
    "ring": (200, 160, 20), "square": (160, 40, 200), "triangle": (20, 170, 190),
    "crescent": (240, 110, 20),
}


def _polygon(cx: float, cy: float, r: float, n: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n),
             cy + r * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float,
                angle: float, colour: tuple, bg: tuple) -> None:
    w = max(2, int(r / 3))
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=w)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, angle), fill=colour)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, angle), fill=colour)
    elif name == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=w)
    elif name == "bars":
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        ox, oy = -dy * 0.45, dx * 0.45
        for s in (-1, 1):
            draw.line([cx - dx + s * ox, cy - dy + s * oy, cx + dx + s * ox, cy + dy + s * oy],
                      fill=colour, width=w)
    elif name == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        off = r * 0.6
        draw.ellipse([cx - r + off * math.cos(angle), cy - r + off * math.sin(angle),
                      cx + r + off * math.cos(angle), cy + r + off * math.sin(angle)], fill=bg)
    else:
        raise ValueError(f"unknown demo class {name!r}")


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = rng.uniform(0, 6)
    x = 1 - abs(hue % 2 - 1)
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    v = rng.uniform(0.7, 1.0)
    return tuple(int(255 * v * (0.25 + 0.75 * c)) for c in (r, g, b))


def render(name: str, style: str, rng: np.random.Generator) -> np.ndarray:
    """Renders one SIZE x SIZE RGB image of shape `name` in `style` ('target'|'near'|'far')."""
    if style in ("target", "near"):
        bg = tuple(int(v) for v in rng.integers(15, 60, size=3))
        colour = _random_colour(rng)
        r = rng.uniform(8, 12)
        noise, blur = (14.0 if style == "target" else 11.0), 0.0
    elif style == "far":
        bg = tuple(int(v) for v in rng.integers(185, 245, size=3))
        colour = CLASS_COLOURS[name] if rng.random() < 0.9 else _random_colour(rng)
        r = rng.uniform(5, 8)
        noise, blur = 4.0, 1.1
    else:
        raise ValueError(f"unknown style {style!r}")
    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(img)
    c = SIZE / 2
    cx, cy = c + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
    _draw_shape(draw, name, cx, cy, r, rng.uniform(0, 2 * math.pi), colour, bg)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, noise, size=(SIZE, SIZE, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


PAIRS = ("standard", "partial", "digits", "icons", "photos")
# the partial pair: the target has only these classes; the source keeps all seven
PARTIAL_TARGET_CLASSES = ["circle", "cross", "square"]


def target_classes(pair: str = "standard") -> list[str]:
    """The classes the target domain of `pair` has."""
    if pair == "standard":
        return list(SHARED_CLASSES)
    if pair == "partial":
        return list(PARTIAL_TARGET_CLASSES)
    if pair == "digits":
        from dtl_ray.data.pairs import digits

        return list(digits.CLASSES)
    if pair == "icons":
        from dtl_ray.data.pairs import icons

        return list(icons.CLASSES)
    if pair == "photos":
        from dtl_ray.data.pairs import photos

        return list(photos.CLASSES)
    raise ValueError(f"unknown demo pair {pair!r}: choose from {list(PAIRS)}")


def unlabeled_class(pair: str, path: str) -> str:
    """The class of a demo pair's unlabeled target image, from its name (the demo pairs' own
    `<class>_target_<i>.png`, digits' MNIST index): the answer key of `dtl-ray bench-labels`.
    The pipeline never reads it."""
    name = path.rsplit("/", 1)[-1]
    if pair == "digits":
        from dtl_ray.data.pairs import digits

        return digits.unlabeled_class(name)
    return name.rsplit("_", 2)[0]


def write_demo(out_uri: str, seed: int = 0, scale: float = 1.0, pair: str = "standard") -> dict:
    """Writes the demo pair to `<out_uri>/source` and `<out_uri>/target`.

    Args:
        out_uri: local folder or s3:// URI.
        seed: everything drawn follows from it.
        scale: multiplies every per-class count (at least 1 image per class and split).
        pair: `standard` (the target lacks one source class), `partial` (partial domain
            adaptation: the target has 3 of the source's 7 classes, so 4 are source-only) or
            `digits` (real images: printed digits to handwritten MNIST, `pairs.digits`) or
            `icons` (real images: desktop icons in five styles to a sixth, `pairs.icons`) or
            `photos` (photo-like scenes at 320x240 for the photo recipe's checks).

    Returns:
        Counts per domain/split, and the near/far make-up of source train.
    """
    tgt_classes = target_classes(pair)
    if pair == "digits":
        from dtl_ray.data.pairs import digits

        return digits.write_digits(out_uri, seed=seed, scale=scale)
    if pair == "icons":
        from dtl_ray.data.pairs import icons

        return icons.write_icons(out_uri, seed=seed, scale=scale)
    if pair == "photos":
        from dtl_ray.data.pairs import photos

        return photos.write_photos(out_uri, seed=seed, scale=scale)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    near_total = 0
    # images are drawn in order (the seed decides them); remote writes go 16 at a time
    pool = ThreadPoolExecutor(16) if out_uri.startswith("s3://") else None
    writes = []
    for key, per_class in DEFAULT_COUNTS.items():
        domain, split = key.split("/")
        classes = SHARED_CLASSES + SOURCE_ONLY_CLASSES if domain == "source" else tgt_classes
        n = max(1, int(round(per_class * scale)))
        for name in classes:
            sub = "unknown" if split == "unlabeled" else name
            for i in range(n):
                if domain == "target":
                    style = "target"
                else:
                    style = "near" if rng.random() < NEAR_FRACTION else "far"
                    near_total += style == "near" and split == "train"
                # the file name carries the style so a person (and the tests) can check the
                # discriminator's choice; the pipeline never reads it
                uri = storage.join(out_uri, domain, split, sub, f"{name}_{style}_{i:04d}.png")
                blob = _png(render(name, style, rng))
                if pool is None:
                    storage.write_bytes(uri, blob)
                else:
                    writes.append(pool.submit(storage.write_bytes, uri, blob))
                counts[key] = counts.get(key, 0) + 1
    if pool is not None:
        with pool:
            for w in writes:
                w.result()  # a write that failed after its retries fails the command
    counts["source/train/near"] = near_total
    return counts
