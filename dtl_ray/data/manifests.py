"""The manifest: every input file of both domains, listed once, with its stable id and label.

Listing checks the layout (a missing folder, an empty required split, a class that cannot be
used) before anything else runs, and keeps files whose names are not UTF-8 as rejected rows.
A packed domain (`packing`) is listed from its index, never from the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dtl_ray import storage
from dtl_ray.contract.layout import RunLayout
from dtl_ray.data import packing
from dtl_ray.data.samples import (
    DOMAIN,
    ERROR,
    LABEL,
    PATH,
    REQUIRED,
    SAMPLE_ID,
    SPLIT,
    SPLITS,
    UNLABELED,
    sample_id,
)
from dtl_ray.errors import DataError
from dtl_ray.storage import parquet

__all__ = ["Manifest", "build", "save", "load", "REJECTED"]


@dataclass(frozen=True)
class Manifest:
    """Every input file with its id and label, and the class list."""

    table: pd.DataFrame
    """Columns: sample_id, domain, split, path, label (-1 when unlabeled)."""
    classes: list[str]
    """Class names; a label is an index into this list (sorted union of both domains)."""
    unreadable_names: pd.DataFrame | None = None
    """Files whose names are not UTF-8 (rows of the rejected table: they cannot be ids or
    Parquet strings); kept out of `table`. Only a freshly listed manifest has them."""

    def rows(self, domain: str, split: str | list[str]) -> pd.DataFrame:
        splits = [split] if isinstance(split, str) else split
        t = self.table
        return t[(t[DOMAIN] == domain) & t[SPLIT].isin(splits)].reset_index(drop=True)

    @property
    def target_classes(self) -> list[int]:
        """Class ids that the target's labeled train split has."""
        return sorted(int(v) for v in self.rows("target", "train")[LABEL].unique())

    def counts(self) -> dict:
        return {d: {s: int(len(self.rows(d, s))) for s in SPLITS[d]} for d in SPLITS}


REJECTED = [SAMPLE_ID, DOMAIN, SPLIT, PATH, ERROR]


def _list_domain(domain: str, uri: str, extensions: list[str],
                 bad_names: list | None = None) -> list[tuple[str, str, str, str]]:
    """(split, class folder, path below the split, shard) for every image of a domain.

    `shard` is '' for a file in an image folder, else the Parquet shard of a packed dataset.
    macOS metadata files (`._name.jpg`) are not images and are skipped; files whose names are
    not UTF-8 go to `bad_names` as rejected rows.
    """
    if not storage.exists(uri):
        raise DataError(f"{domain} folder not found: {uri}")
    if packing.is_packed(uri):
        index = packing.read_index(uri)
        return [(s, "" if s == "unlabeled" else str(c), r, sh) for s, c, r, sh in zip(
            index["split"], index["label"], index["rel_path"], index["shard"])
            if s in SPLITS[domain]]
    exts = tuple(e.lower() for e in extensions)
    out = []
    for split in SPLITS[domain]:
        for rel, _size in storage.list_files(storage.join(uri, split)):
            if not rel.lower().endswith(exts) or rel.rsplit("/", 1)[-1].startswith("._"):
                continue
            if not storage.is_utf8(rel):
                shown = storage.printable(rel)
                if bad_names is not None:
                    bad_names.append((sample_id(domain, split, shown), domain, split,
                                      storage.printable(storage.join(uri, split, rel)),
                                      "file name is not valid UTF-8: rename it"))
                continue
            parts = rel.split("/")
            if len(parts) < 2:
                raise DataError(f"{domain} {split}: image {rel!r} is not inside a class folder "
                                f"({storage.join(uri, split)}/<class>/<image>)")
            out.append((split, parts[0], rel, ""))
    return out


def build(source_uri: str, target_uri: str, extensions: list[str]) -> Manifest:
    """Lists both domains and checks the layout.

    Raises:
        DataError: a missing folder, an empty required split, or a class that cannot be used.
    """
    bad: list = []
    listed = {"source": _list_domain("source", source_uri, extensions, bad),
              "target": _list_domain("target", target_uri, extensions, bad)}
    for domain, split in sorted(REQUIRED):
        if not any(s == split for s, _, _, _ in listed[domain]):
            uri = source_uri if domain == "source" else target_uri
            raise DataError(f"{domain} split '{split}' is empty or missing: "
                            f"expected images under {storage.join(uri, split)}/<class>/")
    names = {(d, s): {c for s2, c, _, _ in listed[d] if s2 == s}
             for d in SPLITS for s in SPLITS[d]}
    source_classes = names[("source", "train")]
    target_classes = names[("target", "train")]
    missing = sorted(target_classes - source_classes)
    if missing:
        raise DataError(f"target class(es) {missing} have no source train images: the source "
                        "model cannot transfer to them (check the folder names)")
    for split in ("val", "test"):
        unknown = sorted(names[("target", split)] - target_classes)
        if unknown:
            raise DataError(f"target {split} has class(es) {unknown} that target train lacks")
    unknown = sorted(names[("source", "val")] - source_classes)
    if unknown:
        raise DataError(f"source val has class(es) {unknown} that source train lacks")
    classes = sorted(source_classes | target_classes)
    index = {c: i for i, c in enumerate(classes)}
    rows = []
    for domain, uri in (("source", source_uri), ("target", target_uri)):
        for split, cls, rel, shard in listed[domain]:
            label = UNLABELED if split == "unlabeled" else index[cls]
            rows.append((sample_id(domain, split, rel), domain, split,
                         storage.join(uri, split, rel), label, shard, rel))
    table = pd.DataFrame(rows, columns=[SAMPLE_ID, DOMAIN, SPLIT, PATH, LABEL, "shard", "rel"])
    return Manifest(table=table, classes=classes,
                    unreadable_names=pd.DataFrame(bad, columns=REJECTED))


def save(manifest: Manifest, layout: RunLayout) -> None:
    """Writes the run's manifest table and class list."""
    parquet.write_df(manifest.table, layout.manifest)
    storage.write_json(layout.classes, manifest.classes)


def load(layout: RunLayout) -> Manifest:
    return Manifest(table=parquet.read_df(layout.manifest),
                    classes=storage.read_json(layout.classes))
