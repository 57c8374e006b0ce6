"""Packed datasets (Parquet shards of image bytes) read like image folders, without listing."""

import os

import boto3
import numpy as np
import pytest

from dtl_ray import cli, storage
from dtl_ray.data import manifests, packing, readers
from dtl_ray.data.pairs import demo
from dtl_ray.method import scoring
from dtl_ray.raykit import pools
from dtl_ray.storage import parquet

pytestmark = pytest.mark.slow
BUCKET = "dtl-packed"


@pytest.fixture(scope="module")
def packed(tiny_demo, s3_server, tmp_path_factory):
    """The tiny demo packed: source to a local folder, target to the S3 server."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    src = str(tmp_path_factory.mktemp("packed") / "source")
    tgt = f"s3://{BUCKET}/target"
    assert cli.main(["pack", str(tiny_demo / "source"), src, "--rows-per-shard", "64"]) == 0
    assert cli.main(["pack", str(tiny_demo / "target"), tgt, "--rows-per-shard", "64"]) == 0
    return src, tgt


def test_pack_writes_shards_and_a_manifest(packed):
    src, tgt = packed
    index = packing.read_index(src)
    assert len(index) == 210 + 28 and set(index["split"]) == {"train", "val"}
    manifest = storage.read_json(f"{src}/{packing.MANIFEST}")
    assert manifest["domain"] == "source" and len(manifest["shards"]) == 4  # 238 rows / 64
    assert storage.read_json(f"{tgt}/{packing.MANIFEST}")["domain"] == "target"
    assert index["shard"].str.endswith(".parquet").all()
    assert (index["split"] + "/" + index["rel_path"]).is_unique


def test_pack_shuffles_rows_across_shards(packed):
    """The listing is class by class; a shard of a pack holds every class in about the
    dataset's proportions (a class-ordered 64-row shard holds one or two classes)."""
    src, _ = packed
    index = packing.read_index(src)
    sizes = index.groupby("shard").size()
    assert sizes.max() <= 64 and sizes.sum() == 238
    overall = index["label"].value_counts(normalize=True)
    for shard, rows in index.groupby("shard"):
        if len(rows) < 32:
            continue
        share = rows["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert rows["label"].nunique() == len(overall), shard
        assert 0.5 * (share - overall).abs().sum() < 0.25, (shard, share.round(2).to_dict())
    manifest = storage.read_json(f"{src}/{packing.MANIFEST}")
    assert manifest["shuffle_seed"] == 0


def test_packed_and_folder_readings_agree(packed, tiny_demo, tiny_run):
    cfg, run, _ = tiny_run
    folder = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    pk = manifests.build(*packed, [".png"])
    a = folder.table.sort_values("sample_id").reset_index(drop=True)
    b = pk.table.sort_values("sample_id").reset_index(drop=True)
    assert list(a["sample_id"]) == list(b["sample_id"])
    assert list(a["label"]) == list(b["label"]) and folder.classes == pk.classes
    # the same models give the same scores on the packed bytes as on the files
    kwargs = scoring.scorer_kwargs(
        os.path.join(run, "pretrain", "model.pt"), pk.target_classes, cfg.score, False,
        cfg.model.image_size, os.path.join(run, "discriminate", "discriminator.pt"))
    scored = pools.actor_map(
        pk.table, scoring.Scorer, kwargs, cfg.score, cfg.scaling,
        cfg.model.image_size).select_columns(
        ["sample_id", "p_target", "weight", "pred", "confidence"]).to_pandas()
    reference = parquet.read_df(os.path.join(run, "score", "scores"))
    both = reference.merge(scored, on="sample_id", suffixes=("", "_packed"))
    assert len(both) == len(reference) == len(pk.table)
    for col in ("p_target", "weight", "confidence"):
        np.testing.assert_allclose(both[col], both[f"{col}_packed"], rtol=1e-5, atol=1e-6)
    assert (both["pred"] == both["pred_packed"]).all()


def test_packed_training_rows_are_shuffled(ray_session, tmp_path):
    """Packed rows in the listing's order (class by class: `--keep-order`, or packed by another
    tool): training must not see that order."""
    demo.write_demo(str(tmp_path / "d"), seed=4, scale=0.5)
    src = str(tmp_path / "packed")
    packing.pack(str(tmp_path / "d" / "source"), src, rows_per_shard=128, seed=None)
    m = manifests.build(src, str(tmp_path / "d" / "target"), [".png"])
    rows = m.rows("source", "train")  # 1,050 rows, decoded in 256-row blocks
    freq = np.bincount(rows["label"], minlength=len(m.classes)) / len(rows)
    ds = readers.training_dataset(rows, 8, "always", ["image", "label"], seed=3)
    batches = list(readers.epoch_batches(ds.iterator(), 16, 0, 3, buffer_batches=2))
    first = np.concatenate([b["label"] for b in batches[:4]])
    seen = np.bincount(first, minlength=len(m.classes)) / len(first)
    assert 0.5 * np.abs(seen - freq).sum() < 0.3, (seen, freq)  # pack order: about 0.8
    assert sorted(np.concatenate([b["label"] for b in batches])) == sorted(rows["label"])


def test_packed_subset_reads_the_shards_own_columns(packed, ray_session):
    """A subset of packed rows with a column of the run's own (a fine-tuning cell's weight):
    exactly those rows come back, with the manifest's ids, splits and paths (read from the
    shard's columns) and the run's column joined by id; only the wanted split comes back;
    the member table a shard's tasks fetch holds the ids and the run's columns only."""
    src, tgt = packed
    m = manifests.build(src, tgt, [".png"])
    rows = m.rows("source", "train").iloc[::3].copy()  # a third of train, every shard
    rows["w"] = np.arange(len(rows), dtype=float) / 7
    got = readers.to_dataset(rows, 8).to_pandas().sort_values("sample_id")
    want = rows.sort_values("sample_id")
    assert list(got["sample_id"]) == list(want["sample_id"])
    for c in ("split", "path", "domain", "label", "w"):
        assert list(got[c]) == list(want[c]), c
    assert (got["error"] == "").all() and all(i.shape == (8, 8, 3) for i in got["image"])
    # the same rows decoded in this process (a trial's cell) give the same pixels
    here = readers.decode_here(rows, 8, readers.Reading(), ["sample_id", "image", "w"])
    order = np.argsort(here["sample_id"])
    np.testing.assert_array_equal(np.stack(got["image"].to_numpy()), here["image"][order])
    np.testing.assert_array_equal(got["w"].to_numpy(), here["w"][order])
    # the val split only: no train row comes back (the filter is on the split column)
    val = m.rows("source", "val")
    assert sorted(readers.to_dataset(val, 8).to_pandas()["sample_id"]) == sorted(val["sample_id"])
    # per shard: the wanted rows' ids and the run's columns (not the shard's own)
    shards = packing.members_by_shard(rows)
    assert len(shards) == 4 and all(t.num_rows <= 64 and t.column_names == ["sample_id", "label",
                                                                              "w"]
                                    for t, _, _ in shards.values())
