import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dtl_ray.data import decode, manifests, readers, rejects, samples
from dtl_ray.data.pairs import demo
from dtl_ray.errors import DataError
from dtl_ray.storage import parquet


def _png(mode, size=(10, 12), value=100):
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, np.uint16)).save(buf, format="PNG")
    else:
        Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(
            buf, format="PNG")
    return buf.getvalue()


def test_demo_is_deterministic_and_has_the_layout(tmp_path):
    a = demo.write_demo(str(tmp_path / "a"), seed=5, scale=0.05)
    b = demo.write_demo(str(tmp_path / "b"), seed=5, scale=0.05)
    assert a == b
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert fa == fb
    assert (tmp_path / "a" / fa[0]).read_bytes() == (tmp_path / "b" / fa[0]).read_bytes()
    m = manifests.build(str(tmp_path / "a" / "source"), str(tmp_path / "a" / "target"),
                            [".png"])
    assert m.classes == sorted(demo.SHARED_CLASSES + demo.SOURCE_ONLY_CLASSES)
    target_names = [m.classes[c] for c in m.target_classes]
    assert target_names == sorted(demo.SHARED_CLASSES)  # crescent is source-only


def test_manifest_ids_labels_and_unlabeled(tiny_demo):
    m = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    t = m.table
    assert t["sample_id"].is_unique
    row = t[t["split"] == "train"].iloc[0]
    assert row["sample_id"] == f"{row['domain']}/train/" + row["path"].split("/train/")[1]
    assert (t[t["split"] == "unlabeled"]["label"] == samples.UNLABELED).all()
    circle = m.classes.index("circle")
    assert (t[t["path"].str.contains("/circle/")]["label"] == circle).all()
    again = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    assert list(again.table["sample_id"]) == list(t["sample_id"])


def _layout(root, spec):
    for rel in spec:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_png("RGB"))


FULL = ["s/train/a/1.png", "s/val/a/1.png", "t/train/a/1.png", "t/val/a/1.png",
        "t/test/a/1.png"]


def test_layout_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="source folder not found"):
        manifests.build(str(tmp_path / "nope"), str(tmp_path), [".png"])
    _layout(tmp_path / "r1", [r for r in FULL if not r.startswith("t/val/")])
    with pytest.raises(DataError, match="target split 'val' is empty"):
        manifests.build(str(tmp_path / "r1/s"), str(tmp_path / "r1/t"), [".png"])
    # target test is optional: the run measures on val then, and says so
    _layout(tmp_path / "r0", FULL[:-1])
    counts = manifests.build(str(tmp_path / "r0/s"), str(tmp_path / "r0/t"), [".png"]).counts()
    assert counts["target"]["test"] == 0 and counts["target"]["val"] == 1
    _layout(tmp_path / "r2", FULL + ["t/train/zebra/1.png"])
    with pytest.raises(DataError, match=r"target class\(es\) \['zebra'\]"):
        manifests.build(str(tmp_path / "r2/s"), str(tmp_path / "r2/t"), [".png"])
    _layout(tmp_path / "r3", FULL + ["t/test/b/1.png", "s/train/b/1.png"])
    with pytest.raises(DataError, match=r"target test has class\(es\) \['b'\]"):
        manifests.build(str(tmp_path / "r3/s"), str(tmp_path / "r3/t"), [".png"])


def test_decode_converts_modes_and_rejects_bad_files(tmp_path):
    files = {"rgb.png": _png("RGB"), "gray.png": _png("L"), "rgba.png": _png("RGBA"),
             "pal.png": _png("P"), "deep.png": _png("I;16"), "empty.png": b"",
             "text.png": b"not an image at all", "cut.png": _png("RGB")[:40]}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    batch = {"path": np.array([str(tmp_path / n) for n in files], dtype=object)}
    out = decode.decode_batch(batch, image_size=8)
    assert out["image"].shape == (len(files), 8, 8, 3) and out["image"].dtype == np.uint8
    errors = dict(zip(files, out["error"]))
    assert [n for n, e in errors.items() if e] == ["empty.png", "text.png", "cut.png"]
    assert "empty file" in errors["empty.png"]
    assert out["image"][list(files).index("deep.png")].max() == 255  # 16-bit scaled, not clipped
    assert decode.drop_rejected(out)["image"].shape[0] == 5


def test_resize_then_centre_crop_is_torchvisions(tmp_path):
    """`(S, R)`: the shorter side to R, the centre S x S, pixel for pixel what torchvision's
    Resize(R) + CenterCrop(S) give (the eval transform of its weights), for wide, tall and
    odd-sized images; a rejected row's placeholder has the crop's size."""
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    for w, h in ((61, 40), (40, 61), (37, 37), (100, 23)):
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        got = decode.decode_image(buf.getvalue(), (20, 23))
        want = np.asarray(T.Compose([T.Resize(23), T.CenterCrop(20)])(im))
        assert got.shape == (20, 20, 3)
        np.testing.assert_array_equal(got, want, err_msg=f"{w}x{h}")
    (tmp_path / "a.png").write_bytes(b"no")
    out = decode.decode_batch({"path": np.array([str(tmp_path / "a.png")], dtype=object)},
                            image_size=(20, 23))
    assert out["image"].shape == (1, 20, 20, 3) and out["error"][0]


def test_a_memory_fault_is_not_a_rejected_image(tmp_path, monkeypatch):
    """Running out of memory says nothing about the file: the task must fail (and be
    retried by Ray: `TransientReadError` is in its retry list), not drop the row."""
    from dtl_ray.data import decode

    (tmp_path / "ok.png").write_bytes(_png("RGB"))

    def no_memory(raw, size, max_pixels):
        raise MemoryError()

    monkeypatch.setattr(decode, "decode_image", no_memory)
    with pytest.raises(decode.TransientReadError, match="ok.png: MemoryError"):
        decode.decode_batch({"path": np.array([str(tmp_path / "ok.png")], dtype=object)}, 8)
    assert decode.TransientReadError in decode.TASK_RETRIES["retry_exceptions"]


def test_images_over_the_pixel_limit_are_rejected_before_decoding(tmp_path):
    """`data.max_image_pixels`: an image over it is a rejected row with its own reason, found
    from the header (a decompression bomb is never decoded); PIL's own bomb error, for images
    over twice PIL's limit, gets the same reason."""
    from PIL import Image

    big = io.BytesIO()
    Image.new("RGB", (2000, 1500)).save(big, format="PNG")  # 3 M pixels, a 9 kB file
    (tmp_path / "big.png").write_bytes(big.getvalue())
    (tmp_path / "ok.png").write_bytes(_png("RGB"))
    batch = {"path": np.array([str(tmp_path / n) for n in ("big.png", "ok.png")], dtype=object)}
    out = decode.decode_batch(batch, 8, max_pixels=1_000_000)
    assert out["error"][0].startswith("too many pixels: 2000x1500 = 3,000,000 pixels")
    assert "data.max_image_pixels" in out["error"][0] and out["error"][1] == ""
    assert (decode.decode_batch(batch, 8)["error"] == "").all()  # the default takes it
    bomb = Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit")
    assert decode.reject_reason(bomb, "x.png").startswith("too many pixels: ")


def _failed_batch():
    return {"sample_id": np.array(["s/train/a", "s/train/b", "s/train/c"], dtype=object),
            "domain": np.array(["source"] * 3, dtype=object),
            "split": np.array(["train"] * 3, dtype=object),
            "path": np.array(["/d/a.png", "/d/b.png", "/d/c.png"], dtype=object),
            "error": np.array(["", "OSError: truncated", ""], dtype=object),
            "image": np.zeros((3, 2, 2, 3), np.uint8)}


def test_the_ledger_lists_each_rejected_row_once_and_holds_the_limit():
    """The run's ledger (plain Python here): a row reported twice (a retried task, a later
    pass) is listed once with the pass that found it first; the report that takes the count
    over the limit gets the run's error, naming the count, the key and the new paths."""
    ledger = rejects.Ledger()
    listing = {"sample_id": "x", "domain": "source", "split": "train", "path": "/d/caf\\xe9.png",
               "error": "file name is not valid UTF-8: rename it", "found_in": "listing"}
    ledger.reset("/run", [listing], total=100, fraction=0.03, listed_in="/run/rejected.parquet")
    row = dict(listing, sample_id="s/train/b", path="/d/b.png", error="OSError",
               found_in="pretrain")
    assert ledger.add("/run", [row]) is None
    assert ledger.add("/run", [dict(row, found_in="score")]) is None  # the same row again
    assert [r["found_in"] for r in ledger.rows("/run")] == ["listing", "pretrain"]
    row3 = dict(row, sample_id="s/train/c", path="/d/c.png")
    assert ledger.add("/run", [row3]) is None  # 3 of 100: at the limit, not over it
    error = ledger.add("/run", [dict(row, sample_id="s/train/d", path="/d/d.png")])
    assert error.startswith("4 of 100 images (4.0%) cannot be decoded, over "
                            "data.max_rejected_fraction=0.03; e.g. /d/b.png, /d/c.png, /d/d.png")
    assert error.endswith("(all listed in /run/rejected.parquet)")


def test_a_pass_reports_failed_rows_to_the_runs_ledger(ray_session):
    """`drop_failed` keeps the decoded rows and reports the others to the ledger actor, from
    inside a Ray Data map as the stages use it; the report over the limit raises DataError
    there, which reaches the driver as itself."""
    import ray
    import ray.data

    ledger = ray.remote(rejects.Ledger).options(num_cpus=0).remote()
    ray.get(ledger.reset.remote("/r", [], 20, 0.1, "/r/rejected.parquet"))
    reading = readers.Reading(ledger=ledger, root="/r", stage="pretrain")
    assert list(readers.drop_failed(_failed_batch(), reading)["sample_id"]) == ["s/train/a",
                                                                            "s/train/c"]
    assert list(decode.drop_rejected(_failed_batch())["sample_id"]) == ["s/train/a", "s/train/c"]
    readers.configure_context()
    batches = []
    for i in range(3):  # two failed rows each: 3 rejected of 20 after the first (limit 2)
        b = _failed_batch()
        b["sample_id"] = np.array([f"s/train/{i}{c}" for c in "abc"], dtype=object)
        b["error"] = np.array(["", "OSError", "ValueError"], dtype=object)
        batches.append(b)
    ds = ray.data.from_items([{k: v[j] for k, v in b.items()} for b in batches
                              for j in range(3)])
    with pytest.raises(Exception) as info:
        ds.map_batches(readers.drop_failed, fn_kwargs={"reading": reading}, batch_size=3,
                       batch_format="numpy").materialize()
    from dtl_ray import cli

    error = cli.user_error(info.value)
    assert isinstance(error, DataError)
    assert "over data.max_rejected_fraction=0.1" in str(error)
    listed = ray.get(ledger.rows.remote("/r"))
    assert {r["found_in"] for r in listed} == {"pretrain"} and len(listed) >= 3
    ray.kill(ledger)


def _first_batches(ds, batch_size, epoch, seed, n_batches):
    """Labels of the first `n_batches` batches of one epoch, as the training stages read them."""
    labels = []
    for i, b in enumerate(readers.epoch_batches(ds.iterator(), batch_size, epoch, seed, 2)):
        labels.append(b["label"])
        if i + 1 == n_batches:
            break
    return np.concatenate(labels)


@pytest.mark.slow
def test_training_order_mixes_classes_and_is_redrawn_each_epoch(ray_session, tiny_demo):
    """The manifest is sorted by class; training batches must not be (the bug: pretraining saw
    512-row blocks of one or two classes and barely learned)."""
    m = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    one = m.rows("source", "train")
    # 15 copies under distinct ids, still sorted by class: 3,150 rows, 7 blocks of 512
    rows = pd.concat([one.assign(sample_id=one["sample_id"] + f"#{k}") for k in range(15)])
    rows = rows.sort_values("label", kind="stable").reset_index(drop=True)
    freq = np.bincount(rows["label"], minlength=len(m.classes)) / len(rows)
    for cache in ("always", "never"):
        ds = readers.training_dataset(rows, 8, cache, ["image", "label"], seed=7)
        first = _first_batches(ds, 16, epoch=0, seed=7, n_batches=4)
        seen = np.bincount(first, minlength=len(m.classes)) / len(first)
        # total variation from the class frequencies: about 0.1 for 64 rows drawn at random,
        # 0.86 for the first block of the class-sorted order
        assert 0.5 * np.abs(seen - freq).sum() < 0.3, (cache, seen, freq)
        again = _first_batches(ds, 16, epoch=1, seed=7, n_batches=4)
        assert not np.array_equal(first, again)  # a new order every epoch
    everything = _first_batches(ds, 64, epoch=2, seed=7, n_batches=10**6)
    assert sorted(everything) == sorted(rows["label"])  # every row once per epoch


@pytest.mark.slow
def test_train_workers_get_a_new_mixed_order_each_epoch(ray_session, tiny_demo, tmp_path):
    """The same through a real TorchTrainer (the shard is split by Ray's coordinator actor)."""
    from dtl_ray import config
    from dtl_ray.raykit import train
    from dtl_ray.storage import checkpoints

    def first_labels(cfg_dict):
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        seen = {}
        for epoch in range(2):
            batches = readers.epoch_batches(shard, 16, epoch, 7, buffer_batches=2)
            seen[str(epoch)] = [int(v) for b in batches for v in b["label"]]
            train.report_epoch({"epoch": epoch}, {}, {"labels": seen})

    m = manifests.build(str(tiny_demo / "source"), str(tiny_demo / "target"), [".png"])
    one = m.rows("source", "train")
    rows = pd.concat([one.assign(sample_id=one["sample_id"] + f"#{k}") for k in range(15)])
    rows = rows.sort_values("label", kind="stable").reset_index(drop=True)
    cfg = config.load_config(overrides=[f"source.uri={tiny_demo}/source",
                                        f"target.uri={tiny_demo}/target"])
    ds = readers.training_dataset(rows, 8, "always", ["image", "label"], seed=7)
    result = train.fit(first_labels, cfg.scaling, str(tmp_path / "stage"), "order",
                          {"train": ds}, {})
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        _, meta = checkpoints.load_dir(d)
    freq = np.bincount(rows["label"], minlength=len(m.classes)) / len(rows)
    epochs = [np.array(meta["labels"][e]) for e in ("0", "1")]
    for labels in epochs:
        assert sorted(labels) == sorted(rows["label"])  # every row once per epoch
        seen = np.bincount(labels[:64], minlength=len(m.classes)) / 64
        assert 0.5 * np.abs(seen - freq).sum() < 0.3, (seen, freq)
    # re-drawn each epoch: the orders differ in most places, not only in the buffer
    assert (epochs[0] != epochs[1]).mean() > 0.5


def test_names_that_are_not_utf8_become_rejected_rows(tmp_path):
    """A local file name that is not UTF-8 used to stop the listing of its whole folder
    (pyarrow raises UnicodeDecodeError); now it is a rejected row with the reason, the other
    files are listed, and macOS metadata files (`._x.png`) are not images at all."""
    _layout(tmp_path, ["s/" + r[2:] for r in FULL if r.startswith("s/")] +
            ["t/" + r[2:] for r in FULL if r.startswith("t/")])
    (tmp_path / "s" / "train" / "a").joinpath("2.png").write_bytes(_png("RGB"))
    bad = bytes(tmp_path / "s" / "train" / "a") + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write(_png("RGB"))
    (tmp_path / "s" / "train" / "a" / "._2.png").write_bytes(b"\x00\x05\x16\x07")
    m = manifests.build(str(tmp_path / "s"), str(tmp_path / "t"), [".png"])
    assert sorted(m.table[m.table["domain"] == "source"]["sample_id"]) == [
        "source/train/a/1.png", "source/train/a/2.png", "source/val/a/1.png"]
    names = m.unreadable_names
    assert list(names["sample_id"]) == ["source/train/a/caf\\xe9.png"]
    assert names["path"].iloc[0].endswith("/s/train/a/caf\\xe9.png")
    assert names["error"].iloc[0] == "file name is not valid UTF-8: rename it"
    parquet.write_df(names, str(tmp_path / "rejected.parquet"))  # Parquet takes it
