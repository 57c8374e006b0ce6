"""Packed datasets: an image-folder domain as Parquet shards of encoded image bytes.

Listing millions of small objects on S3 is slow (ray-project/ray#40686); a packed dataset is
read without listing: `_packed.json` names the shards, each shard holds
`sample_id, domain, split, label (class name; null when unlabeled), rel_path, image_bytes`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dtl_ray import console, storage
from dtl_ray.data.decode import (
    DEFAULT_MAX_PIXELS,
    TASK_RETRIES,
    decode_image,
    read_all,
    reject_reason,
    rejected_image,
)
from dtl_ray.data.samples import ERROR, IMAGE, sample_id, side
from dtl_ray.errors import DataError

__all__ = ["MANIFEST", "FORMAT", "is_packed", "pack", "read_index", "members_by_shard",
           "decode_packed", "read_shard", "packed_dataset"]

MANIFEST = "_packed.json"
FORMAT = "dtl-ray-packed/1"
SPLITS = ["train", "val", "unlabeled", "test"]


def is_packed(uri: str) -> bool:
    return storage.exists(storage.join(uri, MANIFEST))


def _guess_domain(uri: str) -> str:
    has = {s for s in SPLITS if storage.list_files(storage.join(uri, s))[:1]}
    return "target" if has & {"unlabeled", "test"} else "source"


def _list(src_uri: str, domain: str, extensions: tuple[str, ...]) -> pd.DataFrame:
    """The domain's images (one row each: id, domain, split, class name, path below the
    split), listed once in the driver: O(rows) strings, no bytes."""
    rows = []
    for split in SPLITS:
        for rel, _ in storage.list_files(storage.join(src_uri, split)):
            if rel.lower().endswith(extensions) and "/" in rel:
                label = None if split == "unlabeled" else rel.split("/", 1)[0]
                rows.append((sample_id(domain, split, rel), domain, split, label, rel))
    return pd.DataFrame(rows, columns=["sample_id", "domain", "split", "label", "rel_path"])


def _fetch(batch: pd.DataFrame, src_uri: str) -> pa.Table:
    """A shard's rows with their files' bytes (read in the Ray task, `READ_THREADS` at a
    time from object storage); transient faults retry the task, a file that cannot be read
    at all stops the pack with its path."""
    paths = [storage.join(src_uri, s, r) for s, r in zip(batch["split"], batch["rel_path"])]
    blobs = []
    for path, blob in zip(paths, read_all(paths)):
        if isinstance(blob, Exception):
            reason = reject_reason(blob, path)  # (a transient fault raises: Ray retries)
            raise DataError(f"cannot read {path} to pack it: {reason}")
        blobs.append(blob)
    table = pa.Table.from_pandas(batch.reset_index(drop=True), preserve_index=False)
    return table.append_column("image_bytes", pa.array(blobs, type=pa.binary()))


def _shard_names():
    """Ray Data's file names for the shards: `shard-<write task>-<write id>` (Ray wants the
    write's id in the name; its writer adds a file number and the extension)."""
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid, task_index):
            return f"shard-{task_index:05d}-{write_uuid}"

    return ShardNames()


def pack(src_uri: str, dst_uri: str, rows_per_shard: int = 10000, domain: str | None = None,
         extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"),
         seed: int | None = 0) -> dict:
    """Packs every split of an image-folder domain into Parquet shards under `dst_uri`: a Ray
    Data job (the listing cut into shard-sized blocks, files read in tasks, `write_parquet`),
    the index `_packed.json` written last (a dataset without one is incomplete).

    Rows are shuffled across shards with `seed` before the blocks are cut: a shard holds every
    class in about the dataset's proportions, not the listing's class-by-class order. (The
    listing is permuted, not the image bytes: the same order a `random_shuffle` of the rows
    gives, without moving every image through the object store once more.) seed=None keeps
    the listing's order.

    Returns the index.
    """
    import ray
    import ray.data

    if not storage.exists(src_uri):
        raise DataError(f"folder to pack not found: {src_uri}")
    domain = domain or _guess_domain(src_uri)
    files = _list(src_uri, domain, extensions)
    if not len(files):
        raise DataError(f"no images under {src_uri}/<split>/<class>/")
    if seed is not None:
        files = files.iloc[np.random.default_rng(seed).permutation(len(files))]
    fs, path = storage.resolve(dst_uri)
    storage.retry(lambda: fs.create_dir(path, recursive=True))
    old = storage.join(dst_uri, MANIFEST)
    if storage.exists(old):  # packed again: readers see no index until the new one is whole
        storage.delete(old)
    for rel, _ in storage.list_files(dst_uri):
        if rel.startswith("shard-") and rel.endswith(".parquet") and "/" not in rel:
            storage.delete(storage.join(dst_uri, rel))
    blocks = [files.iloc[i:i + rows_per_shard].reset_index(drop=True)
              for i in range(0, len(files), rows_per_shard)]
    console.say(f"[pack] {len(files)} images of {src_uri} into {len(blocks)} shard(s)")
    (ray.data.from_pandas(blocks)
     .map_batches(_fetch, fn_kwargs={"src_uri": src_uri}, batch_format="pandas",
                  batch_size=None, **TASK_RETRIES)
     .write_parquet(path, filesystem=fs, filename_provider=_shard_names(),
                    min_rows_per_file=rows_per_shard, max_rows_per_file=rows_per_shard,
                    row_group_size=min(1024, rows_per_shard)))
    shards = sorted(rel for rel, _ in storage.list_files(dst_uri)
                    if rel.startswith("shard-") and rel.endswith(".parquet") and "/" not in rel)
    counts = {k: int(v) for k, v in files["split"].value_counts().items()}
    manifest = {"format": FORMAT, "domain": domain, "rows": len(files), "splits": counts,
                "classes": sorted(files["label"].dropna().unique().tolist()),
                "rows_per_shard": rows_per_shard, "shards": shards, "source": src_uri,
                "shuffle_seed": seed}
    storage.write_json(old, manifest)  # last: marks it complete
    return manifest


def read_index(uri: str) -> pd.DataFrame:
    """Every packed row without its bytes: split, label (class name), rel_path, shard URI."""
    manifest = storage.read_json(storage.join(uri, MANIFEST))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{uri}/{MANIFEST} is not a dtl-ray packed dataset")
    parts = []
    for name in manifest["shards"]:
        shard = storage.join(uri, name)
        t = storage.retry(lambda shard=shard: pq.read_table(
            _open(shard), columns=["split", "label", "rel_path"])).to_pandas()
        t["shard"] = shard
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _open(uri: str):
    fs, path = storage.resolve(uri)
    return fs.open_input_file(path)


# what a packed shard knows about a manifest row; anything else (labels as class indices, a
# fine-tuning cell's weights) comes from the run's member table
FROM_SHARD = ("sample_id", "domain", "split", "path", "shard", "rel")
READ_COLUMNS = ["split", "rel_path", "image_bytes"]


def members_by_shard(rows: pd.DataFrame) -> dict[str, tuple[pa.Table, str, str]]:
    """Per shard (its filesystem path): the rows wanted from it as an Arrow table (`sample_id`
    and the columns a shard does not hold), its dataset's URI and the manifest's domain."""
    extra = [c for c in rows.columns if c not in FROM_SHARD]
    out = {}
    for shard, group in rows.groupby("shard", sort=True):
        table = pa.Table.from_pandas(group[["sample_id", *extra]], preserve_index=False)
        out[storage.path_of(shard)] = (table, shard.rsplit("/", 1)[0],
                                       str(group["domain"].iloc[0]))
    return out


def decode_packed(batch: dict[str, np.ndarray], image_size: int, shards: dict,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Decodes the rows of a packed block that the run wants.

    `batch` holds a shard's own columns (`path`: the shard, `split`, `rel_path`, `image_bytes`);
    `shards` maps a shard to (its member table or an object ref to it, dataset URI, domain),
    see `members_by_shard`. Ids, splits and paths come from the shard's columns; the member
    table only says which rows are wanted and adds the run's columns (label, weights).

    Returns the manifest columns plus `image` and `error`, as `decode_batch` does.
    """
    import ray

    frames, images, errors = [], [], []
    paths = np.asarray(batch["path"], dtype=object)
    for shard in dict.fromkeys(paths):  # a block comes from one shard; in case not
        members, root, domain = shards[shard]
        if isinstance(members, ray.ObjectRef):
            members = ray.get(members)
        members = members.to_pandas()
        at = paths == shard
        split, rel = batch["split"][at], batch["rel_path"][at]
        ids = np.array([sample_id(domain, s, r) for s, r in zip(split, rel)], dtype=object)
        where = pd.Index(members["sample_id"]).get_indexer(ids)
        keep = where >= 0
        frame = members.iloc[where[keep]].reset_index(drop=True)
        frame["domain"], frame["split"] = domain, split[keep]
        frame["path"] = [storage.join(root, s, r) for s, r in zip(split[keep], rel[keep])]
        frames.append(frame)
        for r, blob in zip(rel[keep], batch["image_bytes"][at][keep]):
            try:
                if not blob:
                    raise ValueError("empty file")
                images.append(decode_image(blob, image_size, max_pixels))
                errors.append("")
            except Exception as e:  # a bad image becomes a rejected row, not a crash
                errors.append(reject_reason(e, f"{shard}:{r}"))  # (memory: raises, retried)
                images.append(rejected_image(image_size))
    frame = pd.concat(frames, ignore_index=True)
    out = {k: frame[k].to_numpy() for k in frame.columns}
    s = side(image_size)
    out[IMAGE] = np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8)
    out[ERROR] = np.array(errors, dtype=object)
    return out


def read_shard(uri: str):
    """A shard's own columns that `decode_packed` reads, as one batch."""
    fs, path = storage.resolve(uri)
    t = storage.retry(lambda: pq.read_table(path, filesystem=fs, columns=READ_COLUMNS))
    batch = {c: t.column(c).to_numpy(zero_copy_only=False) for c in READ_COLUMNS}
    batch["path"] = np.array([path] * t.num_rows, dtype=object)
    return batch


def packed_dataset(rows: pd.DataFrame, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decoded packed rows, read shard by shard (no object listing). Only the splits of
    `rows` are read (the filter goes into the Parquet scan); each shard's member table goes
    to the object store once and its tasks fetch it (nothing per row is pickled into them)."""
    import ray
    import ray.data
    from ray.data.expressions import col

    fs, _ = storage.resolve(rows["shard"].iloc[0])
    shards = {path: (ray.put(table), root, domain)
              for path, (table, root, domain) in members_by_shard(rows).items()}
    ds = (ray.data.read_parquet(sorted(shards), filesystem=fs, include_paths=True,
                                columns=READ_COLUMNS)
          .filter(expr=col("split").is_in(sorted(rows["split"].unique()))))
    # whole blocks (a Parquet row group each): with a batch size, Ray 2.58 fuses this map into
    # the file listing when an all-to-all op (random_shuffle) follows, and it gets no columns
    return ds.map_batches(decode_packed, fn_kwargs={"image_size": image_size, "shards": shards,
                                                    "max_pixels": max_pixels},
                          batch_format="numpy", batch_size=None, **TASK_RETRIES)
