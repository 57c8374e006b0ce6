"""Reading a manifest's images with Ray Data: datasets of decoded rows for the stages, in a
seeded training order, cached in the object store when they fit.

Reading goes in two steps: a *manifest* (`manifests`: one row per file, listed once) and a Ray
Data map that reads and decodes each file (`decode`), keeping undecodable ones as rows with an
`error` instead of dropping them; a pass then reports them to the run's ledger (`rejects`), so
every input sample is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dtl_ray import storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import packing, rejects
from dtl_ray.data.decode import DEFAULT_MAX_PIXELS, TASK_RETRIES, decode_batch, drop_rejected
from dtl_ray.data.samples import ERROR, IMAGE, side

__all__ = ["Reading", "reading", "to_dataset",
           "dataset_parts", "good_rows", "drop_failed", "decode_here", "collect", "permuted",
           "training_dataset", "epoch_batches", "configure_context"]


@dataclass(frozen=True)
class Reading:
    """How a pass reads images: the pixel limit, and where rows that fail go (the run's
    rejects ledger, with the run's root and the pass's name; see `rejects`). Without a ledger
    failed rows are only dropped (decoding outside a run)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    ledger: Any = None
    root: str = ""
    stage: str = ""


def reading(layout: RunLayout, max_pixels: int, max_rejected_fraction: float,
            stage: str) -> Reading:
    """The Reading of a stage's passes: rows that fail are listed and counted by the run's
    ledger, which stops the run over `data.max_rejected_fraction` (`drop_failed`)."""
    return Reading(max_pixels, rejects.open_ledger(layout, max_rejected_fraction), layout.root,
                   stage)


def drop_failed(batch: dict[str, np.ndarray], reading: Reading) -> dict[str, np.ndarray]:
    """Keeps the decoded rows of a batch; reports the others to the run's ledger (which
    raises `DataError` once the run's rejected rows are over its limit)."""
    failed = batch[ERROR] != ""
    if reading.ledger is not None and failed.any():
        rejects.report(reading.ledger, reading.root, batch, failed, reading.stage)
    return drop_rejected(batch)


def configure_context() -> None:
    """The run's Ray Data settings: its own reads (packed shards) retry the transient errors
    `storage` retries, not only its default few; actor tasks retry `TransientReadError` (map
    tasks that read images get `TASK_RETRIES` where they are made); map errors are raised as
    themselves. Call it in the driver before building datasets."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.retried_io_errors = list(dict.fromkeys([*ctx.retried_io_errors, *storage.TRANSIENT]))
    # actors that read images (the scorers) retry a task that raised a transient fault
    ctx.actor_task_retry_on_errors = list(TASK_RETRIES["retry_exceptions"])
    # a user error in a map (bad data) reaches the driver as itself, not as Ray's
    # UserCodeException, so the CLI can print its one line (`cli.user_error`)
    ctx.raise_original_map_exception = True


def dataset_parts(rows: pd.DataFrame, image_size: int, rows_per_block: int = 512,
                  decode_files: bool = True,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[str, object]]:
    """(kind, Ray Dataset) pairs for manifest `rows`: ('files', ...) for rows from image
    folders (read file by file), ('packed', ...) per filesystem for rows from packed datasets
    (read shard by shard, decoded).

    decode_files=False leaves folder rows undecoded (no `image` column) for a consumer that
    decodes them itself (`decode_batch`), so image bytes never pass through the object store.
    """
    import ray.data

    packed = rows[rows["shard"] != ""] if "shard" in rows else rows.iloc[:0]
    files = rows[rows["shard"] == ""] if "shard" in rows else rows
    parts = []
    if len(files) or not len(packed):
        chunks = [files.iloc[i:i + rows_per_block]
                  for i in range(0, max(len(files), 1), rows_per_block)]
        ds = ray.data.from_pandas([c.reset_index(drop=True) for c in chunks])
        if decode_files:
            ds = ds.map_batches(decode_batch, fn_kwargs={"image_size": image_size,
                                                         "max_pixels": max_pixels},
                                batch_format="numpy", batch_size=None, **TASK_RETRIES)
        parts.append(("files", ds))
    if len(packed):  # one read per filesystem (a domain may be local, the other on S3)
        scheme = packed["shard"].str.startswith("s3://")
        parts += [("packed", packing.packed_dataset(packed[m], image_size, max_pixels))
                  for m in (scheme, ~scheme) if m.any()]
    return parts


def to_dataset(rows: pd.DataFrame, image_size: int, rows_per_block: int = 512,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    """A Ray Dataset of decoded images for manifest `rows` (rejected rows kept, with `error`).

    Rows from image folders are read file by file; rows from packed datasets shard by shard.
    """
    parts = [ds for _, ds in dataset_parts(rows, image_size, rows_per_block,
                                           max_pixels=max_pixels)]
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def good_rows(rows: pd.DataFrame, image_size: int, reading: Reading, columns: list[str]):
    """The decoded rows of `rows` with `columns`; the others go to the run's ledger
    (`drop_failed`)."""
    return (to_dataset(rows, image_size, max_pixels=reading.max_pixels)
            .map_batches(drop_failed, fn_kwargs={"reading": reading},
                         batch_format="numpy", batch_size=None)
            .select_columns(columns))


def decode_here(rows: pd.DataFrame, image_size: int, reading: Reading,
                columns: list[str], chunk: int = 256) -> dict[str, np.ndarray]:
    """`good_rows` for a small set, decoded in this process (a trial's labeled target, a
    cell that fits in its memory): no Ray Data execution, so a Tune trial that holds its CPUs
    never waits for CPUs of decode tasks. Rows from packed shards are read shard by shard."""
    parts = []
    packed = rows["shard"] != "" if "shard" in rows else np.zeros(len(rows), bool)
    files = rows[~packed]
    for i in range(0, len(files), chunk):
        part = files.iloc[i:i + chunk]
        batch = {c: part[c].to_numpy() for c in part.columns}
        parts.append(drop_failed(decode_batch(batch, image_size, reading.max_pixels),
                                 reading))
    for shard, group in rows[packed].groupby("shard"):
        batch = packing.read_shard(shard)
        parts.append(drop_failed(packing.decode_packed(batch, image_size,
                                                       packing.members_by_shard(group),
                                                       reading.max_pixels), reading))
    if not parts:
        empty = {c: rows[c].to_numpy()[:0] for c in columns if c in rows}
        empty[IMAGE] = np.zeros((0, side(image_size), side(image_size), 3), np.uint8)
        return {c: empty[c] for c in columns}
    return {c: np.concatenate([p[c] for p in parts]) for c in columns}


def collect(ds) -> dict[str, np.ndarray]:
    """Materialises a (small) decoded dataset as numpy arrays on the driver."""
    parts: dict[str, list] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=1024):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}




def permuted(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """`rows` in a random order drawn from `seed` (a manifest is sorted by class)."""
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.iloc[order].reset_index(drop=True)


def epoch_seed(seed: int):
    """A Ray Data seed that is reproducible from `seed` and re-drawn at every execution (every
    epoch of a Train worker's shard)."""
    from ray.data import RandomSeedConfig

    return RandomSeedConfig(seed=seed, reseed_after_execution=True)


def training_dataset(rows: pd.DataFrame, image_size: int, cache: str, columns: list[str],
                     seed: int | None, reading: Reading = Reading()):
    """Decoded, good rows with `columns` in a seeded random order, cached in the object store
    when they fit.

    Training must not see the manifest's order (sorted by class: a block of 512 rows holds one
    or two classes). Rows are permuted with `seed` before blocks are cut; cached rows are
    shuffled again at every epoch (every execution of the dataset), and so are rows of packed
    datasets (which come in pack order) when they are not cached. `epoch_batches` adds a local
    shuffle buffer on top. seed=None keeps the manifest's order (for evaluation sets).

    cache: 'always', 'never', or 'auto' (when decoded bytes < 1/4 of the object store).
    reading: the pixel limit, and the run's ledger that lists and counts the rows that fail
    (the first pass that decodes a row finds it: there is no separate inspection).
    """
    import ray

    ds = good_rows(rows if seed is None else permuted(rows, seed), image_size, reading, columns)
    nbytes = len(rows) * side(image_size) ** 2 * 3
    store = ray.cluster_resources().get("object_store_memory", 0)
    cached = cache == "always" or (cache == "auto" and nbytes < store / 4)
    if cached:
        ds = ds.materialize()
    packed = "shard" in rows and (rows["shard"] != "").any()
    if seed is not None and (cached or packed):
        # (not randomize_block_order: in Ray 2.58 it fails inside a Train worker's split
        # coordinator for blocks that the driver owns)
        ds = ds.random_shuffle(seed=epoch_seed(seed))
    return ds


def epoch_batches(it, batch_size: int, epoch: int, seed: int, buffer_batches: int):
    """One epoch of numpy batches from a training dataset or Train shard, through a local
    shuffle buffer of `buffer_batches` batches seeded by (seed, epoch)."""
    buffer = buffer_batches * batch_size if buffer_batches > 0 else None
    return it.iter_batches(batch_size=batch_size, batch_format="numpy",
                           local_shuffle_buffer_size=buffer,
                           local_shuffle_seed=seed * 100_003 + epoch if buffer else None)


