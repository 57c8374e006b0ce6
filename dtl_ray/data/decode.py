"""Reading and decoding images, one or a batch: bad files become rejected rows with their
reason, transient storage faults are raised for Ray to retry (a row is never lost to them).
"""

from __future__ import annotations

import io

import numpy as np

from dtl_ray import storage
from dtl_ray.data.samples import ERROR, IMAGE, PATH, Size, side

__all__ = ["decode_image", "rejected_image", "decode_batch", "drop_rejected", "read_all",
           "reject_reason", "TransientReadError", "TooManyPixels", "RETRYABLE", "TASK_RETRIES",
           "DEFAULT_MAX_PIXELS", "READ_THREADS"]

class TransientReadError(RuntimeError):
    """A read that still failed with a transient storage error (or ran out of memory) after
    its own retries: the Ray task raising it is retried; the row is never rejected for it."""


class TooManyPixels(ValueError):
    """An image over `data.max_image_pixels` (a decompression bomb, or just too large)."""


RETRYABLE = [TransientReadError, MemoryError]


TASK_RETRIES = {"max_retries": 5, "retry_exceptions": RETRYABLE}
"""`map_batches` arguments for tasks that read images: Ray Data retries only system errors
unless told, so a transient read error would fail the run instead of being tried again."""


DEFAULT_MAX_PIXELS = 64_000_000
"""`data.max_image_pixels`' default: 8000 x 8000. PIL only refuses images over twice its own
limit (about 179 M pixels); a 13000 x 13000 RGBA PNG decodes (2.7 GB, with copies) below it."""


def _resize_crop(im, crop: int, short: int):
    """torchvision's Resize(short) then CenterCrop(crop) on a PIL image (same sizes, offsets
    and filter)."""
    from PIL import Image

    w, h = im.size
    if w <= h:
        new = (short, int(short * h / w))
    else:
        new = (int(short * w / h), short)
    if new != (w, h):
        im = im.resize(new, Image.BILINEAR)
    w, h = im.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return im.crop((left, top, left + crop, top + crop))


def decode_image(data: bytes, size: Size, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> (S, S, 3) uint8 RGB (`size`: S, or (S, R) to resize the shorter
    side to R and crop the centre); raises for a file that is not one, and `TooManyPixels`
    (before decoding) for one over `max_pixels`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        w, h = im.size
        if w * h > max_pixels:
            raise TooManyPixels(f"{w}x{h} = {w * h:,} pixels, over data.max_image_pixels="
                                f"{max_pixels:,}")
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray: scale to 8 bits
            arr = np.asarray(im, dtype=np.float32)
            im = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
        if im.mode in ("RGBA", "LA", "P"):  # flatten transparency onto black
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        if not isinstance(size, int):
            return np.asarray(_resize_crop(im, int(size[0]), int(size[1])), dtype=np.uint8)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def rejected_image(size: Size) -> np.ndarray:
    """The placeholder a rejected row carries (its `error` says why)."""
    return np.zeros((side(size), side(size), 3), np.uint8)


READ_THREADS = 16
"""Concurrent reads per batch from object storage: a GET's latency, not bandwidth, bounds a
one-file-at-a-time reader (decoding stays on the task's own CPU)."""


def read_all(paths: list[str]) -> list[bytes | Exception]:
    """The bytes of each file (or the exception reading it raised), in order. Transient
    storage errors are retried inside; remote files are fetched `READ_THREADS` at a time."""
    def scheme(path: str) -> str:
        return path.split("://", 1)[0] if "://" in path else "file"

    firsts = {scheme(p): p for p in reversed(paths)}  # one path, so one filesystem, per scheme
    filesystems = {k: storage.resolve(p)[0] for k, p in firsts.items()}

    def read(path: str) -> bytes | Exception:
        try:
            return storage.read_file(filesystems[scheme(path)], storage.path_of(path))
        except Exception as e:  # judged by the caller: rejected row or retried task
            return e

    if len(paths) > 1 and set(filesystems) - {"file"}:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
            return list(pool.map(read, paths))
    return [read(p) for p in paths]


def reject_reason(e: Exception, path: str) -> str:
    """Why a row is rejected; raises `TransientReadError` instead for a fault that is not the
    file's (a transient storage error that outlasted its retries, or memory), so that Ray
    retries the task and the row is never lost to it."""
    if isinstance(e, MemoryError) or storage.is_transient(e):
        raise TransientReadError(f"{path}: {type(e).__name__}: {e}"[:500]) from e
    if isinstance(e, TooManyPixels):
        return f"too many pixels: {e}"
    if type(e).__name__ == "DecompressionBombError":  # PIL's own, over twice its limit
        return f"too many pixels: {e}"[:300]
    return f"{type(e).__name__}: {e}"[:300]


def decode_batch(batch: dict[str, np.ndarray], image_size: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """Reads and decodes the files of a manifest batch; never raises for a bad file (only
    `TransientReadError`, for a storage or memory fault that outlasted its retries).

    Returns the batch (numpy columns) with `image` (uint8, image_size x image_size x 3; zeros
    when rejected) and `error` ('' when decoded, else the reason).
    """
    images, errors = [], []
    paths = list(batch[PATH])
    for path, raw in zip(paths, read_all(paths)):
        try:
            if isinstance(raw, Exception):
                raise raw
            if not raw:
                raise ValueError("empty file")
            images.append(decode_image(raw, image_size, max_pixels))
            errors.append("")
        except Exception as e:  # a bad file becomes a rejected row, not a crash
            errors.append(reject_reason(e, path))  # (a transient fault raises here)
            images.append(rejected_image(image_size))
    out = dict(batch)
    out[IMAGE] = np.stack(images)  # (B, H, W, 3) uint8
    out[ERROR] = np.array(errors, dtype=object)
    return out


def drop_rejected(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps decoded rows only (a pass of a run reports the others first: `data.drop_failed`)."""
    ok = batch[ERROR] == ""
    return {k: v[ok] for k, v in batch.items()}
