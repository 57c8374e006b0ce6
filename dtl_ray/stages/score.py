"""Stage 3: score every source and target sample with a Ray Data actor-pool map.

Writes `RunLayout.scores` (Parquet: sample_id, domain, split, path, label, p_target and its
calibrated logit `logit_target` (out-of-fold for D's training rows), weight, pred, confidence,
entropy) and `RunLayout.rejected` (unreadable files with the reason).
rows_in == rows_out + rows_rejected always holds.
"""

from __future__ import annotations

import time

import pandas as pd

from dtl_ray import data, scoring, storage, weighting
from dtl_ray.config import ScalingConfig, ScoreConfig
from dtl_ray.layout import RunLayout
from dtl_ray.results import ScoreResult

__all__ = ["run", "SCORE_COLUMNS"]

SCORE_COLUMNS = ["sample_id", "domain", "split", "path", "label", "p_target", "logit_target",
                 "weight", "pred", "confidence", "entropy"]
REJECTED_COLUMNS = ["sample_id", "domain", "split", "path", "error"]


SCHEMA = [("sample_id", "string"), ("domain", "string"), ("split", "string"),
          ("path", "string"), ("label", "int64"), ("p_target", "float64"),
          ("logit_target", "float64"), ("weight", "float64"), ("pred", "int64"),
          ("confidence", "float64"), ("entropy", "float64")]
ROWS_PER_FILE = 200_000  # a file is built in memory (about 30 MB), then written atomically


def run(layout: RunLayout, score: ScoreConfig, scaling: ScalingConfig, image_size: int,
        max_pixels: int, max_rejected_fraction: float, adapted: bool) -> ScoreResult:
    """Scores all samples with the pretrained backbone (the DANN-adapted one when `adapted`);
    returns row counts, capped weights and timing.

    One streaming pass: the driver receives the scalar columns batch by batch and appends them
    to Parquet files (images never reach it), so its memory stays flat whatever the size.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.time()
    manifest = data.load_manifest(layout)
    model_uri = layout.backbone_model(adapted=adapted)
    scored = scoring.score_dataset(manifest.table, model_uri, manifest.target_classes, score,
                                   scaling, image_size, layout.discriminator, max_pixels)
    out_uri = layout.scores
    fs, path = storage.resolve(out_uri)
    storage.retry(lambda: fs.create_dir(path, recursive=True))
    storage.retry(lambda: fs.delete_dir_contents(path, missing_dir_ok=True))  # rerun: clean
    schema = pa.schema(SCHEMA)
    writer, buf, files, in_file = None, None, 0, 0

    def flush() -> None:
        writer.close()
        storage.write_bytes(storage.join(out_uri, f"part-{files - 1:05d}.parquet"),
                            buf.getvalue().to_pybytes())

    rejected, n_out, capped = [], 0, 0
    wsum: dict[str, float] = {}
    wcnt: dict[str, int] = {}
    src = {"n": 0, "floor": 0, "w": 0.0, "w2": 0.0}  # source train: p at the clip, sum w, w^2
    total = len(manifest.table)
    next_say = time.time() + 10
    first, first_rows = None, 0
    for b in scored.iter_batches(batch_format="pandas", batch_size=None):
        if first is None:
            first, first_rows = time.time(), len(b)
        bad = b["error"] != ""
        if bad.any():
            rejected.append(b.loc[bad, REJECTED_COLUMNS])
        good = b.loc[~bad]
        if len(good):
            if writer is None or in_file >= ROWS_PER_FILE:
                if writer is not None:
                    flush()
                buf = pa.BufferOutputStream()
                writer, files, in_file = pq.ParquetWriter(buf, schema), files + 1, 0
            writer.write_table(pa.Table.from_pandas(good[SCORE_COLUMNS], schema=schema,
                                                    preserve_index=False))
            in_file += len(good)
            n_out += len(good)
            capped += int(good["capped"].sum())
            st = good[(good["domain"] == "source") & (good["split"] == "train")]
            src["n"] += len(st)
            src["floor"] += int((st["p_target"] <= score.clip).sum())
            src["w"] += float(st["weight"].sum())
            src["w2"] += float((st["weight"] ** 2).sum())
            for key, g in good.groupby(["domain", "split"])["weight"]:
                k = "/".join(key)
                wsum[k] = wsum.get(k, 0.0) + float(g.sum())
                wcnt[k] = wcnt.get(k, 0) + len(g)
        done = n_out + sum(len(r) for r in rejected)
        if time.time() >= next_say:
            print(f"[score] {done}/{total} images scored", flush=True)
            next_say = time.time() + 10
    if writer is None:  # nothing readable: an empty file keeps the schema for readers
        buf = pa.BufferOutputStream()
        writer, files = pq.ParquetWriter(buf, schema), 1
    flush()
    mean_weight = {k: wsum[k] / wcnt[k] for k in sorted(wsum)}
    if score.weighting == "iwan" and mean_weight.get("source/train", 0) > 0:
        # IWAN weights have mean 1 over source train: one more pass over the written files
        scale = mean_weight["source/train"]
        for i in range(files):
            part = storage.join(out_uri, f"part-{i:05d}.parquet")
            t = pq.read_table(storage.path_of(part), filesystem=fs)
            t = t.set_column(t.schema.get_field_index("weight"), "weight",
                             pa.array(weighting.normalise(t["weight"].to_numpy(), scale)))
            buf = pa.BufferOutputStream()
            pq.write_table(t, buf)
            storage.write_bytes(part, buf.getvalue().to_pybytes())
        mean_weight = {k: v / scale for k, v in mean_weight.items()}
    rejected = (pd.concat(rejected, ignore_index=True) if rejected
                else pd.DataFrame(columns=REJECTED_COLUMNS))
    known = data.reading(layout, max_pixels).rejected
    if storage.exists(layout.rejected):  # files the listing rejected (names) stay listed
        old = data.read_parquet_df(layout.rejected)
        unlisted = old[~old[data.SAMPLE_ID].isin(manifest.table[data.SAMPLE_ID])]
        if len(unlisted):  # inputs too: rows_in == rows_out + rows_rejected still holds
            rejected = pd.concat([unlisted.reindex(columns=REJECTED_COLUMNS), rejected],
                                 ignore_index=True)
            total += len(unlisted)
    data.write_parquet_df(rejected, layout.rejected)
    if len(rejected) > max_rejected_fraction * total:  # the limit holds in this pass too
        new = rejected[~rejected[data.SAMPLE_ID].isin(known)]
        raise data.DataError(
            f"{len(rejected)} of {total} images cannot be decoded now ({len(new)} more than "
            f"before training), over data.max_rejected_fraction={max_rejected_fraction}; e.g. "
            f"{', '.join((new if len(new) else rejected)['path'].head(3))} (all listed in "
            f"{layout.rejected})")
    return ScoreResult(
        rows_in=int(total), rows_out=int(n_out), rows_rejected=int(len(rejected)),
        rejected_examples=rejected.head(5)[["path", "error"]].to_dict("records"),
        weights_capped=int(capped), weighting=score.weighting, mean_weight=mean_weight,
        source_at_clip_floor=src["floor"] / src["n"] if src["n"] else float("nan"),
        source_weight_ess=(src["w"] ** 2 / src["w2"] / src["n"] if src["w2"] > 0
                           else float("nan")),
        seconds=round(time.time() - t0, 2),
        startup_seconds=round((first or time.time()) - t0, 2), startup_rows=int(first_rows))
