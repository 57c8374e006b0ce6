"""Packed datasets: an image-folder domain as Parquet shards of encoded image bytes.

Listing millions of small objects on S3 is slow (ray-project/ray#40686); a packed dataset is
read without listing: `_packed.json` names the shards, each shard holds
`sample_id, domain, split, label (class name; null when unlabeled), rel_path, image_bytes`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dtl_ray import storage
from dtl_ray.samples import (
    DEFAULT_MAX_PIXELS,
    ERROR,
    IMAGE,
    TASK_RETRIES,
    DataError,
    decode_image,
    reject_reason,
    rejected_image,
    sample_id,
)

__all__ = ["MANIFEST", "FORMAT", "is_packed", "pack", "read_index", "decode_packed",
           "packed_dataset"]

MANIFEST = "_packed.json"
FORMAT = "dtl-ray-packed/1"
SPLITS = ["train", "val", "unlabeled", "test"]


def is_packed(uri: str) -> bool:
    return storage.exists(storage.join(uri, MANIFEST))


def _guess_domain(uri: str) -> str:
    has = {s for s in SPLITS if storage.list_files(storage.join(uri, s))[:1]}
    return "target" if has & {"unlabeled", "test"} else "source"


def pack(src_uri: str, dst_uri: str, rows_per_shard: int = 10000, domain: str | None = None,
         extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"),
         threads: int = 16) -> dict:
    """Packs every split of an image-folder domain into Parquet shards under `dst_uri`.

    Returns the manifest written to `<dst_uri>/_packed.json`.
    """
    if not storage.exists(src_uri):
        raise DataError(f"folder to pack not found: {src_uri}")
    domain = domain or _guess_domain(src_uri)
    files = []
    for split in SPLITS:
        for rel, _ in storage.list_files(storage.join(src_uri, split)):
            if rel.lower().endswith(extensions) and "/" in rel:
                label = None if split == "unlabeled" else rel.split("/", 1)[0]
                files.append((split, rel, label))
    if not files:
        raise DataError(f"no images under {src_uri}/<split>/<class>/")
    shards, counts = [], {}
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(files), rows_per_shard):
            chunk = files[start:start + rows_per_shard]
            blobs = list(pool.map(lambda f: storage.read_bytes(storage.join(src_uri, f[0], f[1])),
                                  chunk))
            table = pa.table({
                "sample_id": [sample_id(domain, s, r) for s, r, _ in chunk],
                "domain": [domain] * len(chunk),
                "split": [s for s, _, _ in chunk],
                "label": [lab for _, _, lab in chunk],
                "rel_path": [r for _, r, _ in chunk],
                "image_bytes": pa.array(blobs, type=pa.binary()),
            })
            name = f"shard-{len(shards):05d}.parquet"
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf, row_group_size=min(1024, rows_per_shard))
            storage.write_bytes(storage.join(dst_uri, name), buf.getvalue().to_pybytes())
            shards.append(name)
            for s, _, _ in chunk:
                counts[s] = counts.get(s, 0) + 1
            print(f"[pack] {name}: {len(chunk)} images ({start + len(chunk)}/{len(files)})",
                  flush=True)
    manifest = {"format": FORMAT, "domain": domain, "rows": len(files), "splits": counts,
                "classes": sorted({lab for _, _, lab in files if lab is not None}),
                "rows_per_shard": rows_per_shard, "shards": shards, "source": src_uri}
    storage.write_json(storage.join(dst_uri, MANIFEST), manifest)  # last: marks it complete
    return manifest


def read_index(uri: str) -> pd.DataFrame:
    """Every packed row without its bytes: split, label (class name), rel_path, shard URI."""
    manifest = storage.read_json(storage.join(uri, MANIFEST))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{uri}/{MANIFEST} is not a dtl-ray packed dataset")
    parts = []
    for name in manifest["shards"]:
        shard = storage.join(uri, name)
        t = pq.read_table(_open(shard), columns=["split", "label", "rel_path"]).to_pandas()
        t["shard"] = shard
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _open(uri: str):
    fs, path = storage.resolve(uri)
    return fs.open_input_file(path)


def decode_packed(batch: dict[str, np.ndarray], image_size: int, wanted: dict,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Keeps the packed rows in `wanted` ((shard path, split, rel) -> manifest row), decoded.

    Returns the manifest rows' columns plus `image` and `error`, as `decode_batch` does.
    """
    records, images, errors = [], [], []
    for shard, split, rel, blob in zip(batch["path"], batch["split"], batch["rel_path"],
                                       batch["image_bytes"]):
        row = wanted.get((shard, split, rel))
        if row is None:
            continue
        records.append(row)
        try:
            if not blob:
                raise ValueError("empty file")
            images.append(decode_image(blob, image_size, max_pixels))
            errors.append("")
        except Exception as e:  # a bad image becomes a rejected row, not a crash
            errors.append(reject_reason(e, f"{shard}:{rel}"))  # (memory: raises, retried)
            images.append(rejected_image(image_size))
    template = next(iter(wanted.values()))
    frame = pd.DataFrame(records) if records else pd.DataFrame([template]).iloc[:0]
    out = {k: frame[k].to_numpy() for k in template}
    out[IMAGE] = np.stack(images) if images else np.zeros((0, image_size, image_size, 3),
                                                           np.uint8)
    out[ERROR] = np.array(errors, dtype=object)
    return out


def packed_dataset(rows: pd.DataFrame, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decoded packed rows, read shard by shard (no object listing)."""
    import ray.data

    fs, _ = storage.resolve(rows["shard"].iloc[0])
    shards = sorted(rows["shard"].unique())
    paths = [storage.path_of(s) for s in shards]
    keyed = {(storage.path_of(r["shard"]), r["split"], r["rel"]): r
             for r in rows.to_dict("records")}
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True,
                               columns=["split", "rel_path", "image_bytes"])
    # whole blocks (a Parquet row group each): with a batch size, Ray 2.58 fuses this map into
    # the file listing when an all-to-all op (random_shuffle) follows, and it gets no columns
    return ds.map_batches(decode_packed, fn_kwargs={"image_size": image_size, "wanted": keyed,
                                                    "max_pixels": max_pixels},
                          batch_format="numpy", batch_size=None, **TASK_RETRIES)
