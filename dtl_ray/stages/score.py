"""Stage 3: score every source and target sample with a Ray Data actor-pool map.

Writes `RunLayout.scores` (Parquet: sample_id, domain, split, path, label, p_target and its
calibrated logit `logit_target` (out-of-fold for D's training rows), weight, pred, confidence,
entropy) and `RunLayout.rejected` (unreadable files with the reason).
rows_in == rows_out + rows_rejected always holds.
"""

from __future__ import annotations

import time

import pandas as pd

from dtl_ray import console, storage
from dtl_ray.config import DataConfig, DiscriminateConfig, ModelConfig, ScalingConfig, ScoreConfig
from dtl_ray.contract.layout import RunLayout
from dtl_ray.contract.results import ScoreResult
from dtl_ray.data import decode, manifests, rejects, samples
from dtl_ray.data.scorefiles import (
    REJECTED_COLUMNS,
    ROWS_PER_FILE,
    SCHEMA,
    SCORE_COLUMNS,
    WRITERS,
    Writer,
    read_scores,
)
from dtl_ray.errors import DataError
from dtl_ray.method import scoring
from dtl_ray.raykit import pools
from dtl_ray.storage import parquet

__all__ = ["run", "read_scores", "SCORE_COLUMNS"]

STAGE = "score"


def run(layout: RunLayout, score: ScoreConfig, scaling: ScalingConfig, model: ModelConfig,
        data: DataConfig, discriminate: DiscriminateConfig) -> ScoreResult:
    """Scores all samples with the pretrained backbone (the DANN-adapted one in adversarial
    mode); returns row counts, capped weights and timing.

    One streaming pass: the scoring actors' output goes to Ray Data actors that write it
    (`scorefiles.Writer`); the driver receives one row of figures per file, so its memory stays
    flat whatever the size, and nothing is written twice.
    """
    import json

    import pyarrow as pa
    import ray.data

    t0 = time.time()
    image_size, max_pixels = model.frame, data.max_image_pixels
    manifest = manifests.load(layout)
    model_uri = layout.backbone_model(adapted=discriminate.mode == "adversarial")
    scored = pools.actor_map(manifest.table, scoring.Scorer, scoring.scorer_kwargs(
        model_uri, manifest.target_classes, score, scaling.use_gpu, image_size,
        layout.discriminator, max_pixels), score, scaling, image_size, max_pixels)
    out_uri = layout.scores
    fs, path = storage.resolve(out_uri)
    storage.retry(lambda: fs.create_dir(path, recursive=True))
    storage.retry(lambda: fs.delete_dir_contents(path, missing_dir_ok=True))  # rerun: clean
    total = len(manifest.table)
    # files of up to ROWS_PER_FILE rows, at least about 8 of them (the first one's time is the
    # stage's start-up figure)
    per_file = int(min(ROWS_PER_FILE, max(score.batch_size, -(-total // 8))))
    written = scored.map_batches(
        Writer, fn_constructor_kwargs={"out_uri": out_uri, "clip": score.clip},
        batch_format="pandas", batch_size=per_file, num_cpus=0,
        # (no CPU asked: the scoring actors may hold every one)
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=WRITERS),
        max_task_retries=decode.TASK_RETRIES["max_retries"])

    rejected, n_out, capped, parts = [], 0, 0, 0
    wsum: dict[str, float] = {}
    wcnt: dict[str, int] = {}
    src = {"n": 0, "floor": 0, "w": 0.0, "w2": 0.0}  # source train: p at the clip, sum w, w^2
    next_say = time.time() + 10
    first, first_rows = None, 0
    progress, shown = console.bar(total, "score", "img"), 0
    for b in written.iter_batches(batch_format="pandas", batch_size=None):
        for r in b.itertuples(index=False):
            if first is None:
                first, first_rows = time.time(), int(r.rows)
            parts += bool(r.part)
            n_out += int(r.rows)
            capped += int(r.capped)
            for key, v in zip(("n", "floor", "w", "w2"),
                              (r.src_n, r.src_floor, r.src_w, r.src_w2)):
                src[key] += v
            for k, (s, c) in json.loads(r.groups).items():
                wsum[k] = wsum.get(k, 0.0) + s
                wcnt[k] = wcnt.get(k, 0) + c
            bad = json.loads(r.rejected)
            if bad:
                rejected.append(pd.DataFrame(bad, columns=REJECTED_COLUMNS))
        done = n_out + sum(len(r) for r in rejected)
        progress.update(done - shown)
        shown = done
        if time.time() >= next_say:
            console.detail(f"[score] {done}/{total} images scored")
            next_say = time.time() + 10
    progress.close()
    if not parts:  # nothing readable: an empty file keeps the schema for readers
        parquet.write_table(pa.schema(SCHEMA).empty_table(),
                            storage.join(out_uri, "part-empty.parquet"))
    mean_weight = {k: wsum[k] / wcnt[k] for k in sorted(wsum)}
    divisor = 1.0
    if score.weighting == "iwan" and mean_weight.get("source/train", 0) > 0:
        # IWAN weights have mean 1 over source train: readers divide (`read_scores`)
        divisor = mean_weight["source/train"]
        mean_weight = {k: v / divisor for k, v in mean_weight.items()}
    rejected = (pd.concat(rejected, ignore_index=True) if rejected
                else pd.DataFrame(columns=REJECTED_COLUMNS))
    # the ledger lists them (with the rows earlier passes found) and holds the limit
    ledger = rejects.open_ledger(layout, data.max_rejected_fraction)
    error = ray.get(ledger.add.remote(layout.root, rejected.assign(
        **{rejects.FOUND_IN: STAGE}).reindex(columns=rejects.COLUMNS).to_dict("records")))
    listed = rejects.table(ledger, layout.root)
    # files the listing rejected (names) are inputs too: rows_in == rows_out + rows_rejected
    unlisted = listed[~listed[samples.SAMPLE_ID].isin(manifest.table[samples.SAMPLE_ID])]
    rejected = pd.concat([unlisted.reindex(columns=REJECTED_COLUMNS), rejected],
                         ignore_index=True)
    total += len(unlisted)
    rejects.save(layout)
    if error:  # the limit holds in this pass too
        raise DataError(error)
    return ScoreResult(
        rows_in=int(total), rows_out=int(n_out), rows_rejected=int(len(rejected)),
        rejected_examples=rejected.head(5)[["path", "error"]].to_dict("records"),
        weights_capped=int(capped), weighting=score.weighting, mean_weight=mean_weight,
        source_at_clip_floor=src["floor"] / src["n"] if src["n"] else float("nan"),
        source_weight_ess=(src["w"] ** 2 / src["w2"] / src["n"] if src["w2"] > 0
                           else float("nan")),
        seconds=round(time.time() - t0, 2),
        startup_seconds=round((first or time.time()) - t0, 2), startup_rows=int(first_rows),
        weight_divisor=divisor, files=parts)
