"""The sample vocabulary every reader shares: column names, splits, stable sample ids, the
error a user can fix in their data, and decoding one image.

It sits below `data` (image folders) and `packing` (packed shards), which both use it.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["SAMPLE_ID", "IMAGE", "LABEL", "DOMAIN", "SPLIT", "PATH", "ERROR", "P_TARGET",
           "WEIGHT", "COLUMNS", "SPLITS", "REQUIRED", "UNLABELED", "DataError", "sample_id",
           "decode_image", "rejected_image"]

# the one column vocabulary
SAMPLE_ID, IMAGE, LABEL, DOMAIN, SPLIT, PATH, ERROR = (
    "sample_id", "image", "label", "domain", "split", "path", "error")
P_TARGET, WEIGHT = "p_target", "weight"
COLUMNS = [SAMPLE_ID, IMAGE, LABEL, DOMAIN, SPLIT, PATH, ERROR, P_TARGET, WEIGHT]
SPLITS = {"source": ["train", "val"], "target": ["train", "unlabeled", "val", "test"]}
REQUIRED = {("source", "train"), ("source", "val"), ("target", "train"), ("target", "val"),
            ("target", "test")}
UNLABELED = -1


class DataError(ValueError):
    """A problem with the input data that the user can fix."""


def sample_id(domain: str, split: str, rel_path: str) -> str:
    """The stable id of a sample: its domain, split and path below the split folder."""
    return f"{domain}/{split}/{rel_path}"


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB; raises for a file that is not one."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale to 8 bits
            arr = np.asarray(im, dtype=np.float32)
            im = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def rejected_image(size: int) -> np.ndarray:
    """The placeholder a rejected row carries (its `error` says why)."""
    return np.zeros((size, size, 3), np.uint8)
