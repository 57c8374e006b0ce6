"""A photo-like pair for the photo recipe's checks (`configs/photos.yaml`), not for quality.

Scenes at camera-like sizes (320x240 and 240x320 JPEGs, so that the recipe's resize and
centre crop do real work): an object of the class (ball, box, cone, ring) of random colour,
size and place, on a sky-and-ground background with a horizon, lit and noised per image.
Source: daylight and overcast scenes; target: dusk (darker, warmer, more sensor noise).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dtl_ray import storage

__all__ = ["CLASSES", "COUNTS", "write_photos"]

CLASSES = ["ball", "box", "cone", "ring"]
COUNTS = {"source/train": 50, "source/val": 10, "target/train": 3, "target/unlabeled": 25,
          "target/val": 8, "target/test": 10}
"""Images per class in each domain/split (the unlabeled pool holds every class)."""

_LIGHT = {"daylight": (1.0, (1.0, 1.0, 1.0), 6.0), "overcast": (0.8, (0.9, 0.95, 1.0), 8.0),
          "dusk": (0.55, (1.15, 0.85, 0.7), 14.0)}
"""Style: (brightness, RGB tint, sensor noise sigma)."""


def _scene(cls: str, style: str, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageDraw

    w, h = (320, 240) if rng.random() < 0.75 else (240, 320)
    horizon = int(h * rng.uniform(0.45, 0.7))
    sky = np.array([110, 160, 230]) + rng.normal(0, 15, 3)
    ground = np.array([90, 120, 60]) + rng.normal(0, 20, 3)
    rows = np.arange(h)[:, None, None]
    img = np.where(rows < horizon, sky * (0.8 + 0.2 * rows / h), ground * (1.1 - 0.3 * rows / h))
    img = np.broadcast_to(img, (h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    colour = tuple(int(c) for c in rng.integers(30, 240, 3))
    r = int(min(w, h) * rng.uniform(0.15, 0.3))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(max(r, horizon - r), h - r))
    if cls == "ball":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif cls == "box":
        d.rectangle([cx - r, cy - int(r * 0.8), cx + r, cy + int(r * 0.8)], fill=colour)
    elif cls == "cone":
        d.polygon([(cx, cy - r), (cx - int(r * 0.7), cy + r), (cx + int(r * 0.7), cy + r)],
                  fill=colour)
    else:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(3, r // 3))
    brightness, tint, noise = _LIGHT[style]
    arr = np.asarray(pil, dtype=np.float32) * brightness * np.array(tint, dtype=np.float32)
    arr += rng.normal(0, noise, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=int(rng.integers(80, 95)))
    return buf.getvalue()


def write_photos(out_uri: str, seed: int = 0, scale: float = 1.0) -> dict:
    """Writes the pair to `<out_uri>/source` and `<out_uri>/target`; returns the counts per
    domain/split."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    writes = []
    with ThreadPoolExecutor(16 if out_uri.startswith("s3://") else 1) as pool:
        for key, per_class in COUNTS.items():
            domain, split = key.split("/")
            n = max(1, int(round(per_class * scale)))
            for cls in CLASSES:
                sub = "unknown" if split == "unlabeled" else cls
                for i in range(n):
                    style = ("dusk" if domain == "target" else
                             "daylight" if rng.random() < 0.5 else "overcast")
                    raw = _scene(cls, style, rng)
                    uri = storage.join(out_uri, domain, split, sub, f"{cls}_{style}_{i:04d}.jpg")
                    writes.append(pool.submit(storage.write_bytes, uri, raw))
            counts[key] = n * len(CLASSES)
        for f in writes:
            f.result()
    return counts
